// Per-sequence KV cache in JS memory, token-major so that the first P rows of a layer are one
// contiguous prefix that can be fed to the graph without a copy.
//   keys[l], values[l]: [capacity, Hkv·d] float32; rows [0, length) are valid.
export class SequenceKv {
  readonly numLayers: number;
  readonly kvDim: number;
  capacity: number;
  length = 0;
  keys: Float32Array[];
  values: Float32Array[];

  constructor(numLayers: number, kvDim: number, capacity: number) {
    this.numLayers = numLayers;
    this.kvDim = kvDim;
    this.capacity = Math.max(1, capacity);
    this.keys = Array.from({ length: numLayers }, () => new Float32Array(this.capacity * kvDim));
    this.values = Array.from({ length: numLayers }, () => new Float32Array(this.capacity * kvDim));
  }

  get bytes(): number {
    return 2 * this.numLayers * this.capacity * this.kvDim * 4;
  }

  // Make room for `extra` more tokens; grows by doubling so appends are amortised O(1).
  reserve(extra: number): void {
    const need = this.length + extra;
    if (need <= this.capacity) return;
    let cap = this.capacity;
    while (cap < need) cap *= 2;
    const grow = (a: Float32Array): Float32Array => {
      const b = new Float32Array(cap * this.kvDim);
      b.set(a.subarray(0, this.length * this.kvDim));
      return b;
    };
    this.keys = this.keys.map(grow);
    this.values = this.values.map(grow);
    this.capacity = cap;
  }

  // Copy `count` rows (row stride kvDim) from a step's output into positions [length, length+count).
  append(layer: number, newKeys: Float32Array, newValues: Float32Array, srcRow: number, count: number): void {
    const dst = this.length * this.kvDim;
    const src = srcRow * this.kvDim;
    const n = count * this.kvDim;
    this.keys[layer].set(newKeys.subarray(src, src + n), dst);
    this.values[layer].set(newValues.subarray(src, src + n), dst);
  }

  // Drop rows past `length` (used when a step's tokens are accepted only partly).
  truncate(length: number): void {
    this.length = Math.min(this.length, length);
  }
}
