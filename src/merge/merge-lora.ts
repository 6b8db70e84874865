// Pure merge math over typed arrays (PEFT Linear.get_delta_weight, DoRA merge; reference §1.5–1.7).
//   ΔW = s · B·A               A [r, in], B [out, r], W [out, in]
//   plain LoRA:  W' = W0 + ΔW
//   DoRA:        W' = (m / ‖W0 + ΔW‖_row) ⊙ (W0 + ΔW)      (norm over the input dim, per output row)

// out[o, :] += s · Σ_k B[o,k] · A[k, :]
export function addDelta(out: Float32Array | Float64Array, a: Float32Array, b: Float32Array, rank: number, rows: number, cols: number, scale: number): void {
  for (let o = 0; o < rows; o++) {
    const rowOff = o * cols;
    for (let k = 0; k < rank; k++) {
      const c = scale * b[o * rank + k];
      if (c === 0) continue;
      const aOff = k * cols;
      for (let i = 0; i < cols; i++) out[rowOff + i] += c * a[aOff + i];
    }
  }
}

// ‖W[o, :]‖₂ for every row
export function rowNorms(w: Float32Array, rows: number, cols: number): Float64Array {
  const n = new Float64Array(rows);
  for (let o = 0; o < rows; o++) {
    let s = 0;
    for (let i = 0; i < cols; i++) { const v = w[o * cols + i]; s += v * v; }
    n[o] = Math.sqrt(s);
  }
  return n;
}

export interface LoraFactors {
  a: Float32Array;
  b: Float32Array;
  rank: number;
  scale: number;
  magnitude: Float32Array | null;
}

// W0 + ΔW, with DoRA's magnitude scaling when `magnitude` is set.
export function mergeLora(w0: Float32Array, f: LoraFactors, rows: number, cols: number): Float32Array {
  const w = Float32Array.from(w0);
  addDelta(w, f.a, f.b, f.rank, rows, cols, f.scale);
  if (f.magnitude) {
    const n = rowNorms(w, rows, cols);
    for (let o = 0; o < rows; o++) {
      const g = f.magnitude[o] / n[o];
      for (let i = 0; i < cols; i++) w[o * cols + i] *= g;
    }
  }
  return w;
}

// W0 + ΔW for a merged-only adapter's target (ΔW stored whole, already scaled).
export function mergeDelta(w0: Float32Array, delta: Float32Array): Float32Array {
  if (delta.length !== w0.length) throw new Error(`mergeDelta: ΔW has ${delta.length} values, W0 ${w0.length}`);
  const w = Float32Array.from(w0);
  for (let i = 0; i < w.length; i++) w[i] += delta[i];
  return w;
}

// DoRA's per-output multiplier for the unmerged path: g = m / ‖W0 + ΔW‖_row, so that
// y = g ⊙ (x·W0ᵀ + s·(x·Aᵀ)·Bᵀ).
export function doraScale(w0: Float32Array, f: LoraFactors, rows: number, cols: number): Float32Array {
  const w = Float32Array.from(w0);
  addDelta(w, f.a, f.b, f.rank, rows, cols, f.scale);
  const n = rowNorms(w, rows, cols);
  return Float32Array.from(f.magnitude!, (m, o) => m / n[o]);
}

// The same merge from the serving layout (lora-arena.ts): a = A [r, in], b = s·B [out, r],
// g = DoRA multiplier [out] or null:  W'[o, i] = g[o] · (W0[o, i] + Σ_k b[o, k] · a[k, i])
export function mergePrepared(w0: Float32Array, t: { a: Float32Array; b: Float32Array; rank: number; g: Float32Array | null }, rows: number, cols: number): Float32Array {
  const w = Float32Array.from(w0);
  const r = t.rank;
  for (let o = 0; o < rows; o++) {
    const off = o * cols;
    for (let k = 0; k < r; k++) {
      const c = t.b[o * r + k];
      if (c === 0) continue;
      const ak = k * cols;
      for (let i = 0; i < cols; i++) w[off + i] += c * t.a[ak + i];
    }
    if (t.g) { const g = t.g[o]; for (let i = 0; i < cols; i++) w[off + i] *= g; }
  }
  return w;
}
