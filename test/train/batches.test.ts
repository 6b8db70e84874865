// Batches: the shifted-label convention, packing, shuffling and the eval split, as properties.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { batchesInEpoch, epochBatches, evalBatches, makeBatch, packRows, shuffled, splitEval, totalSteps } from '../../src/train/batches.ts';
import type { Batch, BatchOptions } from '../../src/train/batches.ts';
import type { Example } from '../../src/train/examples.ts';

// An example as examples.ts makes them: lossMask[0] = 0, ids in a small vocabulary.
const example = (maxLen: number): fc.Arbitrary<Example> => fc.integer({ min: 1, max: maxLen }).chain((n) =>
  fc.tuple(fc.array(fc.integer({ min: 1, max: 500 }), { minLength: n, maxLength: n }), fc.array(fc.integer({ min: 0, max: 1 }), { minLength: n, maxLength: n }))
    .map(([ids, mask]) => ({ ids, lossMask: mask.map((m, i) => (i === 0 ? 0 : m)) })));

// The (input, target) pairs a batch trains: [previous token, target token] per weighted position.
function trainedPairs(b: Batch): string[] {
  const out: string[] = [];
  for (let i = 0; i < b.B * b.T; i++) if (b.lossWeights[i] === 1) out.push(`${b.inputIds[i]}>${b.labels[i]}`);
  return out;
}
function examplePairs(ex: Example): string[] {
  return ex.ids.flatMap((id, i) => (i > 0 && ex.lossMask[i] === 1 ? [`${ex.ids[i - 1]}>${id}`] : []));
}
const sorted = (a: string[]): string[] => a.slice().sort();

describe('makeBatch', () => {
  it('shifts labels: labels[t] = ids[t+1], weight = lossMask[t+1], last position and padding weigh 0', () => {
    const b = makeBatch([{ ids: [1, 10, 11, 12], lossMask: [0, 0, 1, 1] }, { ids: [1, 20], lossMask: [0, 1] }], 5);
    expect([b.B, b.T, b.tokens, b.targets]).toEqual([2, 5, 6, 3]);
    expect([...b.inputIds]).toEqual([1n, 10n, 11n, 12n, 0n, 1n, 20n, 0n, 0n, 0n]);
    expect([...b.labels]).toEqual([10n, 11n, 12n, 0n, 0n, 20n, 0n, 0n, 0n, 0n]);
    expect([...b.lossWeights]).toEqual([0, 1, 1, 0, 0, 1, 0, 0, 0, 0]);
  });

  it('refuses a row longer than T', () => {
    expect(() => makeBatch([{ ids: [1, 2, 3], lossMask: [0, 1, 1] }], 2)).toThrow('a row of 3 tokens does not fit in a batch of T = 2');
  });
});

describe('properties', () => {
  it('shuffling is a permutation, and the same seed and epoch give the same order', () => {
    fc.assert(fc.property(fc.array(fc.integer()), fc.nat(1000), fc.nat(50), (items, seed, epoch) => {
      const a = shuffled(items, seed, epoch);
      expect(a.slice().sort((x, y) => x - y)).toEqual(items.slice().sort((x, y) => x - y));
      expect(shuffled(items, seed, epoch)).toEqual(a);
    }));
  });

  it('different epochs give different orders (for enough items)', () => {
    const items = Array.from({ length: 50 }, (_, i) => i);
    expect(shuffled(items, 0, 0)).not.toEqual(shuffled(items, 0, 1));
    expect(shuffled(items, 0, 0)).not.toEqual(shuffled(items, 1, 0));
  });

  it('packing keeps every example whole, in order, within seq-len, and every target token', () => {
    fc.assert(fc.property(fc.integer({ min: 2, max: 40 }).chain((T) => fc.tuple(fc.constant(T), fc.array(example(T), { maxLength: 30 }))), ([T, examples]) => {
      const rows = packRows(examples, T);
      for (const r of rows) expect(r.ids.length).toBeLessThanOrEqual(T);
      expect(rows.flatMap((r) => r.ids)).toEqual(examples.flatMap((e) => e.ids));
      const batch = makeBatch(rows, T);
      expect(sorted(trainedPairs(batch))).toEqual(sorted(examples.flatMap(examplePairs)));
      expect(batch.targets).toBe(examples.reduce((s, e) => s + e.lossMask.reduce((a, m) => a + m, 0), 0));
    }));
  });

  it('an epoch\'s batches hold every example\'s targets once, packed or not', () => {
    fc.assert(fc.property(fc.array(example(16), { minLength: 1, maxLength: 25 }), fc.integer({ min: 1, max: 6 }), fc.boolean(), fc.nat(100), (examples, batchSize, packing, seed) => {
      const opts: BatchOptions = { batchSize, seqLen: 16, packing, seed };
      const batches = [...epochBatches(examples, opts, 0)];
      expect(batches.length).toBe(batchesInEpoch(examples, opts, 0));
      for (const b of batches) {
        expect(b.B).toBeLessThanOrEqual(batchSize);
        expect(b.T).toBeLessThanOrEqual(16);
        expect(b.inputIds.length).toBe(b.B * b.T);
      }
      expect(sorted(batches.flatMap(trainedPairs))).toEqual(sorted(examples.flatMap(examplePairs)));
      // resuming at batch k yields the same batches as the tail of the epoch
      const k = Math.floor(batches.length / 2);
      expect([...epochBatches(examples, opts, 0, k)].map((b) => [...b.inputIds])).toEqual(batches.slice(k).map((b) => [...b.inputIds]));
    }));
  });

  it('the eval split is disjoint, covers everything, keeps file order and depends only on the seed', () => {
    fc.assert(fc.property(fc.array(fc.integer(), { maxLength: 200 }), fc.double({ min: 0, max: 0.5, noNaN: true }), fc.nat(1000), (raw, fraction, seed) => {
      const items = raw.map((v, i) => ({ v, i }));
      const { train, eval: held } = splitEval(items, fraction, seed);
      expect(train.length + held.length).toBe(items.length);
      expect([...train, ...held].map((x) => x.i).sort((a, b) => a - b)).toEqual(items.map((x) => x.i));
      for (const part of [train, held]) expect(part.map((x) => x.i)).toEqual(part.map((x) => x.i).slice().sort((a, b) => a - b));
      if (items.length >= 2 && fraction > 0) {
        expect(held.length).toBeGreaterThanOrEqual(1);
        expect(train.length).toBeGreaterThanOrEqual(1);
      } else expect(held).toEqual([]);
      expect(splitEval(items, fraction, seed)).toEqual({ train, eval: held });
    }));
  });
});

describe('eval batches and step counts', () => {
  const examples = Array.from({ length: 10 }, (_, i) => ({ ids: Array.from({ length: 3 + i }, (_, j) => j + 1), lossMask: Array.from({ length: 3 + i }, (_, j) => (j ? 1 : 0)) }));

  it('eval batches keep file order, padded to their longest row', () => {
    const b = [...evalBatches(examples, 4)];
    expect(b.map((x) => [x.B, x.T])).toEqual([[4, 6], [4, 10], [2, 12]]);
  });

  it('totalSteps counts epochs of batches over grad-accum, or takes --steps', () => {
    const opts: BatchOptions = { batchSize: 3, seqLen: 16, packing: false, seed: 0 };
    expect(totalSteps(examples, opts, { kind: 'steps', steps: 7 }, 2)).toBe(7);
    expect(totalSteps(examples, opts, { kind: 'epochs', epochs: 1 }, 1)).toBe(4);
    expect(totalSteps(examples, opts, { kind: 'epochs', epochs: 2 }, 2)).toBe(4);
    expect(totalSteps(examples, opts, { kind: 'epochs', epochs: 1.5 }, 1)).toBe(6);
  });
});
