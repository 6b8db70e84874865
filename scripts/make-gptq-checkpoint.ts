// Writes a GPTQ-format checkpoint directory from a float model directory (issue 18), for tests and
// trials of the GPTQ loader (src/runtime/gptq.ts):
//
//   npx tsx scripts/make-gptq-checkpoint.ts --model DIR --out DIR [--bits 4|8] [--group-size N|-1]
//     [--asym] [--desc-act] [--format gptq|gptq_v2] [--seed N] [--overwrite]
//
// This is about the FORMAT, not GPTQ's algorithm: each group is quantized by round-to-nearest
// (GPTQ's own Quantizer: the range [min(0, lo), max(0, hi)] over 2^bits − 1 steps, or symmetric
// ±max|w| with zero 2^(bits−1)), with no Hessian and no error feedback. What is written is what
// AutoGPTQ / optimum write: per projection qweight (int32, packed along K, low bits first), qzeros
// (int32, packed along N), scales (float16), g_idx (int32); with --desc-act a seeded random
// permutation stands in for the activation order, and g_idx[perm[i]] = ⌊i / group_size⌋ as GPTQ
// sets it. checkpoint_format "gptq" (v1) stores zero − 1 (an asymmetric zero of 0 would wrap, as
// AutoGPTQ's did: such a group gets zero 1 and the range [−s, (2^bits − 2)·s] instead); "gptq_v2"
// stores the zero. Embeddings, norms, biases and the LM head are copied as stored; config.json gets
// quantization_config; the tokenizer and other files are copied. A K or N that is not a multiple of
// 32/bits (stories260K's 172) gets a last int32 padded with zeros (GPTQ tools would not pack it).
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeSafetensors, readSafetensorsFile, writeFileAtomic } from '../src/runtime/safetensors.ts';
import type { TensorToWrite } from '../src/runtime/safetensors.ts';
import { f16ToF32, f32ToF16, tensorToF32 } from '../src/runtime/dtype.ts';
import { parseModelConfig } from '../src/runtime/model-config.ts';
import { TARGETS, targetPath, targetShape } from '../src/runtime/model-targets.ts';
import { Rng } from '../src/runtime/random.ts';
import { parseFlags } from '../src/runtime/cli-args.ts';

export interface GptqCheckpointOptions {
  model: string;
  out: string;
  bits: 4 | 8;
  groupSize: number;          // −1: one group over K
  sym: boolean;
  descAct: boolean;
  format: 'gptq' | 'gptq_v2';
  seed?: number;              // the act-order permutation's
  overwrite?: boolean;
}

// One projection W [N, K] → its GPTQ tensors.
export function quantizeGptqLinear(w: Float32Array, n: number, k: number, o: Omit<GptqCheckpointOptions, 'model' | 'out'>, rng: Rng): Record<'qweight' | 'qzeros' | 'scales' | 'g_idx', TensorToWrite> {
  const { bits, groupSize, sym } = o;
  const p = 32 / bits;
  const maxq = 2 ** bits - 1;
  const G = groupSize === -1 ? 1 : Math.ceil(k / groupSize);
  const order = Array.from({ length: k }, (_, i) => i);
  if (o.descAct) for (let i = k - 1; i > 0; i--) { const j = rng.nextU32() % (i + 1); [order[i], order[j]] = [order[j], order[i]]; }
  const gIdx = new Int32Array(k);
  order.forEach((kk, i) => { gIdx[kk] = groupSize === -1 ? 0 : Math.floor(i / groupSize); });
  const members: number[][] = Array.from({ length: G }, () => []);
  for (let i = 0; i < k; i++) members[gIdx[i]].push(i);
  const qweight = new Int32Array(Math.ceil(k / p) * n);
  const qzeros = new Int32Array(G * Math.ceil(n / p));
  const scales = new Uint16Array(G * n);
  for (let g = 0; g < G; g++) {
    for (let j = 0; j < n; j++) {
      let lo = 0;
      let hi = 0;
      for (const i of members[g]) { const v = w[j * k + i]; if (v < lo) lo = v; if (v > hi) hi = v; }
      if (sym) { hi = Math.max(-lo, hi); lo = -hi; }
      if (lo === 0 && hi === 0) { lo = -1; hi = 1; }
      let scale = (hi - lo) / maxq;
      let zero = sym ? (maxq + 1) / 2 : Math.round(-lo / scale);
      if (o.format === 'gptq' && zero === 0) { scale = hi / (maxq - 1); zero = 1; } // v1 cannot store zero 0
      const s16 = f32ToF16(scale) || 1; // the smallest positive half if it rounds to 0
      const s = f16ToF32(s16);
      scales[g * n + j] = s16;
      const stored = (zero - (o.format === 'gptq' ? 1 : 0)) & maxq;
      qzeros[g * Math.ceil(n / p) + Math.floor(j / p)] |= stored << ((j % p) * bits);
      for (const i of members[g]) {
        const q = Math.min(maxq, Math.max(0, Math.round(w[j * k + i] / s) + zero));
        qweight[Math.floor(i / p) * n + j] |= q << ((i % p) * bits);
      }
    }
  }
  return {
    qweight: { dtype: 'I32', shape: [Math.ceil(k / p), n], data: qweight },
    qzeros: { dtype: 'I32', shape: [G, Math.ceil(n / p)], data: qzeros },
    scales: { dtype: 'F16', shape: [G, n], data: scales },
    g_idx: { dtype: 'I32', shape: [k], data: gIdx },
  };
}

const isWeightFile = (f: string): boolean => /\.(safetensors|bin|pt|pth|ckpt|gguf)$/.test(f) || /\.index\.json$/.test(f) || f === 'quantize_config.json';

export function makeGptqCheckpoint(o: GptqCheckpointOptions): void {
  const src = resolve(o.model);
  const out = resolve(o.out);
  if (existsSync(out)) {
    if (!o.overwrite) throw new Error(`--out ${out} exists; pass --overwrite to replace it`);
    rmSync(out, { recursive: true, force: true });
  }
  mkdirSync(out, { recursive: true });
  const configJson = JSON.parse(readFileSync(join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
  const cfg = parseModelConfig(configJson);
  const index = join(src, 'model.safetensors.index.json');
  const files = existsSync(index)
    ? [...new Set(Object.values((JSON.parse(readFileSync(index, 'utf8')) as { weight_map: Record<string, string> }).weight_map))]
    : ['model.safetensors'];
  const linears = new Map<string, [number, number]>();
  for (let l = 0; l < cfg.numLayers; l++) for (const t of TARGETS) linears.set(`${targetPath(l, t)}.weight`, targetShape(cfg, t));
  const rng = new Rng(o.seed ?? 0);
  const tensors: Record<string, TensorToWrite> = {};
  for (const f of files) {
    for (const [name, t] of readSafetensorsFile(join(src, f)).tensors) {
      const shape = linears.get(name);
      if (!shape) { tensors[name] = { dtype: t.dtype, shape: t.shape, data: t.bytes }; continue; }
      const path = name.slice(0, -'.weight'.length);
      for (const [suffix, q] of Object.entries(quantizeGptqLinear(tensorToF32(t), shape[0], shape[1], o, rng))) tensors[`${path}.${suffix}`] = q;
    }
  }
  writeFileAtomic(join(out, 'model.safetensors'), encodeSafetensors(tensors));
  for (const f of readdirSync(src)) {
    if (f === 'config.json' || isWeightFile(f) || !statSync(join(src, f)).isFile()) continue;
    copyFileSync(join(src, f), join(out, f));
  }
  configJson.quantization_config = {
    quant_method: 'gptq', bits: o.bits, group_size: o.groupSize, desc_act: o.descAct, sym: o.sym,
    checkpoint_format: o.format, damp_percent: 0.01, true_sequential: true, static_groups: false,
    model_name_or_path: null, model_file_base_name: 'model',
  };
  writeFileSync(join(out, 'config.json'), `${JSON.stringify(configJson, null, 2)}\n`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseFlags({
    args: process.argv.slice(2),
    options: {
      model: { type: 'string' }, out: { type: 'string' }, bits: { type: 'string', default: '4' },
      'group-size': { type: 'string', default: '128' }, asym: { type: 'boolean', default: false },
      'desc-act': { type: 'boolean', default: false }, format: { type: 'string', default: 'gptq' },
      seed: { type: 'string', default: '0' }, overwrite: { type: 'boolean', default: false },
    },
  });
  const fail = (msg: string): never => { console.error(`make-gptq-checkpoint: ${msg}`); process.exit(2); };
  if (!values.model || !values.out) fail('--model DIR and --out DIR are required');
  const bits = Number(values.bits);
  if (bits !== 4 && bits !== 8) fail(`--bits must be 4 or 8, got ${values.bits}`);
  const groupSize = Number(values['group-size']);
  if (!Number.isInteger(groupSize) || (groupSize < 1 && groupSize !== -1)) fail(`--group-size must be a positive integer or -1, got ${values['group-size']}`);
  if (values.format !== 'gptq' && values.format !== 'gptq_v2') fail(`--format must be gptq or gptq_v2, got ${values.format}`);
  makeGptqCheckpoint({
    model: values.model!, out: values.out!, bits: bits as 4 | 8, groupSize, sym: !values.asym, descAct: values['desc-act']!,
    format: values.format as 'gptq' | 'gptq_v2', seed: Number(values.seed), overwrite: values.overwrite,
  });
  console.log(`wrote ${resolve(values.out!)}: GPTQ ${bits}-bit, group_size ${groupSize}, ${values.asym ? 'asym' : 'sym'}${values['desc-act'] ? ', desc_act' : ''}, ${values.format} (round-to-nearest)`);
}
