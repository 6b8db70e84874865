// The adapter-merge math (issue 13): pure functions over typed arrays. See docs/merging.md.
export * from './merge-options.ts';
export * from './merge-adapters.ts';
export { mergeCat } from './combine-cat.ts';
export { mergeAb } from './combine-ab.ts';
export { mergeSvd, factorise } from './combine-svd.ts';
export { mergeDelta, combinedDelta } from './combine-delta.ts';
export * as primitives from './merge-primitives.ts';
export { svd, truncate, truncationError, quantileLinear, clampFactors, symmetricEigen } from './svd.ts';
export type { Svd, SvdMethod } from './svd.ts';
