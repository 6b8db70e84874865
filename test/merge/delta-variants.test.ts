// The exact delta-space variants against their definitions: the merge_utils operation on
// ΔW_i = s_i·B_i·A_i with weights w_i, then the truncated SVD (or ΔW itself).
import { describe, expect, it } from 'vitest';
import { Rng } from '../../src/runtime/random.ts';
import { mergeAdapters, mergeInputFromAdapter, mergeTarget, planMerge, targetSeed } from '../../src/merge/index.ts';
import type { DeltaResult, DeltaType, FactoredResult, MergeInputAdapter } from '../../src/merge/index.ts';
import type { LoraAdapter } from '../../src/adapters/lora-adapter.ts';
import * as R from '../reference/peft-merge-reference.ts';
import type { Mat } from '../reference/peft-merge-reference.ts';
import { product, randomFactors, relDiff, toRef } from './merge-helpers.ts';

const OUT = 12, IN = 10;

function reference(ct: DeltaType, deltas: Mat[], w: number[], density: number, msm: 'total' | 'frequency', bern: (p: number) => boolean): Mat {
  switch (ct) {
    case 'linear_delta': return R.task_arithmetic(deltas, w);
    case 'ties_delta': return R.ties(deltas, w, density, msm);
    case 'dare_linear_delta': return R.dare_linear(deltas, w, density, bern);
    case 'dare_ties_delta': return R.dare_ties(deltas, w, density, msm, bern);
    case 'magnitude_prune_delta': return R.magnitude_prune(deltas, w, density);
  }
}

describe('delta-space variants', () => {
  const rng = new Rng(10);
  const ins = [randomFactors(rng, 3, OUT, IN, 2), randomFactors(rng, 3, OUT, IN, 0.5), randomFactors(rng, 2, OUT, IN, 1.25)];
  const w = [0.8, -0.6, 1.1];
  const deltas = ins.map((t) => R.getDeltaWeight(toRef(t)));
  const types: DeltaType[] = ['linear_delta', 'ties_delta', 'dare_ties_delta', 'dare_linear_delta', 'magnitude_prune_delta'];

  for (const ct of types) {
    for (const msm of ['total', 'frequency'] as const) {
      it(`${ct} (${msm}): merged ΔW, and its rank-k factors with the discarded singular values' share as error`, () => {
        const seed = 99;
        const opts = { combination_type: ct, density: 0.45, majority_sign_method: msm, seed };
        const merged = mergeTarget(ins, w, planMerge([3, 3, 2], w, { ...opts, output: 'merged' })) as DeltaResult;
        const r0 = new Rng(targetSeed(BigInt(seed), 0));
        const ref = reference(ct, deltas, w, 0.45, msm, (p) => r0.next() < p);
        expect(merged.kind).toBe('delta');
        expect(relDiff(merged.delta, ref)).toBeLessThan(1e-6);

        for (const k of [2, 5, 10]) {
          const f = mergeTarget(ins, w, planMerge([3, 3, 2], w, { ...opts, svd_rank: k })) as FactoredResult;
          expect(f.rank).toBe(k);
          const refF = R.svdFactors(ref, k, null);
          expect(relDiff(product(f.b, f.a, OUT, k, IN), R.matmul(refF.B, refF.A))).toBeLessThan(1e-5);
          const S = R.svdRef(ref).S;
          const share = Math.sqrt(S.slice(k).reduce((s, x) => s + x * x, 0) / S.reduce((s, x) => s + x * x, 0));
          expect(f.relError!).toBeCloseTo(share, 5);
          expect(relDiff(product(f.b, f.a, OUT, k, IN), ref)).toBeCloseTo(share, 5);
        }
      });
    }
  }

  it('linear_delta is the exact weighted sum Σ w_i s_i B_i A_i (single scaling), error 0 at full rank', () => {
    const f = mergeTarget(ins, w, planMerge([3, 3, 2], w, { combination_type: 'linear_delta', svd_rank: 8 })) as FactoredResult;
    expect(relDiff(product(f.b, f.a, OUT, 8, IN), R.task_arithmetic(deltas, w))).toBeLessThan(1e-6);
    expect(f.relError!).toBeLessThan(1e-7);
  });

  it('one adapter is not turned into linear; the default rank is max r_i', () => {
    const p = planMerge([3], [1], { combination_type: 'ties_delta', density: 0.5 });
    expect(p.combination).toBe('ties_delta');
    expect(p.rank).toBe(3);
  });

  it('a clamp reports the measured error', () => {
    const f = mergeTarget(ins, w, planMerge([3, 3, 2], w, { combination_type: 'ties_delta', density: 0.5, svd_rank: 4, svd_clamp: 0.5 })) as FactoredResult;
    const ref = R.ties(deltas, w, 0.5, 'total');
    expect(f.relError!).toBeCloseTo(relDiff(product(f.b, f.a, OUT, 4, IN), ref), 5);
  });
});

describe('mergeAdapters', () => {
  it('merges the union of targets, skipping adapters that lack one, in layer/target order', () => {
    const rng = new Rng(12);
    const t = () => randomFactors(rng, 2, 8, 6, 1);
    const a: MergeInputAdapter = { r: 2, targets: new Map([['1.v_proj', t()], ['0.q_proj', t()]]) };
    const b: MergeInputAdapter = { r: 2, targets: new Map([['0.q_proj', t()], ['0.down_proj', t()]]) };
    const res = mergeAdapters([a, b], [1, 0.5], { combination_type: 'cat' });
    expect([...res.targets.keys()]).toEqual(['0.q_proj', '0.down_proj', '1.v_proj']);
    expect(res.plan.rank).toBe(4);
    const v = res.targets.get('1.v_proj') as FactoredResult;
    expect(v.b.subarray(0).filter((_, i) => i % 4 >= 2).every((x) => x === 0)).toBe(true);
    const s = mergeAdapters([a, b], [1, 0.5], { combination_type: 'dare_ties_svd', density: 0.5, seed: 3 });
    expect(s.maxRelError).not.toBeNull();
  });

  it('reads a decoded LoraAdapter and refuses DoRA', () => {
    const rng = new Rng(13);
    const f = randomFactors(rng, 2, 8, 6, 0.5);
    const ad: LoraAdapter = { version: 'x', targets: [{ layer: 0, target: 'q_proj', rank: 2, scale: 0.5, a: f.a, b: f.b, magnitude: null }], maxRank: 2, useDora: false, bytes: 0, baseModel: null };
    const input = mergeInputFromAdapter(ad);
    expect(input.targets.get('0.q_proj')).toMatchObject({ rank: 2, in: 6, out: 8, scale: 0.5 });
    expect(() => mergeInputFromAdapter({ ...ad, useDora: true })).toThrow(expect.objectContaining({ param: 'adapters' }));
  });
});
