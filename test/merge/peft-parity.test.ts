// Each PEFT-parity combination against the float64 re-implementation of PEFT 0.13 (test/reference).
import { describe, expect, it } from 'vitest';
import { Rng } from '../../src/runtime/random.ts';
import { mergeTarget, planMerge, targetSeed } from '../../src/merge/index.ts';
import type { CombinationType, FactoredResult, MergeOptions, TargetFactors } from '../../src/merge/index.ts';
import { addWeightedAdapterRef, matmul } from '../reference/peft-merge-reference.ts';
import { product, randomFactors, relDiff, toRef } from './merge-helpers.ts';

const TOL = 1e-5;
const OUT = 14, IN = 13; // 3 × rank 4 = 12 ≤ 13: `svd` takes the thin-product path; rank 5 × 3 = 15 the dense one

function adapters(seed: number, ranks: number[], scales: number[]): TargetFactors[] {
  const rng = new Rng(seed);
  return ranks.map((r, i) => randomFactors(rng, r, OUT, IN, scales[i]));
}

function compare(inputs: TargetFactors[], weights: number[], options: MergeOptions, seed = 7): { ours: FactoredResult; ref: ReturnType<typeof addWeightedAdapterRef> } {
  const plan = planMerge(inputs.map((t) => t.rank), weights, { ...options, seed });
  const ours = mergeTarget(inputs, weights, plan, 0) as FactoredResult;
  expect(ours.kind).toBe('factors');
  const rng = new Rng(targetSeed(BigInt(seed), 0));
  const ref = addWeightedAdapterRef(inputs.map(toRef), weights, { ...options, bernoulli: (p) => rng.next() < p });
  expect(ours.rank).toBe(ref.r);
  expect(plan.rank).toBe(ref.r);
  expect(plan.loraAlpha).toBe(ref.lora_alpha);
  expect(relDiff(ours.a, ref.A)).toBeLessThan(TOL);
  expect(relDiff(ours.b, ref.B)).toBeLessThan(TOL);
  expect(relDiff(product(ours.b, ours.a, OUT, ours.rank, IN), matmul(ref.B, ref.A))).toBeLessThan(TOL);
  return { ours, ref };
}

const W = [0.7, 1.3, 0.4];
const S = [2, 0.5, 1.25];

describe('PEFT parity (A, B and ΔW within 1e-5 relative)', () => {
  const cases: [CombinationType, Partial<MergeOptions>][] = [
    ['linear', {}],
    ['cat', {}],
    ['ties', { density: 0.5 }],
    ['ties', { density: 0.3, majority_sign_method: 'frequency' }],
    ['dare_linear', { density: 0.6 }],
    ['dare_ties', { density: 0.4 }],
    ['dare_ties', { density: 0.7, majority_sign_method: 'frequency' }],
    ['magnitude_prune', { density: 0.25 }],
    ['ties', { density: 1 }],
    ['svd', {}],
    ['svd', { svd_rank: 3 }],
    ['svd', { svd_rank: 6, svd_clamp: 0.9 }],
    ['ties_svd', { density: 0.5, svd_rank: 5 }],
    ['ties_svd', { density: 0.5, majority_sign_method: 'frequency' }],
    ['dare_linear_svd', { density: 0.5, svd_rank: 4 }],
    ['dare_ties_svd', { density: 0.6, svd_rank: 4, svd_clamp: 0.95 }],
    ['magnitude_prune_svd', { density: 0.3, svd_rank: 5 }],
  ];
  for (const [ct, extra] of cases) {
    it(`${ct} ${JSON.stringify(extra)}`, () => {
      for (const seed of [1, 2]) compare(adapters(seed, [4, 4, 4], S), W, { combination_type: ct, ...extra }, seed);
    });
  }

  it('cat and the svd family take different ranks; cat gives r = Σ r_i, svd max r_i', () => {
    const ins = adapters(3, [2, 5, 3], S);
    expect(compare(ins, W, { combination_type: 'cat' }).ours.rank).toBe(10);
    expect(compare(ins, W, { combination_type: 'svd' }).ours.rank).toBe(5);
    expect(compare(ins, [-0.5, 1, 2], { combination_type: 'ties_svd', density: 0.5 }).ours.rank).toBe(5);
  });

  it('negative weights: cat and svd take them', () => {
    const ins = adapters(4, [4, 4, 4], S);
    compare(ins, [1, -0.5, 0.8], { combination_type: 'cat' });
    compare(ins, [1, -0.5, 0.8], { combination_type: 'svd', svd_rank: 12 });
  });

  it('svd through the dense path (Σ r_i > min(out, in)) and the thin-product path agree with PEFT', () => {
    const big = adapters(9, [5, 5, 5], S);
    compare(big, W, { combination_type: 'svd', svd_rank: 7 });
    compare(big, W, { combination_type: 'svd', svd_rank: 7, svd_clamp: 0.8 });
    compare(adapters(9, [4, 4, 4], S), W, { combination_type: 'svd', svd_rank: 7, svd_clamp: 0.8 });
  });

  it('quirk: PEFT 0.13 takes math.sqrt(w·s) in the A/B family, so a negative weight is refused', () => {
    const ins = adapters(4, [4, 4, 4], S);
    const plan = planMerge([4, 4, 4], [1, -0.5, 0.8], { combination_type: 'linear' });
    expect(() => mergeTarget(ins, [1, -0.5, 0.8], plan)).toThrow(expect.objectContaining({ param: 'weights' }));
    expect(() => addWeightedAdapterRef(ins.map(toRef), [1, -0.5, 0.8], { combination_type: 'linear' })).toThrow('math domain error');
  });

  it('one adapter: every type becomes linear (svd_rank and density ignored), and that is exact', () => {
    const ins = adapters(5, [4], [1.5]);
    for (const ct of ['svd', 'ties', 'dare_ties_svd', 'cat'] as const) {
      const { ours } = compare(ins, [0.8], { combination_type: ct, density: 0.3, svd_rank: 2 });
      expect(ours.rank).toBe(4);
      expect(relDiff(product(ours.b, ours.a, OUT, 4, IN), product(ins[0].b, ins[0].a, OUT, 4, IN).map((x) => x * 0.8 * 1.5))).toBeLessThan(TOL);
    }
  });

  it('quirk: linear mixes A and B separately, so B′A′ has cross terms (reference §2.3 vector)', () => {
    const t1: TargetFactors = { a: Float32Array.of(1, 0), b: Float32Array.of(1, 0), rank: 1, scale: 1, in: 2, out: 2 };
    const t2: TargetFactors = { a: Float32Array.of(0, 1), b: Float32Array.of(0, 1), rank: 1, scale: 1, in: 2, out: 2 };
    const lin = mergeTarget([t1, t2], [1, 1], planMerge([1, 1], [1, 1], { combination_type: 'linear' })) as FactoredResult;
    expect(Array.from(product(lin.b, lin.a, 2, 1, 2))).toEqual([1, 1, 1, 1]);
    const cat = mergeTarget([t1, t2], [1, 1], planMerge([1, 1], [1, 1], { combination_type: 'cat' })) as FactoredResult;
    expect(Array.from(product(cat.b, cat.a, 2, 2, 2))).toEqual([1, 0, 0, 1]);
  });

  it('quirk: the svd family scales twice (Σ w s² BA), cat once (Σ w s BA)', () => {
    const ins = adapters(6, [3, 3], [2, 3]);
    const w = [0.5, 0.25];
    const exact = (pow: number) => { const d = new Float64Array(OUT * IN); ins.forEach((t, i) => product(t.b, t.a, OUT, 3, IN).forEach((x, j) => { d[j] += w[i] * t.scale ** pow * x; })); return d; };
    const s = mergeTarget(ins, w, planMerge([3, 3], w, { combination_type: 'svd', svd_rank: 6 })) as FactoredResult;
    expect(relDiff(product(s.b, s.a, OUT, 6, IN), exact(2))).toBeLessThan(TOL);
    const c = mergeTarget(ins, w, planMerge([3, 3], w, { combination_type: 'cat' })) as FactoredResult;
    expect(relDiff(product(c.b, c.a, OUT, 6, IN), exact(1))).toBeLessThan(TOL);
  });

  it('adapters lacking the target are skipped (cat leaves the tail zero)', () => {
    const ins = adapters(7, [4, 4, 4], S);
    const with2 = [ins[0], null, ins[2]];
    const w = W;
    for (const ct of ['linear', 'svd', 'ties'] as const) {
      const plan = planMerge([4, 4, 4], w, { combination_type: ct, density: 0.5 });
      const ours = mergeTarget(with2, w, plan) as FactoredResult;
      const ref = addWeightedAdapterRef([toRef(ins[0]), toRef(ins[2])], [w[0], w[2]], { combination_type: ct, density: 0.5, svd_rank: 4 });
      expect(relDiff(product(ours.b, ours.a, OUT, ours.rank, IN), matmul(ref.B, ref.A))).toBeLessThan(TOL);
    }
    const cat = mergeTarget(with2, w, planMerge([4, 4, 4], w, { combination_type: 'cat' })) as FactoredResult;
    expect(cat.rank).toBe(12);
    expect(cat.a.subarray(8 * IN).every((x) => x === 0)).toBe(true);
  });

  it('the result config is r = lora_alpha = new rank (scale 1)', () => {
    const p = planMerge([8, 8], [1, 1], { combination_type: 'ties', density: 0.5 });
    expect([p.rank, p.loraAlpha, p.scale]).toEqual([8, 8, 1]);
    const q = planMerge([8, 4], [1, 1], { combination_type: 'cat' });
    expect([q.rank, q.loraAlpha]).toEqual([12, 12]);
    const s = planMerge([8, 4], [1, 1], { combination_type: 'dare_ties_svd', density: 0.5, svd_rank: 3 });
    expect([s.rank, s.loraAlpha]).toEqual([3, 3]);
  });
});
