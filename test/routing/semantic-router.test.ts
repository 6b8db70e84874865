// The routing math (src/adapters/semantic-router.ts) as properties, and the in-repo labelled set
// routed through the engine's real embeddings: accuracy ≥ 0.9, as docs/figures/routing.json records.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { cosine, mixRoute, pickRoute, scoreRoutes, standardize, standardizer } from '../../src/adapters/semantic-router.ts';
import { ADAPTERS_DIR, EVAL_FILE, embedAll, routingFigures } from '../../scripts/make-routing-set.ts';
import { DEFAULT_MODEL_DIR } from '../../src/server/default-model.ts';
import { STYLES } from '../../src/train/styles.ts';

// values far below float64's normal range are zero here: scaling a subnormal vector underflows to a
// zero vector, where scale-invariance cannot hold (cosine() itself is exact from 1e-300 up)
const vec = (d: number) => fc.array(fc.double({ min: -10, max: 10, noNaN: true }).map((x) => (Math.abs(x) < 1e-150 ? 0 : x)), { minLength: d, maxLength: d });

describe('semantic router math', () => {
  it('cosine is symmetric, within [-1, 1] and blind to positive scale', () => {
    fc.assert(fc.property(vec(6), vec(6), fc.double({ min: 0.01, max: 100, noNaN: true }), (a, b, k) => {
      const c = cosine(a, b);
      expect(c).toBeGreaterThanOrEqual(-1 - 1e-12);
      expect(c).toBeLessThanOrEqual(1 + 1e-12);
      expect(cosine(b, a)).toBeCloseTo(c, 12);
      expect(cosine(a.map((x) => x * k), b)).toBeCloseTo(c, 9);
    }));
  });

  it('standardized examples have mean 0 and standard deviation 1 in every dimension that varies', () => {
    fc.assert(fc.property(fc.array(vec(4), { minLength: 2, maxLength: 12 }), (examples) => {
      const s = standardizer([{ name: 'x', examples }]);
      const z = examples.map((e) => standardize(e, s));
      for (let j = 0; j < 4; j++) {
        const col = z.map((v) => v[j]);
        const mean = col.reduce((a, b) => a + b, 0) / col.length;
        expect(Math.abs(mean)).toBeLessThan(1e-6);
        const varies = examples.some((e) => Math.abs(e[j] - examples[0][j]) > 1e-6);
        if (varies) expect(Math.sqrt(col.reduce((a, b) => a + (b - mean) ** 2, 0) / col.length)).toBeCloseTo(1, 6);
      }
    }));
  });

  it('a dimension whose spread is within rounding of its mean standardizes to about 0 (fast-check found one)', () => {
    const examples = [[0, 9.999999999986304, 0, 0], [0, 9.999999999986331, 0, 0]];
    const s = standardizer([{ name: 'x', examples }]);
    for (const e of examples) expect(Math.abs(standardize(e, s)[1])).toBeLessThan(1e-6);
  });

  it('scores best first, ties by name; adapters without examples are left out; a query among one adapter\'s examples picks it', () => {
    const a = [[1, 0, 0], [0.9, 0.1, 0]];
    const b = [[0, 1, 0], [0, 0.9, 0.1]];
    const scores = scoreRoutes([1, 0.05, 0], [{ name: 'b', examples: b }, { name: 'none', examples: [] }, { name: 'a', examples: a }]);
    expect(scores.map((s) => s.name)).toEqual(['a', 'b']);
    expect(scoreRoutes([0, 0, 1], [{ name: 'z', examples: [[1, 1, 0], [1, 1, 2]] }, { name: 'y', examples: [[1, 1, 0], [1, 1, 2]] }]).map((s) => s.name)).toEqual(['y', 'z']);
    expect(pickRoute(scores, scores[0].score)).toBe('a');
    expect(pickRoute(scores, scores[0].score + 1e-9)).toBeNull(); // under the threshold: the base model
    expect(pickRoute([], 0)).toBeNull();
  });

  it('mix weights: softmax(score/τ) over the top k reaching the threshold, summing to 1, best first', () => {
    fc.assert(fc.property(
      fc.array(fc.double({ min: -1, max: 1, noNaN: true }), { minLength: 1, maxLength: 8 }),
      fc.integer({ min: 1, max: 8 }), fc.double({ min: 0.01, max: 10, noNaN: true }),
      (raw, k, tau) => {
        const scores = raw.map((score, i) => ({ name: `a${i}`, score })).sort((x, y) => y.score - x.score);
        const mix = mixRoute(scores, k, tau, -1);
        expect(mix).toHaveLength(Math.min(k, scores.length));
        expect(mix.reduce((s, m) => s + m.weight, 0)).toBeCloseTo(1, 9);
        for (let i = 1; i < mix.length; i++) expect(mix[i].weight).toBeLessThanOrEqual(mix[i - 1].weight + 1e-12);
        expect(mixRoute(scores, k, tau, 2)).toEqual([]); // nothing reaches the threshold
      },
    ));
  });
});

describe('the in-repo routing set', () => {
  it('routes ≥ 90% of the held-out styled prompts to their adapter, with the committed examples and the engine\'s embeddings', async () => {
    const evalSet = readFileSync(EVAL_FILE, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { prompt: string; label: string | null });
    const examples = Object.fromEntries(STYLES.map((s) => [s.name, (JSON.parse(readFileSync(join(ADAPTERS_DIR, s.name, 'loraserve.json'), 'utf8')) as { examples: string[] }).examples]));
    const names = STYLES.map((s) => s.name);
    const texts = [...names.flatMap((n) => examples[n]), ...evalSet.map((e) => e.prompt)];
    const vecs = await embedAll(DEFAULT_MODEL_DIR, texts);
    const exampleVecs: Record<string, number[][]> = {};
    let at = 0;
    for (const n of names) { exampleVecs[n] = vecs.slice(at, at + examples[n].length); at += examples[n].length; }
    const figures = routingFigures({ examples, eval: evalSet }, exampleVecs, vecs.slice(at));
    console.log(`routing accuracy on the in-repo set: ${figures.accuracy.toFixed(3)} (${JSON.stringify(figures.perStyle)})`);
    expect(figures.accuracy).toBeGreaterThanOrEqual(0.9);
    const recorded = JSON.parse(readFileSync(join(import.meta.dirname, '../../docs/figures/routing.json'), 'utf8'));
    expect(figures.accuracy).toBeCloseTo(recorded.accuracy, 2); // the committed figure is this run's
  }, 120_000);
});
