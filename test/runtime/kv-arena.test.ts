// KV arena rows: warming touches pages without changing what a row holds, resumes where it
// stopped, and survives the arena growing.
import { describe, expect, it } from 'vitest';
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
    const before = [...kv.keysT, ...kv.values].map((a) => a.slice(kv.rowFloats, 2 * kv.rowFloats));
    expect(kv.isWarm(1)).toBe(false);
    let calls = 0;
    while (!kv.warmRow(1, 0)) calls++; // a deadline already past: one slice per call
    expect(calls).toBeGreaterThan(4);
    expect(kv.isWarm(1)).toBe(true);
    expect(kv.isWarm(0)).toBe(false);
    expect(kv.warmRow(1, 0)).toBe(true); // nothing left to do
    const after = [...kv.keysT, ...kv.values].map((a) => a.slice(kv.rowFloats, 2 * kv.rowFloats));
    after.forEach((a, i) => expect(Buffer.from(a.buffer).equals(Buffer.from(before[i].buffer))).toBe(true));
    expect(kv.warmRow(2)).toBe(true); // no deadline: all at once
  });

  it('growing the arena keeps the old rows (warm, copied) and adds cold ones', () => {
    const kv = new KvArena(1, 1, 8, 128);
    kv.ensure(2);
    filled(kv, 0, 10, 1);
    kv.warmRow(0);
    const row0 = kv.keysT[0].slice(0, kv.rowFloats);
    kv.ensure(5);
    expect(kv.rows).toBeGreaterThanOrEqual(5);
    expect(kv.isWarm(0)).toBe(true);
    expect(kv.isWarm(1)).toBe(true); // its zeros were copied too
    expect(kv.isWarm(4)).toBe(false);
    expect(Buffer.from(kv.keysT[0].slice(0, kv.rowFloats).buffer).equals(Buffer.from(row0.buffer))).toBe(true);
  });
});
