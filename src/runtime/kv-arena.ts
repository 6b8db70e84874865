// The KV cache of every running sequence, one row per sequence, in the layouts the attention
// MatMuls read directly (see llama-graph.ts), so a step over rows [lo, hi) feeds views of these
// arrays without copying:
//   keysT[l]:  [rows, Hkv, d, capacity]   (keys transposed)
//   values[l]: [rows, Hkv, capacity, d]
// Row r holds positions [0, lengths[r]); the attention bias masks the rest. Rows and capacity
// grow geometrically (re-laying out what is there); a freed row is reused by the next sequence.
export class KvArena {
  rows = 0;
  capacity = 0;
  lengths: number[] = [];
  keysT: Float32Array[] = [];
  values: Float32Array[] = [];

  constructor(readonly numLayers: number, readonly numKvHeads: number, readonly headDim: number) {}

  get bytes(): number {
    return 2 * this.numLayers * this.rows * this.capacity * this.numKvHeads * this.headDim * 4;
  }

  get rowFloats(): number {
    return this.numKvHeads * this.headDim * this.capacity;
  }

  // At least `rows` rows and room for `capacity` positions in each.
  ensure(rows: number, capacity: number): void {
    if (rows <= this.rows && capacity <= this.capacity) return;
    const R = rows > this.rows ? Math.max(rows, Math.ceil(this.rows * 1.5)) : this.rows;
    const C = capacity > this.capacity ? roundUp(Math.max(capacity, Math.ceil(this.capacity * 1.25), this.capacity + 64), 16) : this.capacity;
    const { numKvHeads: Hkv, headDim: d } = this;
    const oldC = this.capacity;
    this.keysT = this.keysT.length ? this.keysT : Array.from({ length: this.numLayers }, () => new Float32Array(0));
    this.values = this.values.length ? this.values : Array.from({ length: this.numLayers }, () => new Float32Array(0));
    for (let l = 0; l < this.numLayers; l++) {
      const k = new Float32Array(R * Hkv * d * C);
      const v = new Float32Array(R * Hkv * d * C);
      for (let r = 0; r < this.rows; r++) {
        const n = this.lengths[r];
        if (n === 0) continue;
        for (let row = 0; row < Hkv * d; row++) {
          const src = (r * Hkv * d + row) * oldC;
          k.set(this.keysT[l].subarray(src, src + n), (r * Hkv * d + row) * C);
        }
        for (let g = 0; g < Hkv; g++) {
          const src = (r * Hkv + g) * oldC * d;
          v.set(this.values[l].subarray(src, src + n * d), (r * Hkv + g) * C * d);
        }
      }
      this.keysT[l] = k;
      this.values[l] = v;
    }
    while (this.lengths.length < R) this.lengths.push(0);
    this.rows = R;
    this.capacity = C;
  }

  // Write `count` new token rows ([Hkv·d] each, token-major, from row `srcRow` of a step output)
  // at positions [lengths[row], lengths[row] + count). Call ensure() first.
  write(layer: number, row: number, newKeys: Float32Array, newValues: Float32Array, srcRow: number, count: number): void {
    const { numKvHeads: Hkv, headDim: d, capacity: C } = this;
    const kT = this.keysT[layer];
    const v = this.values[layer];
    const kvDim = Hkv * d;
    const pos0 = this.lengths[row];
    for (let i = 0; i < count; i++) {
      const src = (srcRow + i) * kvDim;
      const pos = pos0 + i;
      for (let g = 0; g < Hkv; g++) {
        const kBase = (row * Hkv + g) * d * C + pos;
        for (let j = 0; j < d; j++) kT[kBase + j * C] = newKeys[src + g * d + j];
        v.set(newValues.subarray(src + g * d, src + (g + 1) * d), ((row * Hkv + g) * C + pos) * d);
      }
    }
  }

  release(row: number): void {
    this.lengths[row] = 0;
  }
}

function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}
