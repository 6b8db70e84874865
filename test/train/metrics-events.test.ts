// A fine-tuning job's metrics events are bounded (manager.ts reportsStep): every step of a job up to
// 1000 steps, beyond that about 1000 in all, plus each eval and the last step. Found by the attack
// pass of 2026-12-04: one durable event per step, kept in memory for the job's life, let one job of
// the accepted limits make ~10⁸ of them.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MAX_METRICS_EVENTS, reportsStep } from '../../src/train/jobs/manager.ts';

describe('metrics events of a job', () => {
  it('any job: step 0, the last step and every eval step are reported; at most max + evals + 2 in all; every step when total ≤ max', () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 20_000 }), fc.integer({ min: 1, max: 50 }), fc.integer({ min: 1, max: 2000 }), (total, max, evalEvery) => {
      let n = 0;
      let evals = 0;
      for (let step = 0; step <= total; step++) {
        const hasEval = step > 0 && step % evalEvery === 0;
        if (hasEval) evals++;
        const r = reportsStep(step, total, hasEval, max);
        if (step === 0 || step === total || hasEval || total <= max) expect(r).toBe(true);
        if (r) n++;
      }
      expect(n).toBeLessThanOrEqual(max + evals + 2);
    }), { numRuns: 200 });
  });

  it('the default bound is 1000: a job of 10⁶ steps without evals reports about a thousand', () => {
    let n = 0;
    for (let step = 0; step <= 1_000_000; step++) if (reportsStep(step, 1_000_000, false)) n++;
    expect(MAX_METRICS_EVENTS).toBe(1000);
    expect(n).toBe(1001);
  });
});
