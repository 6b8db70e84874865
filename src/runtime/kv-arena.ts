// The KV cache of running sequences, one row per sequence, in the layout the attention reads
// directly (see llama-graph.ts), so a step over rows [lo, hi) feeds views of these arrays without
// copying:
//   keys[l], values[l]: [rows, Hkv, capacity, d]
// Position-major, so a new token's key is one contiguous run of d floats per head. (Until
// 2026-12-04 keys were stored transposed, [rows, Hkv, d, capacity], for a plain MatMul: writing one
// token then touched a cache line per float: 5.6 ms against 1.0 ms now, in isolation, for one token
// of 32 rows over the 110M model's 12 layers.)
// Row r holds positions [0, lengths[r]); the attention bias masks the rest. The capacity is fixed
// (lanes.ts keeps one arena per capacity class); rows grow geometrically, a freed row is reused.
//
// A step reads a row's whole capacity, so the first step over a row that was never touched faults
// in every page of it at once (~2.7 ms per MB on this VM: a 2048-position row of the 110M model is
// 150 MB, a 400 ms stall for every stream in the step). warmRow() touches a row's pages ahead of
// use, in slices the scheduler fits between steps; a row stays warm for the arena's lifetime.
export class KvArena {
  rows = 0;
  lengths: number[] = [];
  keys: Float32Array[] = [];
  values: Float32Array[] = [];
  private warmFloats: number[] = []; // per row: floats touched, over its 2·numLayers regions in order

  constructor(readonly numLayers: number, readonly numKvHeads: number, readonly headDim: number, readonly capacity: number) {}

  get bytes(): number {
    return 2 * this.numLayers * this.rows * this.rowFloats * 4;
  }

  get rowFloats(): number {
    return this.numKvHeads * this.headDim * this.capacity;
  }

  // At least `rows` rows. Rows are the outer dimension, so growing copies one prefix per array.
  ensure(rows: number): void {
    if (rows <= this.rows) return;
    const R = Math.max(rows, Math.ceil(this.rows * 1.5));
    const size = R * this.rowFloats;
    const grow = (old: Float32Array | undefined): Float32Array => {
      const next = new Float32Array(size);
      if (old) next.set(old);
      return next;
    };
    this.keys = Array.from({ length: this.numLayers }, (_, l) => grow(this.keys[l]));
    this.values = Array.from({ length: this.numLayers }, (_, l) => grow(this.values[l]));
    while (this.lengths.length < R) this.lengths.push(0);
    this.warmFloats = Array.from({ length: R }, (_, r) => (r < this.rows ? this.regionsFloats : 0)); // old rows: written by the copy
    this.rows = R;
  }

  // Copies row `row`'s valid positions into `dst` (a larger-capacity arena) at `dstRow`.
  copyRow(row: number, dst: KvArena, dstRow: number): void {
    const { numKvHeads: Hkv, headDim: d, capacity: C } = this;
    const n = this.lengths[row];
    const D = dst.capacity;
    for (let l = 0; l < this.numLayers; l++) {
      for (let g = 0; g < Hkv; g++) {
        const src = (row * Hkv + g) * C * d;
        const to = (dstRow * Hkv + g) * D * d;
        dst.keys[l].set(this.keys[l].subarray(src, src + n * d), to);
        dst.values[l].set(this.values[l].subarray(src, src + n * d), to);
      }
    }
    dst.lengths[dstRow] = n;
  }

  // Write `count` new token rows ([Hkv·d] each, token-major, from row `srcRow` of a step output)
  // at positions [lengths[row], lengths[row] + count). Call ensure() first.
  write(layer: number, row: number, newKeys: Float32Array, newValues: Float32Array, srcRow: number, count: number): void {
    const { numKvHeads: Hkv, headDim: d, capacity: C } = this;
    const k = this.keys[layer];
    const v = this.values[layer];
    const kvDim = Hkv * d;
    const pos0 = this.lengths[row];
    for (let i = 0; i < count; i++) {
      const src = (srcRow + i) * kvDim;
      for (let g = 0; g < Hkv; g++) {
        const from = src + g * d;
        const to = ((row * Hkv + g) * C + pos0 + i) * d;
        for (let j = 0; j < d; j++) {
          k[to + j] = newKeys[from + j];
          v[to + j] = newValues[from + j];
        }
      }
    }
  }

  private get regionsFloats(): number {
    return 2 * this.numLayers * this.rowFloats;
  }

  isWarm(row: number): boolean {
    return row < this.rows && this.warmFloats[row] >= this.regionsFloats;
  }

  // Touch the row's pages (one float per 4 KB page, rewritten with its own value, so the contents
  // stay as they are) until it is warm or `deadline` (performance.now()) passes; true when warm.
  // Call ensure() first.
  warmRow(row: number, deadline = Infinity): boolean {
    const F = this.rowFloats;
    const PAGE = 1024;
    let done = this.warmFloats[row];
    while (done < this.regionsFloats) {
      const region = Math.floor(done / F);
      const a = region < this.numLayers ? this.keys[region] : this.values[region - this.numLayers];
      const base = row * F;
      const end = Math.min(F, done - region * F + 64 * PAGE);
      for (let i = done - region * F; i < end; i += PAGE) a[base + i] = a[base + i];
      done = region * F + end;
      if (performance.now() >= deadline) break;
    }
    this.warmFloats[row] = done;
    return done >= this.regionsFloats;
  }

  release(row: number): void {
    this.lengths[row] = 0;
  }
}
