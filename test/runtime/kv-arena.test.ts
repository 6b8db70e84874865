// KV arena rows: warming touches pages without changing what a row holds, resumes where it
// stopped, and survives the arena growing.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { KvArena } from '../../src/runtime/kv-arena.ts';

function filled(kv: KvArena, row: number, count: number, salt: number): void {
  const kvDim = kv.numKvHeads * kv.headDim;
  for (let l = 0; l < kv.numLayers; l++) {
    const k = Float32Array.from({ length: count * kvDim }, (_, i) => Math.sin(i + salt + l));
    const v = Float32Array.from({ length: count * kvDim }, (_, i) => Math.cos(i + salt + l));
    kv.write(l, row, k, v, 0, count);
  }
  kv.lengths[row] += count;
}

describe('KV arena warming', () => {
  it('a row becomes warm, slice by slice, and keeps its contents', () => {
    const kv = new KvArena(2, 4, 64, 2048); // 2 MB per layer and row, K and V
    kv.ensure(3);
    filled(kv, 1, 100, 7);
    const before = [...kv.keys, ...kv.values].map((a) => a.slice(kv.rowFloats, 2 * kv.rowFloats));
    expect(kv.isWarm(1)).toBe(false);
    let calls = 0;
    while (!kv.warmRow(1, 0)) calls++; // a deadline already past: one slice per call
    expect(calls).toBeGreaterThan(4);
    expect(kv.isWarm(1)).toBe(true);
    expect(kv.isWarm(0)).toBe(false);
    expect(kv.warmRow(1, 0)).toBe(true); // nothing left to do
    const after = [...kv.keys, ...kv.values].map((a) => a.slice(kv.rowFloats, 2 * kv.rowFloats));
    after.forEach((a, i) => expect(Buffer.from(a.buffer).equals(Buffer.from(before[i].buffer))).toBe(true));
    expect(kv.warmRow(2)).toBe(true); // no deadline: all at once
  });

  it('growing the arena keeps the old rows (warm, copied) and adds cold ones', () => {
    const kv = new KvArena(1, 1, 8, 128);
    kv.ensure(2);
    filled(kv, 0, 10, 1);
    kv.warmRow(0);
    const row0 = kv.keys[0].slice(0, kv.rowFloats);
    kv.ensure(5);
    expect(kv.rows).toBeGreaterThanOrEqual(5);
    expect(kv.isWarm(0)).toBe(true);
    expect(kv.isWarm(1)).toBe(true); // its zeros were copied too
    expect(kv.isWarm(4)).toBe(false);
    expect(Buffer.from(kv.keys[0].slice(0, kv.rowFloats).buffer).equals(Buffer.from(row0.buffer))).toBe(true);
  });
});

// The layout the graph reads (llama-graph.ts: past_key and past_value [B, Hkv, P, d]): token t's
// key for kv head g of row r sits at ((r·Hkv + g)·capacity + t)·d, for keys and values alike,
// after writes in chunks of any size and after a move into a larger arena.
describe('KV arena layout', () => {
  it('write and copyRow put each token at [row, head, position, :]', () => {
    fc.assert(fc.property(
      fc.record({ layers: fc.integer({ min: 1, max: 2 }), heads: fc.integer({ min: 1, max: 3 }), d: fc.integer({ min: 1, max: 5 }), capacity: fc.integer({ min: 4, max: 12 }), rows: fc.integer({ min: 1, max: 3 }) }),
      fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 4 }),
      fc.nat(),
      ({ layers, heads, d, capacity, rows }, chunks, pick) => {
        const kv = new KvArena(layers, heads, d, capacity);
        kv.ensure(rows);
        const row = pick % rows;
        const kvDim = heads * d;
        const keyOf = (l: number, t: number, g: number, j: number) => 1000 * l + 100 * t + 10 * g + j + 0.5;
        let t0 = 0;
        for (const n of chunks) {
          const count = Math.min(n, capacity - t0);
          if (count <= 0) break;
          for (let l = 0; l < layers; l++) {
            // a step output of 2 + count token rows; this row's tokens start at row 2
            const k = new Float32Array((2 + count) * kvDim);
            const v = new Float32Array((2 + count) * kvDim);
            for (let i = 0; i < count; i++) for (let g = 0; g < heads; g++) for (let j = 0; j < d; j++) {
              k[(2 + i) * kvDim + g * d + j] = keyOf(l, t0 + i, g, j);
              v[(2 + i) * kvDim + g * d + j] = -keyOf(l, t0 + i, g, j);
            }
            kv.write(l, row, k, v, 2, count);
          }
          kv.lengths[row] += count;
          t0 += count;
        }
        const bigger = new KvArena(layers, heads, d, capacity + 3);
        bigger.ensure(rows + 1);
        const dstRow = (row + 1) % (rows + 1); // another row of the bigger arena
        kv.copyRow(row, bigger, dstRow);
        expect(bigger.lengths[dstRow]).toBe(t0);
        for (const [a, r] of [[kv, row], [bigger, dstRow]] as const) {
          let nonzero = 0;
          for (let l = 0; l < layers; l++) {
            for (let t = 0; t < t0; t++) for (let g = 0; g < heads; g++) for (let j = 0; j < d; j++) {
              const at = ((r * heads + g) * a.capacity + t) * d + j;
              expect(a.keys[l][at]).toBe(keyOf(l, t, g, j));
              expect(a.values[l][at]).toBe(-keyOf(l, t, g, j));
            }
            for (const arr of [a.keys[l], a.values[l]]) for (const x of arr) if (x !== 0) nonzero++;
          }
          expect(nonzero).toBe(2 * layers * t0 * heads * d); // nothing written anywhere else
        }
      },
    ), { numRuns: 60 });
  });
});
