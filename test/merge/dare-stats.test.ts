// DARE cannot match torch's RNG bit for bit: it is checked by statistics over seeds, and for
// determinism (the same seed gives the same merge).
import { describe, expect, it } from 'vitest';
import { Rng } from '../../src/runtime/random.ts';
import { mergeTarget, planMerge, primitives as P } from '../../src/merge/index.ts';
import type { DeltaResult, FactoredResult } from '../../src/merge/index.ts';
import { randomFactors } from './merge-helpers.ts';

describe('DARE statistics', () => {
  it('random pruning keeps ≈ density of the entries and rescales the kept ones by exactly 1/density', () => {
    const n = 4000;
    const src = new Rng(1);
    const t = Float64Array.from({ length: n }, () => src.normal() + 3); // no zeros
    for (const d of [0.1, 0.5, 0.9]) {
      let kept = 0;
      const seeds = 20;
      for (let seed = 0; seed < seeds; seed++) {
        const p = P.randomPruning(t, d, true, new Rng(seed));
        for (let i = 0; i < n; i++) {
          if (p[i] === 0) continue;
          kept++;
          expect(p[i]).toBe(t[i] / d);
        }
      }
      const frac = kept / (n * seeds);
      const sd = Math.sqrt(d * (1 - d) / (n * seeds));
      expect(Math.abs(frac - d)).toBeLessThan(5 * sd);
    }
  });

  it('prune with density 1 draws nothing and returns the tensor as is (PEFT: no pruning, no rescale)', () => {
    const t = Float64Array.of(1, 2, 3);
    const rng = new Rng(3);
    expect(P.prune(t, 1, 'random', true, rng)).toBe(t);
    expect(rng.nextU32()).toBe(new Rng(3).nextU32());
  });

  it('dare_linear_delta is unbiased: its mean over seeds approaches linear_delta', () => {
    const rng = new Rng(2);
    const out = 6, inDim = 5;
    const ins = [randomFactors(rng, 2, out, inDim, 1.5), randomFactors(rng, 2, out, inDim, 0.5)];
    const w = [0.6, 1.2];
    const exact = (mergeTarget(ins, w, planMerge([2, 2], w, { combination_type: 'linear_delta', output: 'merged' })) as DeltaResult).delta;
    const mean = new Float64Array(out * inDim);
    const seeds = 3000;
    for (let seed = 0; seed < seeds; seed++) {
      const r = mergeTarget(ins, w, planMerge([2, 2], w, { combination_type: 'dare_linear_delta', density: 0.5, seed, output: 'merged' })) as DeltaResult;
      r.delta.forEach((x, i) => { mean[i] += x / seeds; });
    }
    let num = 0, den = 0;
    for (let i = 0; i < mean.length; i++) { num += (mean[i] - exact[i]) ** 2; den += exact[i] ** 2; }
    expect(Math.sqrt(num / den)).toBeLessThan(0.06); // ~1/√seeds noise
  });

  it('PEFT dare_linear: each factor keeps ≈ density of its entries, each rescaled by 1/density', () => {
    const rng = new Rng(4);
    const ins = [randomFactors(rng, 8, 40, 30, 1), randomFactors(rng, 8, 40, 30, 1)];
    // weights 1 and 0: A' = √1 · prune(A_1) + 0 — the kept entries of A_1, divided by d
    const w = [1, 0];
    let kept = 0, total = 0;
    for (let seed = 0; seed < 10; seed++) {
      const r = mergeTarget(ins, w, planMerge([8, 8], w, { combination_type: 'dare_linear', density: 0.3, seed })) as FactoredResult;
      r.a.forEach((x, i) => { total++; if (x !== 0) { kept++; expect(x).toBeCloseTo(ins[0].a[i] / 0.3, 5); } });
    }
    expect(Math.abs(kept / total - 0.3)).toBeLessThan(5 * Math.sqrt(0.3 * 0.7 / total));
  });

  it('deterministic for a seed, different across seeds and targets', () => {
    const rng = new Rng(5);
    const ins = [randomFactors(rng, 4, 10, 9, 1), randomFactors(rng, 4, 10, 9, 2)];
    const w = [1, 1];
    for (const ct of ['dare_linear', 'dare_ties', 'dare_linear_svd', 'dare_ties_svd', 'dare_ties_delta', 'dare_linear_delta'] as const) {
      const run = (seed: number, stream = 0) => mergeTarget(ins, w, planMerge([4, 4], w, { combination_type: ct, density: 0.5, seed }), stream) as FactoredResult;
      expect(Array.from(run(42).a)).toEqual(Array.from(run(42).a));
      expect(Array.from(run(42).a)).not.toEqual(Array.from(run(43).a));
      expect(Array.from(run(42, 0).a)).not.toEqual(Array.from(run(42, 1).a));
    }
  });
});
