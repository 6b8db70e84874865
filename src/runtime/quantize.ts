// Block-wise quantization of a weight matrix W [N, K] (out, in: Hugging Face's layout) for
// onnxruntime's MatMulNBits (com.microsoft; onnxruntime-node notes §1), issue 18:
//   packed       uint8 [N, ⌈K/block⌉, block·bits/8]   q, low bits first (element 2j in the low nibble);
//                a last block past K is padded with the zero point (it dequantizes to 0)
//   scales       float [N · ⌈K/block⌉]
//   zero_points  uint8, packed like q, [N · ⌈⌈K/block⌉·bits/8⌉]; absent when symmetric (then the
//                kernel's default 2^(bits-1))
//   dequant(W)[n, k] = (q[n, k] − zp[n, k/block]) · scale[n, k/block]
// Symmetric: scale = max|w| / (2^(bits-1) − 1), zp = 2^(bits-1), so q − zp ∈ [−(2^(bits-1) − 1), 2^(bits-1) − 1]
// and |w − dequant(w)| ≤ scale/2. Asymmetric: the block's [min(0, lo), max(0, hi)] over 2^bits − 1
// steps, zp = round(−lo/scale): |w − dequant(w)| ≤ scale (the zero point's rounding may clip an end).
// Pure functions over typed arrays; the graph builder (llama-graph.ts) puts their results in MatMulNBits.

export type QuantBits = 4 | 8;

export interface QuantScheme {
  bits: QuantBits;
  block: number;        // a power of two ≥ 16 dividing K
  symmetric: boolean;
}

export interface QuantizedMatrix {
  n: number;
  k: number;
  scheme: QuantScheme;
  packed: Uint8Array;
  scales: Float32Array;
  zeroPoints: Uint8Array | null;
}

export const QUANT_BLOCKS = [16, 32, 64, 128, 256] as const;

// Why a scheme cannot quantize a K-wide matrix, or null. K need not be a multiple of the block
// (the last block is padded), but a block wider than K would be mostly padding.
export function schemeProblem(s: QuantScheme, k: number): string | null {
  if (s.bits !== 4 && s.bits !== 8) return `bits must be 4 or 8, got ${s.bits}`;
  if (!(QUANT_BLOCKS as readonly number[]).includes(s.block)) return `the block size must be one of ${QUANT_BLOCKS.join(', ')}, got ${s.block}`;
  if (s.block > k) return `the block size ${s.block} is wider than the input dimension ${k}`;
  return null;
}

export const blocksOf = (k: number, block: number): number => Math.ceil(k / block);

export function quantizeMatrix(w: Float32Array, n: number, k: number, scheme: QuantScheme): QuantizedMatrix {
  const problem = schemeProblem(scheme, k);
  if (problem) throw new Error(`quantize: ${problem}`);
  if (w.length !== n * k) throw new Error(`quantize: ${w.length} values for [${n}, ${k}]`);
  const { bits, block, symmetric } = scheme;
  const blocks = blocksOf(k, block);
  const levels = (1 << bits) - 1;
  const half = 1 << (bits - 1);
  const bytesPerBlock = (block * bits) / 8;
  const packed = new Uint8Array(n * blocks * bytesPerBlock);
  const scales = new Float32Array(n * blocks);
  const zpRowBytes = Math.ceil((blocks * bits) / 8);
  const zeroPoints = symmetric ? null : new Uint8Array(n * zpRowBytes);
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < blocks; c++) {
      const base = r * k + c * block;
      const width = Math.min(block, k - c * block); // the last block may be short: padded
      let lo = 0;
      let hi = 0;
      let maxAbs = 0;
      for (let i = 0; i < width; i++) {
        const v = w[base + i];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
        const a = Math.abs(v);
        if (a > maxAbs) maxAbs = a;
      }
      let scale: number;
      let zp: number;
      if (symmetric) {
        scale = maxAbs / (half - 1);
        zp = half;
      } else {
        scale = (hi - lo) / levels;
        zp = scale > 0 ? Math.min(levels, Math.max(0, Math.round(-lo / scale))) : half;
      }
      if (scale === 0) scale = 1; // an all-zero block: any scale
      if (!Number.isFinite(scale)) throw new Error(`quantize: row ${r} block ${c} holds a non-finite value`);
      const s32 = Math.fround(scale);
      scales[r * blocks + c] = s32;
      if (zeroPoints) setPacked(zeroPoints, r * zpRowBytes * (8 / bits) + c, zp, bits);
      const out = (r * blocks + c) * bytesPerBlock * (8 / bits);
      for (let i = 0; i < block; i++) {
        const q = i < width ? Math.min(levels, Math.max(0, Math.round(w[base + i] / s32) + zp)) : zp;
        setPacked(packed, out + i, q, bits);
      }
    }
  }
  return { n, k, scheme, packed, scales, zeroPoints };
}

// quantizeMatrix once per weight array and scheme: the served graph's two bodies and a merge's
// error check (requantizationError) share the result. The array must not change afterwards.
const quantized = new WeakMap<Float32Array, Map<string, QuantizedMatrix>>();
export function quantizeOnce(w: Float32Array, n: number, k: number, scheme: QuantScheme): QuantizedMatrix {
  const key = `${scheme.bits}.${scheme.block}.${scheme.symmetric}`;
  let byScheme = quantized.get(w);
  if (!byScheme) quantized.set(w, (byScheme = new Map()));
  let q = byScheme.get(key);
  if (!q) byScheme.set(key, (q = quantizeMatrix(w, n, k, scheme)));
  return q;
}

// The matrices stacked by rows ([ΣN, K]; same K and scheme): rows are quantized on their own
// (blocks run along K, zero points are padded to whole bytes per row), so this is what quantizing
// the stacked float matrix would give. Once per list of matrices (keyed by the first), so the
// served graph's two bodies share one array.
const stacked = new WeakMap<QuantizedMatrix, QuantizedMatrix>();

export function stackRows(qs: QuantizedMatrix[]): QuantizedMatrix {
  const hit = stacked.get(qs[0]);
  if (hit && hit.n === qs.reduce((a, q) => a + q.n, 0)) return hit;
  const { k, scheme } = qs[0];
  for (const q of qs) {
    if (q.k !== k || q.scheme.bits !== scheme.bits || q.scheme.block !== scheme.block || q.scheme.symmetric !== scheme.symmetric) {
      throw new Error('stackRows: the matrices differ in K or scheme');
    }
  }
  const cat = <T extends Uint8Array | Float32Array>(parts: T[], make: (n: number) => T): T => {
    const out = make(parts.reduce((a, p) => a + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  };
  const q: QuantizedMatrix = {
    n: qs.reduce((a, m) => a + m.n, 0),
    k,
    scheme,
    packed: cat(qs.map((m) => m.packed), (n) => new Uint8Array(n)),
    scales: cat(qs.map((m) => m.scales), (n) => new Float32Array(n)),
    zeroPoints: scheme.symmetric ? null : cat(qs.map((m) => m.zeroPoints!), (n) => new Uint8Array(n)),
  };
  stacked.set(qs[0], q);
  return q;
}

// dequant(W) [N, K] in float32 (as the kernel computes it: (q − zp) · scale).
export function dequantizeMatrix(q: QuantizedMatrix): Float32Array {
  const out = new Float32Array(q.n * q.k);
  for (let r = 0; r < q.n; r++) dequantizeRow(q, r, out.subarray(r * q.k, (r + 1) * q.k));
  return out;
}

// Row r of dequant(W) into `out` [K].
function dequantizeRow(q: QuantizedMatrix, r: number, out: Float32Array): void {
  const { k, scheme } = q;
  const { bits, block } = scheme;
  const blocks = blocksOf(k, block);
  const half = 1 << (bits - 1);
  const zpRowBytes = Math.ceil((blocks * bits) / 8);
  for (let c = 0; c < blocks; c++) {
    const scale = q.scales[r * blocks + c];
    const zp = q.zeroPoints ? getPacked(q.zeroPoints, r * zpRowBytes * (8 / bits) + c, bits) : half;
    const at = (r * blocks + c) * block;
    const width = Math.min(block, k - c * block);
    for (let i = 0; i < width; i++) out[c * block + i] = (getPacked(q.packed, at + i, bits) - zp) * scale;
  }
}

// Element `index` of a packed array of `bits`-bit values (low bits first); gptq.ts packs with it too.
export function setPacked(arr: Uint8Array, index: number, v: number, bits: QuantBits): void {
  if (bits === 8) { arr[index] = v; return; }
  const byte = index >> 1;
  arr[byte] = index & 1 ? (arr[byte] & 0x0f) | (v << 4) : (arr[byte] & 0xf0) | v;
}

export function getPacked(arr: Uint8Array, index: number, bits: QuantBits): number {
  if (bits === 8) return arr[index];
  const byte = arr[index >> 1];
  return index & 1 ? byte >> 4 : byte & 0x0f;
}

// What serving an adapter merged costs in accuracy over a quantized base (issue 18). Unmerged, a
// target serves `served` + ΔW (dequant(Q(W0)) under --quantize; a GPTQ checkpoint's own dequant(W0));
// merged, dequant(Q(W0 + ΔW)), the sum re-quantized. Their difference, against ΔW:
// errSq = ‖dequant(Q(W0 + ΔW)) − served − ΔW‖², deltaSq = ‖ΔW‖² (ΔW = merged − w0; all [N, K]
// float32). A ΔW smaller than the quantization step is mostly rounded away or into whole steps, so
// √(errSq / deltaSq) can pass 1 at int4. Q(merged) is quantizeOnce's, which the merged session's
// graph then reuses; it is dequantized one row at a time.
export function requantizationError(w0: Float32Array, merged: Float32Array, served: Float32Array, n: number, k: number, scheme: QuantScheme): { errSq: number; deltaSq: number } {
  if (w0.length !== n * k || merged.length !== n * k || served.length !== n * k) throw new Error(`requantizationError: ${w0.length}, ${merged.length} and ${served.length} values for [${n}, ${k}]`);
  const q = quantizeOnce(merged, n, k, scheme);
  const qb = new Float32Array(k);
  let errSq = 0;
  let deltaSq = 0;
  for (let r = 0; r < n; r++) {
    const a = w0.subarray(r * k, (r + 1) * k);
    const b = merged.subarray(r * k, (r + 1) * k);
    const s = served.subarray(r * k, (r + 1) * k);
    dequantizeRow(q, r, qb);
    for (let i = 0; i < k; i++) {
      const delta = b[i] - a[i];
      const e = qb[i] - s[i] - delta;
      errSq += e * e;
      deltaSq += delta * delta;
    }
  }
  return { errSq, deltaSq };
}
