// Rotary position embedding tables, in the Hugging Face rotate_half (GPT-NeoX) convention.
import type { RopeScaling } from './model-config.ts';

// inv_freq[j] = 1 / theta^(2j/d), j < d/2, then the configured scaling (transformers' ROPE_INIT_FUNCTIONS).
export function ropeInverseFrequencies(headDim: number, theta: number, scaling: RopeScaling): Float64Array {
  const half = headDim / 2;
  const inv = new Float64Array(half);
  for (let j = 0; j < half; j++) inv[j] = 1 / theta ** ((2 * j) / headDim);
  if (scaling.type === 'linear') {
    for (let j = 0; j < half; j++) inv[j] /= scaling.factor;
  } else if (scaling.type === 'llama3') {
    const { factor, lowFreqFactor, highFreqFactor, originalMaxPositions: L } = scaling;
    const lowWl = L / lowFreqFactor;
    const highWl = L / highFreqFactor;
    for (let j = 0; j < half; j++) {
      const wavelen = (2 * Math.PI) / inv[j];
      if (wavelen < highWl) continue;
      if (wavelen > lowWl) { inv[j] /= factor; continue; }
      const smooth = (L / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
      inv[j] = (1 - smooth) * (inv[j] / factor) + smooth * inv[j];
    }
  }
  return inv;
}

// cos/sin caches [positions, d/2], float32 as the RotaryEmbedding op takes them.
// Angles are computed as float32(p) * float32(inv_freq) like transformers does.
export function ropeCaches(positions: number, inv: Float64Array): { cos: Float32Array; sin: Float32Array } {
  const half = inv.length;
  const cos = new Float32Array(positions * half);
  const sin = new Float32Array(positions * half);
  const inv32 = Float32Array.from(inv);
  for (let p = 0; p < positions; p++) {
    for (let j = 0; j < half; j++) {
      const angle = Math.fround(p * inv32[j]);
      cos[p * half + j] = Math.cos(angle);
      sin[p * half + j] = Math.sin(angle);
    }
  }
  return { cos, sin };
}
