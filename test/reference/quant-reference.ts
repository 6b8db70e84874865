// Block-wise quantization (src/runtime/quantize.ts, issue 18) as its definition states it, in
// float64, for the tests to compare against.
import type { QuantScheme } from '../../src/runtime/quantize.ts';

// The definition in float64: per block, the scale and zero point, q = clamp(round(w/s) + zp), w' = (q − zp)·s.
export function quantReference(w: Float32Array, n: number, k: number, s: QuantScheme): { deq: Float64Array; scales: Float64Array } {
  const blocks = Math.ceil(k / s.block);
  const levels = 2 ** s.bits - 1;
  const half = 2 ** (s.bits - 1);
  const deq = new Float64Array(n * k);
  const scales = new Float64Array(n * blocks);
  for (let r = 0; r < n; r++) for (let c = 0; c < blocks; c++) {
    const vals = Array.from({ length: Math.min(s.block, k - c * s.block) }, (_, i) => w[r * k + c * s.block + i]);
    const lo = Math.min(0, ...vals), hi = Math.max(0, ...vals), maxAbs = Math.max(...vals.map(Math.abs));
    let scale = s.symmetric ? maxAbs / (half - 1) : (hi - lo) / levels;
    const zp = s.symmetric ? half : scale > 0 ? Math.min(levels, Math.max(0, Math.round(-lo / scale))) : half;
    if (scale === 0) scale = 1;
    scale = Math.fround(scale);
    scales[r * blocks + c] = scale;
    vals.forEach((v, i) => { deq[r * k + c * s.block + i] = (Math.min(levels, Math.max(0, Math.round(v / scale) + zp)) - zp) * scale; });
  }
  return { deq, scales };
}

