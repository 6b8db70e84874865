// Per-sequence KV cache in JS memory, laid out the way the attention MatMuls read it, so a step
// feeds it in place (zero-copy) and nothing is concatenated or transposed per step:
//   keysT[l]:  [Hkv, d, capacity]  (keys transposed: Kᵀ per kv head)
//   values[l]: [Hkv, capacity, d]
// Positions [0, length) are valid; the rest is masked by the attention bias.
export class SequenceKv {
  capacity: number;
  length = 0;
  keysT: Float32Array[];
  values: Float32Array[];

  constructor(readonly numLayers: number, readonly numKvHeads: number, readonly headDim: number, capacity: number) {
    this.capacity = Math.max(1, capacity);
    const size = this.capacity * numKvHeads * headDim;
    this.keysT = Array.from({ length: numLayers }, () => new Float32Array(size));
    this.values = Array.from({ length: numLayers }, () => new Float32Array(size));
  }

  get kvDim(): number {
    return this.numKvHeads * this.headDim;
  }

  get bytes(): number {
    return 2 * this.numLayers * this.capacity * this.kvDim * 4;
  }

  // Room for `extra` more tokens. Grows by 1.25× (at least 64 tokens): amortised O(1) per token,
  // and a step reads at most ~25% past the valid length.
  reserve(extra: number): void {
    const need = this.length + extra;
    if (need <= this.capacity) return;
    const cap = Math.max(need, Math.ceil(this.capacity * 1.25), this.capacity + 64);
    const { numKvHeads: Hkv, headDim: d, length: n } = this;
    this.keysT = this.keysT.map((old) => {
      const next = new Float32Array(cap * Hkv * d);
      for (let row = 0; row < Hkv * d; row++) next.set(old.subarray(row * this.capacity, row * this.capacity + n), row * cap);
      return next;
    });
    this.values = this.values.map((old) => {
      const next = new Float32Array(cap * Hkv * d);
      for (let g = 0; g < Hkv; g++) next.set(old.subarray(g * this.capacity * d, (g * this.capacity + n) * d), g * cap * d);
      return next;
    });
    this.capacity = cap;
  }

  // Write `count` new token rows (each [Hkv·d], token-major, starting at row `srcRow` of a step
  // output) into positions [length, length + count). Call reserve() first.
  write(layer: number, newKeys: Float32Array, newValues: Float32Array, srcRow: number, count: number): void {
    const { numKvHeads: Hkv, headDim: d, capacity: C, length: pos0 } = this;
    const kT = this.keysT[layer];
    const v = this.values[layer];
    const kvDim = Hkv * d;
    for (let i = 0; i < count; i++) {
      const src = (srcRow + i) * kvDim;
      const pos = pos0 + i;
      for (let g = 0; g < Hkv; g++) {
        const kBase = g * d * C + pos;
        for (let j = 0; j < d; j++) kT[kBase + j * C] = newKeys[src + g * d + j];
        v.set(newValues.subarray(src + g * d, src + (g + 1) * d), (g * C + pos) * d);
      }
    }
  }

  // Copy the valid prefix into a [Hkv, d, P] / [Hkv, P, d] slot of a batch staging buffer.
  copyPrefixTo(layer: number, keysT: Float32Array, values: Float32Array, offset: number, P: number): void {
    const { numKvHeads: Hkv, headDim: d, capacity: C, length: n } = this;
    const kT = this.keysT[layer];
    const v = this.values[layer];
    for (let row = 0; row < Hkv * d; row++) keysT.set(kT.subarray(row * C, row * C + n), offset + row * P);
    for (let g = 0; g < Hkv; g++) values.set(v.subarray(g * C * d, (g * C + n) * d), offset + g * P * d);
  }
}
