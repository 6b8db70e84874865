// Entry points of the merge math: one target (mergeTarget) or whole adapters (mergeAdapters).
// Pure: typed arrays in, typed arrays out; no files, no HTTP. See docs/merging.md.
import { invalidField } from '../runtime/errors.ts';
import { Rng } from '../runtime/random.ts';
import { TARGETS } from '../runtime/model-targets.ts';
import type { Target } from '../runtime/model-targets.ts';
import type { LoraAdapter } from '../adapters/lora-adapter.ts';
import { isDelta, isPeftAb, isPeftSvd, planMerge, targetSeed } from './merge-options.ts';
import type { MergeOptions, MergePlan, TargetFactors, TargetResult } from './merge-options.ts';
import { mergeCat } from './combine-cat.ts';
import { mergeAb } from './combine-ab.ts';
import { mergeSvd } from './combine-svd.ts';
import { mergeDelta } from './combine-delta.ts';

// One target. inputs[i] is adapter i's factors for it, or null where adapter i lacks the target.
// `stream` picks the target's own random stream of plan.seed (DARE types), e.g. targetStream(key).
export function mergeTarget(inputs: readonly (TargetFactors | null)[], weights: readonly number[], plan: MergePlan, stream = 0, where = 'target'): TargetResult {
  if (inputs.length !== weights.length) throw invalidField('weights', `${where}: ${weights.length} weights for ${inputs.length} adapters`);
  const rng = new Rng(targetSeed(plan.seed, stream));
  const c = plan.combination;
  if (c === 'cat') return mergeCat(inputs, weights, plan, where);
  if (isPeftAb(c)) return mergeAb(inputs, weights, plan, rng, where);
  if (isPeftSvd(c)) return mergeSvd(inputs, weights, plan, rng, where);
  if (isDelta(c)) return mergeDelta(inputs, weights, plan, rng, where);
  throw invalidField('combination_type', `unknown combination_type ${String(c)}`);
}

// FNV-1a of a target key: its random stream, independent of the order targets are merged in.
export function targetStream(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) { h ^= key.charCodeAt(i); h = Math.imul(h, 0x01000193); }
  return h >>> 0;
}

export interface MergeInputAdapter {
  r: number;                                  // the adapter's config "r" (PEFT's rank rules use it)
  targets: ReadonlyMap<string, TargetFactors>; // key "layer.target", e.g. "3.q_proj"
}

export interface MergeResult {
  plan: MergePlan;                            // combination (after PEFT's one-adapter rule), r, lora_alpha = r
  targets: Map<string, TargetResult>;         // the union of the inputs' targets, in layer/target order
  maxRelError: number | null;                 // the largest truncation error over the targets (SVD types)
}

const keyOrder = (k: string): [number, number] => { const [l, t] = k.split('.'); return [Number(l), TARGETS.indexOf(t as Target)]; };

export function mergeAdapters(adapters: readonly MergeInputAdapter[], weights: readonly number[], options: MergeOptions): MergeResult {
  const plan = planMerge(adapters.map((a) => a.r), weights, options);
  const keys = [...new Set(adapters.flatMap((a) => [...a.targets.keys()]))]
    .sort((x, y) => { const [lx, tx] = keyOrder(x), [ly, ty] = keyOrder(y); return lx - ly || tx - ty || (x < y ? -1 : x > y ? 1 : 0); });
  const targets = new Map<string, TargetResult>();
  let maxRelError: number | null = null;
  for (const key of keys) {
    const res = mergeTarget(adapters.map((a) => a.targets.get(key) ?? null), weights, plan, targetStream(key), key);
    targets.set(key, res);
    if (res.kind === 'factors' && res.relError !== null) maxRelError = Math.max(maxRelError ?? 0, res.relError);
  }
  return { plan, targets, maxRelError };
}

// A decoded adapter as merge input; DoRA adapters are refused (PEFT would copy use_dora into the
// result and produce a wrong adapter). `r` defaults to the adapter's largest target rank.
export function mergeInputFromAdapter(adapter: LoraAdapter, r: number = adapter.maxRank, index = 0): MergeInputAdapter {
  if (adapter.useDora || adapter.targets.some((t) => t.magnitude)) throw invalidField('adapters', `adapters[${index}] is a DoRA adapter; merging DoRA adapters is not supported`);
  if (adapter.targets.some((t) => t.delta)) throw invalidField('adapters', `adapters[${index}] is kept as merged weights only (output "merged"): it has no LoRA factors to merge; merge its own inputs instead (its merge_recipe.json lists them)`);
  const targets = new Map<string, TargetFactors>();
  for (const t of adapter.targets) {
    targets.set(`${t.layer}.${t.target}`, { a: t.a, b: t.b, rank: t.rank, scale: t.scale, in: t.a.length / t.rank, out: t.b.length / t.rank });
  }
  return { r, targets };
}
