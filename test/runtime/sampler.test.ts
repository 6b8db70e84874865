import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { DEFAULT_SAMPLING, applyBiasAndPenalties, argmax, candidateDistribution, drawFrom, greedyToken, logSoftmax, logSumExp, sampleToken, sanitize, topK, topKDistribution } from '../../src/runtime/sampler.ts';
import type { SamplingParams } from '../../src/runtime/sampler.ts';
import { Rng } from '../../src/runtime/random.ts';

const P = (over: Partial<SamplingParams>): SamplingParams => ({ ...DEFAULT_SAMPLING, ...over });
// logits whose softmax is exactly [0.5, 0.3, 0.15, 0.05]
const probs4 = [0.5, 0.3, 0.15, 0.05];
const logits4 = Float32Array.from(probs4.map(Math.log));

describe('candidate masks', () => {
  it('top_k keeps the k most likely', () => {
    const d = candidateDistribution(logits4, P({ topK: 2 }));
    expect([...d.ids]).toEqual([0, 1]);
    expect(d.probs[0]).toBeCloseTo(0.5 / 0.8, 6);
  });
  it('top_p keeps the smallest prefix reaching p', () => {
    expect([...candidateDistribution(logits4, P({ topP: 0.8 })).ids]).toEqual([0, 1]);
    expect([...candidateDistribution(logits4, P({ topP: 0.81 })).ids]).toEqual([0, 1, 2]);
    expect([...candidateDistribution(logits4, P({ topP: 0.01 })).ids]).toEqual([0]);
  });
  it('min_p drops tokens below min_p · p_max', () => {
    expect([...candidateDistribution(logits4, P({ minP: 0.5 })).ids]).toEqual([0, 1]);
    expect([...candidateDistribution(logits4, P({ minP: 0.2 })).ids]).toEqual([0, 1, 2]);
  });
  it('temperature sharpens and flattens', () => {
    const cold = candidateDistribution(logits4, P({ temperature: 0.5 }));
    const hot = candidateDistribution(logits4, P({ temperature: 2 }));
    expect(cold.probs[0]).toBeCloseTo(0.25 / (0.25 + 0.09 + 0.0225 + 0.0025), 6);
    expect(hot.probs[0]).toBeLessThan(0.5);
  });
  it('top_k then top_p renormalise over the kept set', () => {
    const d = candidateDistribution(logits4, P({ topK: 3, topP: 0.9 }));
    expect([...d.ids]).toEqual([0, 1, 2]);
    expect(d.probs.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
  });
});

describe('penalties and bias', () => {
  it('repetition penalty divides positive and multiplies negative logits of prompt and output tokens', () => {
    const l = Float32Array.of(2, -2, 2, -2);
    applyBiasAndPenalties(l, P({ repetitionPenalty: 2 }), { seen: new Set([0, 1]), outputCounts: new Map() });
    expect([...l]).toEqual([1, -4, 2, -2]);
  });
  it('frequency and presence count output tokens only', () => {
    const l = Float32Array.of(0, 0, 0);
    applyBiasAndPenalties(l, P({ frequencyPenalty: 0.5, presencePenalty: 1 }), { seen: new Set([0, 1, 2]), outputCounts: new Map([[1, 3]]) });
    expect([...l]).toEqual([0, -2.5, 0]);
  });
  it('logit_bias -100 bans a token from greedy decoding, +100 forces it', () => {
    const l = Float32Array.from(logits4);
    applyBiasAndPenalties(l, P({ logitBias: new Map([[0, -100]]) }), { seen: new Set(), outputCounts: new Map() });
    expect(argmax(l)).toBe(1);
    const m = Float32Array.from(logits4);
    applyBiasAndPenalties(m, P({ logitBias: new Map([[3, 100]]) }), { seen: new Set(), outputCounts: new Map() });
    expect(sampleToken(m, P({ temperature: 1 }), () => 0.99)).toBe(3);
  });
});

describe('sampling', () => {
  it('the same seed gives the same tokens; another seed differs', () => {
    const draw = (seed: number) => { const r = new Rng(seed); return Array.from({ length: 50 }, () => sampleToken(logits4, P({}), () => r.next())); };
    expect(draw(7)).toEqual(draw(7));
    expect(draw(7)).not.toEqual(draw(8));
  });
  it('draws follow the distribution (20k draws, each within 1.5% absolute)', () => {
    const r = new Rng(123);
    const counts = [0, 0, 0, 0];
    const d = candidateDistribution(logits4, P({}));
    for (let i = 0; i < 20000; i++) counts[drawFrom(d, r.next())]++;
    counts.forEach((c, i) => expect(Math.abs(c / 20000 - probs4[i])).toBeLessThan(0.015));
  });
  it('greedy is the argmax', () => {
    expect(sampleToken(Float32Array.of(0.1, 3, 2), P({ temperature: 0 }), () => { throw new Error('no coin for greedy'); })).toBe(1);
  });
});

describe('log-probabilities', () => {
  it('log_softmax and the top-k alternatives', () => {
    const lp = logSoftmax(logits4);
    probs4.forEach((p, i) => expect(lp[i]).toBeCloseTo(Math.log(p), 6));
    expect(topK(lp, 3).map((t) => t.id)).toEqual([0, 1, 2]);
    expect(topK(Float64Array.of(1, 5, 3, 5), 2).map((t) => t.id)).toEqual([1, 3]);
  });
  it('a token\'s logprob as logits[id] − logSumExp equals log_softmax[id]; top-k of the logits is top-k of the logprobs (property)', () => {
    // logits in quarter steps (distinct values stay distinct after subtracting logSumExp in float64;
    // logits a denormal apart would tie as logprobs, where the logits still order them)
    fc.assert(fc.property(fc.array(fc.integer({ min: -40_000, max: 40_000 }), { minLength: 1, maxLength: 64 }), fc.integer({ min: 0, max: 8 }), (vals, k) => {
      const x = Float32Array.from(vals, (v) => v / 4);
      const lp = logSoftmax(x);
      const lse = logSumExp(x);
      x.forEach((v, i) => expect(Math.abs(v - lse - lp[i])).toBeLessThanOrEqual(1e-9 * Math.max(1, Math.abs(lp[i]))));
      expect(topK(x, k).map((t) => ({ id: t.id, value: t.value - lse }))).toEqual(topK(lp, k).map((t) => ({ id: t.id, value: expect.closeTo(t.value, 9) })));
    }), { seed: 12, numRuns: 300 });
  });
  it('top-k of 0 is empty (logprobs: 0 asks for no alternatives); any k equals a full sort (property)', () => {
    expect(topK(logSoftmax(logits4), 0)).toEqual([]);
    fc.assert(fc.property(fc.array(fc.integer({ min: -5, max: 5 }), { minLength: 1, maxLength: 40 }), fc.integer({ min: -2, max: 45 }), (vals, k) => {
      const v = Float64Array.from(vals);
      const ref = [...v].map((value, id) => ({ id, value })).sort((a, b) => b.value - a.value || a.id - b.id).slice(0, Math.max(0, k));
      expect(topK(v, k)).toEqual(ref);
    }), { seed: 9, numRuns: 300 });
  });
  it('any logits (±Infinity, NaN, huge) and any valid parameters give a token id in range (property)', () => {
    const logit = fc.oneof(fc.float({ noNaN: false }), fc.constantFrom(Infinity, -Infinity, NaN, 3.4e38, -3.4e38, 0));
    fc.assert(fc.property(
      fc.array(logit, { minLength: 1, maxLength: 64 }),
      fc.record({
        temperature: fc.oneof(fc.constant(0), fc.double({ min: 1e-6, max: 2, noNaN: true })),
        topP: fc.double({ min: 1e-9, max: 1, noNaN: true }),
        topK: fc.integer({ min: 0, max: 70 }),
        minP: fc.double({ min: 0, max: 1, noNaN: true }),
        repetitionPenalty: fc.double({ min: 0.01, max: 100, noNaN: true }),
        frequencyPenalty: fc.double({ min: -2, max: 2, noNaN: true }),
        presencePenalty: fc.double({ min: -2, max: 2, noNaN: true }),
      }),
      fc.double({ min: 0, max: 0.999999, noNaN: true }),
      (vals, params, coin) => {
        const logits = Float32Array.from(vals);
        const p = { ...DEFAULT_SAMPLING, ...params, logitBias: new Map([[0, 100]]) };
        applyBiasAndPenalties(logits, p, { seen: new Set([0, vals.length - 1]), outputCounts: new Map([[0, 3]]) });
        const id = sampleToken(logits, p, () => coin);
        expect(Number.isInteger(id) && id >= 0 && id < vals.length).toBe(true);
      },
    ), { seed: 11, numRuns: 500 });
  });

  it('the fast paths choose what the general ones do: greedy = argmax(sanitize(x)) without writing x; unfiltered sampling = drawFrom(candidateDistribution) for the same coin (property)', () => {
    const logit = fc.oneof(
      { weight: 6, arbitrary: fc.integer({ min: -4000, max: 4000 }).map((v) => v / 100) },
      { weight: 1, arbitrary: fc.constantFrom(Infinity, -Infinity, NaN, 3.4e38, -3.4e38, 0) },
    );
    fc.assert(fc.property(
      fc.array(logit, { minLength: 1, maxLength: 200 }),
      fc.double({ min: 1e-3, max: 3, noNaN: true }),
      fc.double({ min: 0, max: 0.999999, noNaN: true }),
      (vals, temperature, coin) => {
        const x = Float32Array.from(vals);
        const before = x.slice();
        const ref = x.slice();
        sanitize(ref);
        expect(greedyToken(x)).toBe(argmax(ref));
        expect(sampleToken(x.slice(), P({ temperature: 0 }), () => coin)).toBe(argmax(ref));
        expect([...x]).toEqual([...before]);
        const p = P({ temperature });
        expect(sampleToken(x.slice(), p, () => coin)).toBe(drawFrom(candidateDistribution(ref, p), coin));
      },
    ), { seed: 21, numRuns: 1000 });
  });

  it('top-p alone draws what the general path (candidateDistribution, a full sort) draws for the same coin (property)', () => {
    fc.assert(fc.property(
      fc.array(fc.oneof(
        { weight: 8, arbitrary: fc.integer({ min: -3000, max: 3000 }).map((v) => v / 100) },
        { weight: 1, arbitrary: fc.constantFrom(Infinity, -Infinity, NaN, 0) },
      ), { minLength: 1, maxLength: 300 }),
      fc.double({ min: 0.05, max: 3, noNaN: true }),
      fc.double({ min: 1e-6, max: 0.999, noNaN: true }),
      fc.array(fc.double({ min: 0, max: 0.999999, noNaN: true }), { minLength: 1, maxLength: 8 }),
      (vals, temperature, topP, coins) => {
        const ref = Float32Array.from(vals);
        sanitize(ref);
        const p = P({ temperature, topP });
        const d = candidateDistribution(ref, p);
        for (const coin of coins) expect(sampleToken(Float32Array.from(vals), p, () => coin)).toBe(drawFrom(d, coin));
      },
    ), { seed: 23, numRuns: 500 });
  });
  it('top-k (with top-p and min-p) gives the general path\'s candidates and probabilities exactly, and the same draw (property)', () => {
    let fast = 0;
    fc.assert(fc.property(
      fc.array(fc.oneof(
        { weight: 8, arbitrary: fc.integer({ min: -3000, max: 3000 }).map((v) => v / 100) },
        { weight: 2, arbitrary: fc.integer({ min: -3, max: 3 }) }, // ties
        { weight: 1, arbitrary: fc.constantFrom(Infinity, -Infinity, NaN, 0, -1e30) },
      ), { minLength: 2, maxLength: 300 }),
      fc.integer({ min: 1, max: 40 }),
      fc.double({ min: 0.05, max: 3, noNaN: true }),
      fc.oneof(fc.constant(1), fc.double({ min: 1e-6, max: 0.999, noNaN: true })),
      fc.oneof(fc.constant(0), fc.double({ min: 1e-4, max: 0.9, noNaN: true })),
      fc.array(fc.double({ min: 0, max: 0.999999, noNaN: true }), { minLength: 1, maxLength: 8 }),
      (vals, k, temperature, topP, minP, coins) => {
        const ref = Float32Array.from(vals);
        sanitize(ref);
        const p = P({ temperature, topK: Math.min(k, vals.length - 1), topP, minP });
        const d = candidateDistribution(ref, p);
        const got = topKDistribution(ref, p);
        if (got) {
          fast++;
          expect([...got.ids]).toEqual([...d.ids]);
          expect([...got.probs]).toEqual([...d.probs]);
        }
        for (const coin of coins) expect(sampleToken(Float32Array.from(vals), p, () => coin)).toBe(drawFrom(d, coin));
      },
    ), { seed: 29, numRuns: 600 });
    expect(fast).toBeGreaterThan(300); // the fast path is what ran, mostly
  });

  // Hugging Face's and vLLM's order, written out plainly (float64, a full sort): softmax at the
  // temperature; top-k's k best, renormalised; top-p's smallest prefix reaching top_p of that
  // distribution; min-p's floor of min_p × the best probability; renormalised.
  function referenceCandidates(logits: Float32Array, p: SamplingParams): { ids: number[]; probs: number[] } {
    const max = Math.max(...logits);
    let ids = [...logits.keys()];
    const q = ids.map((i) => Math.exp((logits[i] - max) / p.temperature));
    ids.sort((a, b) => q[b] - q[a] || a - b);
    if (p.topK > 0) ids = ids.filter((i) => q[i] >= q[ids[Math.min(p.topK, ids.length) - 1]]); // the k best and any tied with the k-th
    const whole = ids.reduce((s, i) => s + q[i], 0);
    if (p.topP < 1) {
      let cum = 0;
      const kept: number[] = [];
      for (const i of ids) { kept.push(i); cum += q[i] / whole; if (cum >= p.topP) break; }
      ids = kept;
    }
    if (p.minP > 0) ids = ids.filter((i) => q[i] >= p.minP * q[ids[0]]);
    const mass = ids.reduce((s, i) => s + q[i], 0);
    return { ids, probs: ids.map((i) => q[i] / mass) };
  }

  it('top-p is a fraction of the whole distribution, however much of it lies in the tail: a long tail of unlikely tokens widens the nucleus', () => {
    // p = [1, 0.5, 1000 × 0.0009] / 2.4: the best token alone holds 0.42 < 0.6, so top_p 0.6 keeps two
    const x = new Float32Array(1002).fill(Math.log(0.0009));
    x[0] = 0;
    x[1] = Math.log(0.5);
    const p = P({ topP: 0.6 });
    expect([...candidateDistribution(x, p).ids]).toEqual([0, 1]);
    const r = new Rng(3);
    let second = 0;
    for (let i = 0; i < 4000; i++) if (sampleToken(x.slice(), p, () => r.next()) === 1) second++;
    expect(Math.abs(second / 4000 - 1 / 3)).toBeLessThan(0.03);
  });

  it('top-k keeps every token tied with the k-th, as Hugging Face and vLLM do', () => {
    expect([...candidateDistribution(Float32Array.from([2, 2, 2, 0]), P({ topK: 1 })).ids]).toEqual([0, 1, 2]);
    const d = candidateDistribution(Float32Array.from([3, 2, 2, 0]), P({ topK: 2 }));
    expect([...d.ids]).toEqual([0, 1, 2]);
    expect(d.probs[1]).toBeCloseTo(d.probs[2], 15);
    const r = new Rng(9);
    const seen = new Set<number>();
    for (let i = 0; i < 300; i++) seen.add(sampleToken(Float32Array.from([2, 2, 2, 0]), P({ topK: 1 }), () => r.next()));
    expect([...seen].sort()).toEqual([0, 1, 2]);
  });

  it('top-k, top-p and min-p keep the reference\'s candidates with its probabilities, on heavy-tailed rows (property)', () => {
    fc.assert(fc.property(
      fc.array(fc.integer({ min: 0, max: 300 }).map((v) => v / 100), { minLength: 1, maxLength: 12 }), // the head
      fc.integer({ min: 0, max: 3000 }),                                                                // the tail's size
      fc.double({ min: -12, max: -5, noNaN: true }),                                                     // … and level
      fc.double({ min: 0.3, max: 2, noNaN: true }),
      fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 50 })),
      fc.oneof(fc.constant(1), fc.double({ min: 0.05, max: 0.99, noNaN: true })),
      fc.oneof(fc.constant(0), fc.double({ min: 1e-3, max: 0.5, noNaN: true })),
      (head, tail, level, temperature, topK, topP, minP) => {
        const x = Float32Array.from([...head, ...Array.from({ length: tail }, (_, i) => level + (i % 7) * 0.1)]);
        const p = P({ temperature, topK: topK < x.length ? topK : 0, topP, minP });
        // the same candidates with the same probabilities (their order is the draw's, not the distribution's)
        const byId = (d: { ids: ArrayLike<number>; probs: ArrayLike<number> }) => [...Array.from(d.ids).entries()].map(([i, id]) => [id, d.probs[i]]).sort((a, b) => a[0] - b[0]);
        const want = byId(referenceCandidates(x, p));
        const got = byId(candidateDistribution(x, p));
        expect(got.map(([id]) => id)).toEqual(want.map(([id]) => id));
        got.forEach(([, v], i) => expect(Math.abs(v - want[i][1])).toBeLessThan(1e-12));
      },
    ), { seed: 31, numRuns: 300 });
  });

  it('top-p draws follow the renormalised nucleus (20k draws, each within 1.5% absolute)', () => {
    const r = new Rng(5);
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < 20000; i++) counts[sampleToken(Float32Array.from(logits4), P({ topP: 0.81 }), () => r.next())]++;
    [0.5, 0.3, 0.15, 0].forEach((p, i) => expect(Math.abs(counts[i] / 20000 - p / 0.95)).toBeLessThan(0.015));
  });
});
