// AdamW against a hand-computed few steps (the textbook formula written out here, in float64),
// checkpoint round trip of its state, and global-norm clipping properties.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { AdamW, clipGradNorm } from '../../src/train/adamw.ts';

describe('AdamW', () => {
  it('matches three hand-computed steps (decoupled decay, bias correction)', () => {
    const lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    const grads = [[0.5, -2], [0.1, 1], [-0.3, 0.25]];
    // independent: scalar recurrences per entry
    const expected = [1, -0.5].map((p0, j) => {
      let p = p0, m = 0, v = 0;
      grads.forEach((g, s) => {
        const t = s + 1;
        p -= lr * wd * p;
        m = b1 * m + (1 - b1) * g[j];
        v = b2 * v + (1 - b2) * g[j] ** 2;
        p -= lr * (m / (1 - b1 ** t)) / (Math.sqrt(v / (1 - b2 ** t)) + eps);
      });
      return p;
    });
    // first step by hand: m̂ = g, v̂ = g², so p1 = p0·(1 − lr·wd) − lr·sign(g) (up to eps)
    const opt = new AdamW({ lr, beta1: b1, beta2: b2, eps, weightDecay: wd });
    const params = new Map([['w', Float32Array.of(1, -0.5)]]);
    opt.step(params, new Map([['w', Float32Array.from(grads[0])]]));
    expect(params.get('w')![0]).toBeCloseTo(0.89, 6);
    expect(params.get('w')![1]).toBeCloseTo(-0.5 * 0.99 + 0.1, 6);
    for (const g of grads.slice(1)) opt.step(params, new Map([['w', Float32Array.from(g)]]));
    expect(opt.stepCount).toBe(3);
    expect(params.get('w')![0]).toBeCloseTo(expected[0], 6);
    expect(params.get('w')![1]).toBeCloseTo(expected[1], 6);
  });

  it('resumes exactly from exported state (a checkpoint), and the export is a copy', () => {
    const gs = [Float32Array.of(0.3, -1, 2), Float32Array.of(-0.7, 0.2, 0.1), Float32Array.of(1.5, 0.4, -0.9)];
    const straight = new AdamW({ lr: 0.05 });
    const p1 = new Map([['x', Float32Array.of(0.1, 0.2, 0.3)]]);
    for (const g of gs) straight.step(p1, new Map([['x', g]]));

    const first = new AdamW({ lr: 0.05 });
    const p2 = new Map([['x', Float32Array.of(0.1, 0.2, 0.3)]]);
    first.step(p2, new Map([['x', gs[0]]]));
    const state = first.exportState();
    first.step(p2, new Map([['x', gs[1]]])); // must not change the exported state
    const resumed = new AdamW({ lr: 0.05 });
    resumed.importState(state);
    const p3 = new Map([['x', Float32Array.of(0.1, 0.2, 0.3)]]);
    new AdamW({ lr: 0.05 }).step(p3, new Map([['x', gs[0]]]));
    resumed.step(p3, new Map([['x', gs[1]]]));
    resumed.step(p3, new Map([['x', gs[2]]]));
    expect([...p3.get('x')!]).toEqual([...p1.get('x')!]);
    expect(state.step).toBe(1);
  });
});

describe('clipGradNorm', () => {
  const arrays = fc.array(fc.float32Array({ minLength: 1, maxLength: 20, noNaN: true, noDefaultInfinity: true, min: -1e3, max: 1e3 }), { minLength: 1, maxLength: 4 });
  const norm = (gs: Float32Array[]) => Math.sqrt(gs.reduce((s, g) => s + g.reduce((a, v) => a + v * v, 0), 0));

  it('returns the norm before clipping; after it the norm is ≤ maxNorm; directions are kept', () => {
    fc.assert(fc.property(arrays, fc.double({ min: 1e-3, max: 100, noNaN: true }), (gs, maxNorm) => {
      const before = norm(gs);
      const copy = gs.map((g) => g.slice());
      const reported = clipGradNorm(gs, maxNorm);
      expect(reported).toBeCloseTo(before, 6);
      expect(norm(gs)).toBeLessThanOrEqual(maxNorm * (1 + 1e-5));
      if (before <= maxNorm) gs.forEach((g, i) => expect([...g]).toEqual([...copy[i]]));
      else {
        const c = maxNorm / (before + 1e-6);
        gs.forEach((g, i) => g.forEach((v, j) => expect(Math.abs(v - copy[i][j] * c)).toBeLessThanOrEqual(1e-6 * Math.abs(copy[i][j]) + 1e-30)));
      }
    }));
  });

  it('clips to exactly maxNorm (up to torch\'s 1e-6) for a known vector', () => {
    const g = [Float32Array.of(3), Float32Array.of(4)];
    expect(clipGradNorm(g, 1)).toBe(5);
    expect(g[0][0]).toBeCloseTo(0.6, 6);
    expect(g[1][0]).toBeCloseTo(0.8, 6);
  });
});
