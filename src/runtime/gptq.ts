// Pre-quantized GPTQ checkpoints (AutoGPTQ / optimum / transformers; issue 18): config.json's
// quantization_config, the packed tensors of one linear, their dequantization, and their lossless
// repacking into MatMulNBits' layout (quantize.ts' QuantizedMatrix). Pure functions over typed arrays.
//
// Per quantized linear `<path>`, W [N = out, K = in], p = 32/bits values per int32 (low bits first):
//   <path>.qweight  int32 [⌈K/p⌉, N]   q[k, n] = qweight[⌊k/p⌋, n] >>> ((k mod p)·bits)
//   <path>.qzeros   int32 [G, ⌈N/p⌉]   z[g, n] = qzeros[g, ⌊n/p⌋] >>> ((n mod p)·bits), plus 1 for
//                                      checkpoint_format "gptq" (v1 stores zero − 1), as is for "gptq_v2"
//   <path>.scales   float16 [G, N]
//   <path>.g_idx    int32 [K], optional: the group of input k (default ⌊k / group_size⌋)
//   W[n, k] = scales[g_idx[k], n] · (q[k, n] − z[g_idx[k], n]);  G = ⌈K / group_size⌉, 1 for group_size −1
// GPTQ tools pack only K and N that are multiples of p; a shorter last int32 (stories260K's 172-wide
// MLP) is read here as padded, so ⌈·⌉ equals their K·bits/32 wherever they write one.
//
// The repacking: K is reordered by a stable sort of g_idx (the identity without act-order), so each
// group is a contiguous run; MatMulNBits then reads x gathered by that permutation. Its block is the
// group size when that is a power of two in 16..256, else the largest such power dividing every run
// but the last (which may be short: its last block is padded, as quantize.ts pads one); each block
// takes its group's scale and zero.
import { ModelConfigError } from './errors.ts';
import { QUANT_BLOCKS, blocksOf, setPacked } from './quantize.ts';
import type { QuantBits, QuantizedMatrix } from './quantize.ts';
import { tensorToF32 } from './dtype.ts';
import type { TensorEntry } from './safetensors.ts';

export type GptqFormat = 'gptq' | 'gptq_v2';

export interface GptqConfig {
  bits: QuantBits;
  groupSize: number;      // −1: one group over all of K
  sym: boolean;           // informational: the zeros are read from qzeros either way
  descAct: boolean;       // informational: g_idx says the order either way
  format: GptqFormat;
}

// One linear's tensors as stored (shapes checked by gptqTensorProblems).
export interface GptqTensors {
  qweight: Int32Array;
  qzeros: Int32Array;
  scales: Float32Array;   // float16 in the file, exact in float32
  gIdx: Int32Array | null;
}

// A linear repacked for MatMulNBits: x is gathered by perm (when not the identity) before it.
export interface PrequantizedLinear {
  matrix: QuantizedMatrix;
  perm: Int32Array | null;
}

const FORMATS: readonly string[] = ['gptq', 'gptq_v2'];

// config.json's quantization_config (or AutoGPTQ's quantize_config.json, passed as `raw` with
// `source` naming it) → GptqConfig; null when there is none. Refuses what is not read, by key.
export function parseGptqConfig(raw: unknown, source = 'config.json: quantization_config'): GptqConfig | null {
  if (raw == null) return null;
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new ModelConfigError(`${source} must be an object`, 'quantization_config');
  const q = raw as Record<string, unknown>;
  const key = (k: string) => `quantization_config.${k}`;
  const method = q.quant_method ?? (source.endsWith('quantize_config.json') ? 'gptq' : undefined);
  if (method !== 'gptq') throw new ModelConfigError(`${source}: "quant_method" ${JSON.stringify(method)} is not supported (only "gptq" checkpoints are read; otherwise serve a float checkpoint, with --quantize if wanted)`, key('quant_method'));
  if (q.bits !== 4 && q.bits !== 8) throw new ModelConfigError(`${source}: "bits" must be 4 or 8 (MatMulNBits' widths), got ${JSON.stringify(q.bits)}`, key('bits'));
  const groupSize = q.group_size ?? 128;
  if (typeof groupSize !== 'number' || !Number.isInteger(groupSize) || (groupSize < 1 && groupSize !== -1)) throw new ModelConfigError(`${source}: "group_size" must be a positive integer or -1, got ${JSON.stringify(groupSize)}`, key('group_size'));
  const format = q.checkpoint_format ?? 'gptq';
  if (typeof format !== 'string' || !FORMATS.includes(format)) throw new ModelConfigError(`${source}: "checkpoint_format" ${JSON.stringify(format)} is not supported (${FORMATS.join(' or ')})`, key('checkpoint_format'));
  if (q.is_marlin_format === true) throw new ModelConfigError(`${source}: "is_marlin_format" checkpoints are packed for Marlin, not read here (gptq or gptq_v2 only)`, key('is_marlin_format'));
  for (const k of ['sym', 'desc_act']) {
    if (q[k] != null && typeof q[k] !== 'boolean') throw new ModelConfigError(`${source}: "${k}" must be true or false, got ${JSON.stringify(q[k])}`, key(k));
  }
  return { bits: q.bits, groupSize, sym: q.sym !== false, descAct: q.desc_act === true, format: format as GptqFormat };
}

export const GPTQ_SUFFIXES = ['qweight', 'qzeros', 'scales', 'g_idx'] as const;

export const groupsOf = (c: GptqConfig, k: number): number => (c.groupSize === -1 ? 1 : Math.ceil(k / c.groupSize));
const perWord = (c: GptqConfig): number => 32 / c.bits;

// Each tensor's expected shape for a linear [N, K].
export function gptqShapes(c: GptqConfig, n: number, k: number): Record<(typeof GPTQ_SUFFIXES)[number], number[]> {
  const G = groupsOf(c, k);
  return { qweight: [Math.ceil(k / perWord(c)), n], qzeros: [G, Math.ceil(n / perWord(c))], scales: [G, n], g_idx: [k] };
}

// Problems with one linear's stored tensors (dtype and shape), by full name; g_idx may be absent.
export function gptqTensorProblems(c: GptqConfig, path: string, n: number, k: number, get: (name: string) => { dtype: string; shape: number[] } | undefined): string[] {
  const problems: string[] = [];
  const shapes = gptqShapes(c, n, k);
  for (const s of GPTQ_SUFFIXES) {
    const name = `${path}.${s}`;
    const t = get(name);
    const want = s === 'scales' ? 'F16, BF16 or F32' : 'I32';
    if (!t) {
      if (s !== 'g_idx') problems.push(`missing weight ${name} [${shapes[s]}] (GPTQ ${c.bits}-bit, group_size ${c.groupSize})`);
      continue;
    }
    if (!want.split(/, | or /).includes(t.dtype)) problems.push(`weight ${name} is ${t.dtype}, expected ${want}`);
    if (t.shape.join() !== shapes[s].join()) problems.push(`weight ${name} has shape [${t.shape}], expected [${shapes[s]}] (GPTQ ${c.bits}-bit, group_size ${c.groupSize}, linear [${n}, ${k}])`);
  }
  return problems;
}

// The unpacked values: q [K, N] (as stored, K-major), real zeros [G, N], each input's group [K].
export interface GptqUnpacked {
  q: Uint8Array;
  zeros: Int32Array;
  groups: Int32Array;
}

export function unpackGptq(c: GptqConfig, t: GptqTensors, n: number, k: number, name = 'gptq'): GptqUnpacked {
  const { bits } = c;
  const p = perWord(c);
  const mask = (1 << bits) - 1;
  const G = groupsOf(c, k);
  const q = new Uint8Array(k * n);
  for (let i = 0; i < k; i++) {
    const row = Math.floor(i / p) * n;
    const shift = (i % p) * bits;
    for (let j = 0; j < n; j++) q[i * n + j] = (t.qweight[row + j] >>> shift) & mask;
  }
  const cols = Math.ceil(n / p);
  const plus = c.format === 'gptq' ? 1 : 0;
  const zeros = new Int32Array(G * n);
  for (let g = 0; g < G; g++) for (let j = 0; j < n; j++) zeros[g * n + j] = ((t.qzeros[g * cols + Math.floor(j / p)] >>> ((j % p) * bits)) & mask) + plus;
  const groups = new Int32Array(k);
  for (let i = 0; i < k; i++) {
    const g = t.gIdx ? t.gIdx[i] : c.groupSize === -1 ? 0 : Math.floor(i / c.groupSize);
    if (!(g >= 0 && g < G)) throw new ModelConfigError(`${name}.g_idx: input ${i} is in group ${g}, outside [0, ${G}) (group_size ${c.groupSize}, K ${k})`, `${name}.g_idx`);
    groups[i] = g;
  }
  return { q, zeros, groups };
}

// W [N, K] in float32: scale · (q − zero), one rounding (as the kernel computes it).
export function dequantizeGptq(c: GptqConfig, t: GptqTensors, n: number, k: number, name = 'gptq'): Float32Array {
  const u = unpackGptq(c, t, n, k, name);
  const w = new Float32Array(n * k);
  for (let j = 0; j < n; j++) {
    for (let i = 0; i < k; i++) {
      const g = u.groups[i];
      w[j * k + i] = t.scales[g * n + j] * (u.q[i * n + j] - u.zeros[g * n + j]);
    }
  }
  return w;
}

// The order of K (a stable sort by group: a counting sort) and the lengths of its runs.
function groupOrder(groups: Int32Array, G: number): { perm: Int32Array; runs: number[] } {
  const count = new Int32Array(G + 1);
  for (const g of groups) count[g + 1]++;
  const runs = Array.from(count.subarray(1)).filter((r) => r > 0);
  for (let g = 0; g < G; g++) count[g + 1] += count[g];
  const perm = new Int32Array(groups.length);
  for (let i = 0; i < groups.length; i++) perm[count[groups[i]]++] = i;
  return { perm, runs };
}

// MatMulNBits' block for these runs, or null: the group size if it fits, else the largest that does.
export function blockForRuns(groupSize: number, runs: number[], k: number): number | null {
  const fits = (b: number) => b <= k && runs.slice(0, -1).every((r) => r % b === 0);
  if ((QUANT_BLOCKS as readonly number[]).includes(groupSize) && fits(groupSize)) return groupSize;
  return [...QUANT_BLOCKS].reverse().find(fits) ?? null;
}

// Lossless: dequantizeMatrix(matrix)[n, k'] = dequantizeGptq(...)[n, perm[k']].
export function repackGptq(c: GptqConfig, t: GptqTensors, n: number, k: number, name = 'gptq'): PrequantizedLinear {
  const { bits } = c;
  const u = unpackGptq(c, t, n, k, name);
  const G = groupsOf(c, k);
  const { perm, runs } = groupOrder(u.groups, G);
  const block = blockForRuns(c.groupSize, runs, k);
  if (block === null) {
    throw new ModelConfigError(`${name}: its groups (group_size ${c.groupSize}, runs of ${[...new Set(runs)].join('/')} inputs) cannot be laid out in MatMulNBits blocks: a power of two in ${QUANT_BLOCKS[0]}..${QUANT_BLOCKS.at(-1)}, at most K = ${k}, must divide every group but the last`, 'quantization_config.group_size');
  }
  const top = (1 << bits) - 1;
  const blocks = blocksOf(k, block);
  const packed = new Uint8Array((n * blocks * block * bits) / 8);
  const scales = new Float32Array(n * blocks);
  const zpRow = Math.ceil((blocks * bits) / 8) * (8 / bits);
  const zeroPoints = new Uint8Array((n * zpRow * bits) / 8);
  for (let j = 0; j < n; j++) {
    for (let b = 0; b < blocks; b++) {
      const from = b * block;
      const width = Math.min(block, k - from);
      const g = u.groups[perm[from]];
      let zero = u.zeros[g * n + j];
      let shift = 0;
      if (zero > top) {
        // v1's stored 2^bits − 1 (AutoGPTQ's wrapped zero of 0): zero 2^bits, which a bits-bit
        // zero point holds only when every q of the block can move down by one
        for (let i = 0; i < width; i++) {
          if (u.q[perm[from + i] * n + j] === 0) throw new ModelConfigError(`${name}.qzeros: group ${g}, output ${j} has zero ${zero} (checkpoint_format "gptq" stores zero − 1: a stored ${top}) beside a q of 0, which ${bits}-bit zero points cannot hold; convert the checkpoint to gptq_v2`, `${name}.qzeros`);
        }
        shift = 1;
        zero = top;
      }
      scales[j * blocks + b] = t.scales[g * n + j];
      setPacked(zeroPoints, j * zpRow + b, zero, bits);
      const at = (j * blocks + b) * block;
      for (let i = 0; i < block; i++) setPacked(packed, at + i, i < width ? u.q[perm[from + i] * n + j] - shift : zero, bits);
    }
  }
  const identity = perm.every((v, i) => v === i);
  return { matrix: { n, k, scheme: { bits, block, symmetric: false }, packed, scales, zeroPoints }, perm: identity ? null : perm };
}

// One linear's tensors from stored entries (shapes already checked by gptqTensorProblems).
export function gptqTensorsOf(path: string, get: (name: string) => TensorEntry | undefined): GptqTensors {
  const must = (s: string): TensorEntry => {
    const t = get(`${path}.${s}`);
    if (!t) throw new ModelConfigError(`missing weight ${path}.${s} (GPTQ)`, `${path}.${s}`);
    return t;
  };
  const gIdx = get(`${path}.g_idx`);
  return { qweight: int32s(must('qweight')), qzeros: int32s(must('qzeros')), scales: tensorToF32(must('scales')), gIdx: gIdx ? int32s(gIdx) : null };
}

function int32s(t: TensorEntry): Int32Array {
  if (t.dtype !== 'I32') throw new ModelConfigError(`weight ${t.name} is ${t.dtype}, expected I32 (GPTQ)`, t.name);
  const b = t.bytes.byteOffset % 4 === 0 ? t.bytes : new Uint8Array(t.bytes); // a copy (a Buffer's slice() is a view)
  return new Int32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}
