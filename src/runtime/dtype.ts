// Conversions between the storage dtypes of checkpoints and the float32 that the runtime computes in.
import type { Dtype, TensorEntry } from './safetensors.ts';
import { SafetensorsError } from './errors.ts';

// IEEE half (u16 bits) → float32
export function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

// float32 → IEEE half bits, round to nearest even.
export function f32ToF16(v: number): number {
  f32[0] = v;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && (half & 1))) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1))) half++;
  return sign | half;
}

// float32 → bfloat16 bits, round to nearest even.
export function f32ToBf16(v: number): number {
  f32[0] = v;
  const x = u32[0];
  if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff)) return (x >>> 16) | 0x40;
  const rounding = 0x7fff + ((x >>> 16) & 1);
  return ((x + rounding) >>> 16) & 0xffff;
}

export function tensorToF32(t: TensorEntry): Float32Array {
  return bytesToF32(t.bytes, t.dtype, t.name);
}

export function bytesToF32(bytes: Uint8Array, dtype: Dtype, name: string): Float32Array {
  switch (dtype) {
    case 'F32': {
      if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4).slice();
      return new Float32Array(copyOf(bytes).buffer);
    }
    case 'F16': {
      const src = readU16(bytes);
      const out = new Float32Array(src.length);
      const table = halfTable();
      for (let i = 0; i < src.length; i++) out[i] = table[src[i]];
      return out;
    }
    case 'BF16': {
      const src = readU16(bytes);
      const out = new Float32Array(src.length);
      const o32 = new Uint32Array(out.buffer);
      for (let i = 0; i < src.length; i++) o32[i] = src[i] << 16;
      return out;
    }
    default:
      throw new SafetensorsError(`tensor "${name}": dtype ${dtype} is not a floating-point weight type (F32, F16, BF16)`);
  }
}

function readU16(bytes: Uint8Array): Uint16Array {
  if (bytes.byteOffset % 2 === 0) return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  return new Uint16Array(copyOf(bytes).buffer);
}

// A copy in a fresh ArrayBuffer of its own. Not bytes.slice(): on a Node Buffer (what readFileSync
// gives, and its subarrays) slice() shares memory, and .buffer would be the whole file's buffer.
function copyOf(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(bytes.byteLength);
  out.set(bytes);
  return out;
}

let HALF: Float32Array | null = null;
function halfTable(): Float32Array {
  if (!HALF) {
    HALF = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) HALF[i] = f16ToF32(i);
  }
  return HALF;
}

export function f32ToDtypeBytes(data: Float32Array, dtype: 'F32' | 'F16' | 'BF16'): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint16Array(data.length);
  const conv = dtype === 'F16' ? f32ToF16 : f32ToBf16;
  for (let i = 0; i < data.length; i++) out[i] = conv(data[i]);
  return new Uint8Array(out.buffer);
}
