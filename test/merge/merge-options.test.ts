// Bad options throw 400 errors that name the field (the HTTP layer maps them to 4xx).
import { describe, expect, it } from 'vitest';
import { Rng } from '../../src/runtime/random.ts';
import { LoraserveError } from '../../src/runtime/errors.ts';
import { mergeTarget, planMerge } from '../../src/merge/index.ts';
import type { MergeOptions } from '../../src/merge/index.ts';
import { randomFactors } from './merge-helpers.ts';
import { mergeFiles, parseMergeRequest } from '../../src/merge/merge-files.ts';
import { loadModelFiles } from '../../src/runtime/model-loader.ts';
import { encodeSafetensors } from '../../src/runtime/safetensors.ts';
import { buildAdapter } from '../../scripts/make-test-adapters.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

function refused(f: () => unknown, param: string): void {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(LoraserveError);
    expect((e as LoraserveError).status).toBe(400);
    expect((e as LoraserveError).param).toBe(param);
    expect((e as Error).message).toContain(param);
    return;
  }
  throw new Error(`expected a refusal naming ${param}`);
}

describe('merge options', () => {
  const ok: MergeOptions = { combination_type: 'ties', density: 0.5 };
  it('density outside (0, 1]', () => {
    for (const d of [0, -0.1, 1.01, Number.NaN, Infinity]) refused(() => planMerge([4, 4], [1, 1], { ...ok, density: d }), 'density');
    expect(planMerge([4, 4], [1, 1], { ...ok, density: 1 }).density).toBe(1);
  });
  it('density missing for a pruning type', () => refused(() => planMerge([4, 4], [1, 1], { combination_type: 'dare_linear' }), 'density'));
  it('unequal weights and adapters lists', () => refused(() => planMerge([4, 4], [1], ok), 'weights'));
  it('non-finite weights', () => refused(() => planMerge([4, 4], [1, Number.NaN], ok), 'weights'));
  it('|weight| above 8 (a 1e30 weight made an adapter whose every request overflowed); 8 and -8 pass', () => {
    for (const w of [8.001, -9, 1e30, 1e308]) refused(() => planMerge([4, 4], [1, w], { combination_type: 'linear' }), 'weights');
    expect(planMerge([4, 4], [8, -8], { combination_type: 'cat' }).combination).toBe('cat');
  });
  it('an empty list', () => refused(() => planMerge([], [], ok), 'adapters'));
  it('svd_rank < 1 or not an integer', () => {
    for (const r of [0, -2, 1.5]) refused(() => planMerge([4, 4], [1, 1], { combination_type: 'svd', svd_rank: r }), 'svd_rank');
  });
  it('svd_rank above min(out, in) of a target', () => {
    const rng = new Rng(1);
    const ins = [randomFactors(rng, 2, 5, 4, 1), randomFactors(rng, 2, 5, 4, 1)];
    refused(() => mergeTarget(ins, [1, 1], planMerge([2, 2], [1, 1], { combination_type: 'svd', svd_rank: 5 })), 'svd_rank');
    refused(() => mergeTarget(ins, [1, 1], planMerge([2, 2], [1, 1], { combination_type: 'ties_delta', density: 0.5, svd_rank: 5 })), 'svd_rank');
  });
  it('unknown combination_type, majority_sign_method, output, svd_clamp, seed', () => {
    refused(() => planMerge([4, 4], [1, 1], { combination_type: 'average' as never }), 'combination_type');
    refused(() => planMerge([4, 4], [1, 1], { ...ok, majority_sign_method: 'mass' as never }), 'majority_sign_method');
    refused(() => planMerge([4, 4], [1, 1], { combination_type: 'svd', output: 'merged' }), 'output');
    refused(() => planMerge([4, 4], [1, 1], { combination_type: 'svd', svd_clamp: 1.5 }), 'svd_clamp');
    refused(() => planMerge([4, 4], [1, 1], { ...ok, seed: 1.5 }), 'seed');
  });
  it('unequal ranks for the A/B family (PEFT: "All adapters must have the same r value")', () => {
    refused(() => planMerge([4, 8], [1, 1], ok), 'adapters');
    expect(planMerge([4, 8], [1, 1], { combination_type: 'cat' }).rank).toBe(12);
  });
  it('mismatched target shapes', () => {
    const rng = new Rng(2);
    refused(() => mergeTarget([randomFactors(rng, 2, 5, 4, 1), randomFactors(rng, 2, 5, 3, 1)], [1, 1], planMerge([2, 2], [1, 1], { combination_type: 'cat' })), 'adapters');
  });
});

// PEFT sizes a merge by each input's rank as _check_add_weighted_adapter reads it: r, or the
// largest of r and its rank_pattern values.
describe('merge ranks follow rank_pattern, as PEFT', () => {
  const cfg = loadModelFiles(STORIES_DIR).config;
  const input = (seed: number) => {
    const a = buildAdapter(cfg, { rank: 4, alpha: 8, targets: ['q_proj', 'v_proj'], rankPattern: { q_proj: 8 }, seed });
    return { name: `a${seed}`, version: `v${seed}`, files: { config: new TextEncoder().encode(JSON.stringify(a.config)), weights: encodeSafetensors(a.tensors) } };
  };
  const merge = (combination_type: string) => mergeFiles([input(1), input(2)], parseMergeRequest({ name: 'm', adapters: ['a1', 'a2'], weights: [1, 1], combination_type }), cfg, { maxRank: 64, modelName: 'stories260K' });
  it('cat: the sum of max(r, rank_pattern) over the inputs (8 + 8), exactly', () => {
    const out = merge('cat');
    expect(out.recipe.rank).toBe(16);
  });
  it('svd without svd_rank: the largest input rank, 8, not r = 4', () => {
    expect(merge('svd').recipe.rank).toBe(8);
  });
});

// A base that names the served model by its name or by any path ending in it is that model
// (adapters trained from different directories, and fine-tuning jobs' adapters, which record the
// model's name, merge together); another base is still refused.
describe('merge inputs\' bases', () => {
  const cfg = loadModelFiles(STORIES_DIR).config;
  const input = (seed: number, base: string | null) => {
    const a = buildAdapter(cfg, { rank: 4, seed });
    const config = { ...a.config, base_model_name_or_path: base };
    return { name: `a${seed}`, version: `v${seed}`, files: { config: new TextEncoder().encode(JSON.stringify(config)), weights: encodeSafetensors(a.tensors) } };
  };
  const merge = (bases: (string | null)[]) => mergeFiles(bases.map((b, i) => input(i + 1, b)), parseMergeRequest({ name: 'm', adapters: bases.map((_, i) => `a${i + 1}`), weights: bases.map(() => 1), combination_type: 'cat' }), cfg, { maxRank: 64, modelName: 'stories260K' });
  it('the served model\'s name, a relative and an absolute path ending in it, and none: one base', () => {
    expect(merge(['stories260K', 'models/stories260K', '/srv/x/stories260K', null]).recipe.rank).toBe(16);
  });
  it('another model, or a name that only ends like it, is refused naming both', () => {
    refused(() => merge(['stories260K', 'other/model']), 'adapters');
    refused(() => merge(['models/stories260K', 'xstories260K']), 'adapters');
  });
});
