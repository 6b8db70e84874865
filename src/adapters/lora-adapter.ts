// A PEFT LoRA adapter directory → LoraAdapter, validated once against the served model.
// Every problem is collected, so one answer lists them all (P8 of docs/style).
import { createHash } from 'node:crypto';
import { lstat } from 'node:fs/promises';
import { DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT_MS, readChecked, withTimeout } from './read-file.ts';
import { join } from 'node:path';
import { parseSafetensors } from '../runtime/safetensors.ts';
import type { TensorEntry } from '../runtime/safetensors.ts';
import { bytesToF32 } from '../runtime/dtype.ts';
import { TARGETS, targetPath, targetShape } from '../runtime/model-targets.ts';
import type { Target } from '../runtime/model-targets.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import { LoraserveError } from '../runtime/errors.ts';
import { parsePeftConfig, scaleProblem } from './peft-config.ts';
import { isTargeted, moduleScaling } from './module-match.ts';

export const CONFIG_FILE = 'adapter_config.json';
export const WEIGHTS_FILE = 'adapter_model.safetensors';

// A factor's tensor name in adapter_model.safetensors, as PEFT writes it.
export const peftTensorName = (layer: number, target: Target, part: 'lora_A' | 'lora_B'): string => `base_model.model.${targetPath(layer, target)}.${part}.weight`;
// A merged-only adapter's ΔW [out, in] for one target (loraserve's own; not a PEFT tensor): an adapter
// holding these in place of factors is served on the merged path only (docs/merging.md).
export const deltaTensorName = (layer: number, target: Target): string => `base_model.model.${targetPath(layer, target)}.delta_weight`;

export interface LoraTargetWeights {
  layer: number;
  target: Target;
  rank: number;
  scale: number;                  // alpha/r or alpha/√r, resolved per module
  a: Float32Array;                // lora_A [rank, in]
  b: Float32Array;                // lora_B [out, rank]
  magnitude: Float32Array | null; // DoRA m [out]
  delta?: Float32Array;           // merged-only adapters: ΔW [out, in] (rank 0, a and b empty)
}

// F32 factors are views of the uploaded weights file wherever it owns its whole buffer (no copy:
// fresh memory costs more than the copy on this VM), so an adapter takes its files over: hand the
// adapter on (to the engine, which takes that buffer: transferred, warm buffers from
// warm-buffers.ts included) only once nothing reads or writes the files again.
export interface LoraAdapter {
  version: string;                // content hash of the two files
  targets: LoraTargetWeights[];
  maxRank: number;
  useDora: boolean;
  bytes: number;                  // decoded float32 bytes
  baseModel: string | null;
}

export interface AdapterFiles {
  config: Uint8Array;
  weights: Uint8Array;
  version?: string; // adapterVersion of these bytes, when the reader hashed them as it read
}

export interface AdapterLimits {
  maxRank: number;
  modelName: string;
}

export interface DecodeResult {
  adapter: LoraAdapter | null;
  problems: string[];
  warnings: string[];
}

const NAME = /^(?:base_model\.model\.)?(model\.layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+))\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector|lora_B\.bias|delta_weight)$/;
const BLOCK: Record<Target, string> = { q_proj: 'self_attn', k_proj: 'self_attn', v_proj: 'self_attn', o_proj: 'self_attn', gate_proj: 'mlp', up_proj: 'mlp', down_proj: 'mlp' };

export const MAX_CONFIG_BYTES = 1 << 20; // adapter_config.json: 1 MiB

export interface ReadAdapterOptions {
  maxWeightBytes?: number; // adapter_model.safetensors larger than this is refused (default 2 GiB)
  timeoutMs?: number;      // the whole read, both files (default 30 s)
}

// The two files of an adapter directory (`dir` already resolved with realpath by the caller). Each
// must be a regular file, not a link (read-file.ts); the weights are hashed while they are read.
export async function readAdapterDir(dir: string, opts: ReadAdapterOptions = {}): Promise<AdapterFiles> {
  const ms = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const late = () => new LoraserveError('invalid_adapter', `${dir}: the adapter files could not be read within ${ms} ms (a hung or slow file system?)`, { problems: [`reading the adapter files took longer than ${ms} ms`] });
  return withTimeout(ms, late, (expired) => readAdapterFiles(dir, opts.maxWeightBytes ?? DEFAULT_MAX_BYTES, expired));
}

async function readAdapterFiles(dir: string, maxWeightBytes: number, expired: () => boolean): Promise<AdapterFiles> {
  const cfgPath = join(dir, CONFIG_FILE);
  const wPath = join(dir, WEIGHTS_FILE);
  const [hasCfg, hasW, hasBin] = await Promise.all([cfgPath, wPath, join(dir, 'adapter_model.bin')].map(hasEntry));
  if (!hasW && hasBin) {
    throw new LoraserveError('invalid_adapter', `${dir}: adapter_model.bin is a pickle file, which can run arbitrary code when loaded; only adapter_model.safetensors is accepted (convert with safetensors' save_file)`, { problems: ['adapter_model.bin (pickle) is refused; provide adapter_model.safetensors'] });
  }
  const missing = [hasCfg ? null : CONFIG_FILE, hasW ? null : WEIGHTS_FILE].filter((f): f is string => f !== null);
  if (missing.length) throw new LoraserveError('invalid_adapter', `${dir}: missing ${missing.join(' and ')}`, { problems: missing.map((f) => `missing ${f}`) });
  const hash = versionHash();
  const config = await readChecked(cfgPath, (chunk) => hash.update(chunk), { name: CONFIG_FILE, maxBytes: MAX_CONFIG_BYTES, warm: false }, expired);
  const weights = await readChecked(wPath, (chunk) => hash.update(chunk), { name: WEIGHTS_FILE, maxBytes: maxWeightBytes }, expired); // hashed while it is read
  return { config, weights, version: hash.digest('hex').slice(0, 16) };
}

// Whether a directory entry of any kind (a link too: reading it is refused, not reported missing).
async function hasEntry(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code !== 'ENOENT' && code !== 'ENOTDIR';
  }
}

// The version of an adapter: sha256 of adapter_config.json then adapter_model.safetensors.
const versionHash = () => createHash('sha256');

export function adapterVersion(files: AdapterFiles): string {
  return files.version ?? versionHash().update(files.config).update(files.weights).digest('hex').slice(0, 16);
}

export function decodeAdapter(files: AdapterFiles, model: ModelConfig, limits: AdapterLimits): DecodeResult {
  const problems: string[] = [];
  // the limit reading a directory applies (readAdapterDir), on every path in: an upload over it
  // would serve now and fail to load back after a restart
  if (files.config.byteLength > MAX_CONFIG_BYTES) problems.push(`${CONFIG_FILE} is ${files.config.byteLength} bytes, over the limit of ${MAX_CONFIG_BYTES} (1 MiB)`);
  let rawConfig: unknown;
  try {
    rawConfig = JSON.parse(new TextDecoder().decode(files.config));
  } catch (e) {
    problems.push(`adapter_config.json is not valid JSON${jsonErrorAt((e as Error).message)}`);
  }
  const { config, problems: cfgProblems, warnings } = rawConfig === undefined ? { config: null, problems: [], warnings: [] } : parsePeftConfig(rawConfig);
  problems.push(...cfgProblems);
  if (config && config.r > limits.maxRank) problems.push(`adapter_config.json: "r" ${config.r} exceeds the server's maximum LoRA rank ${limits.maxRank} (--max-lora-rank)`);
  for (const [k, r] of config?.rankPattern ?? []) if (r > limits.maxRank) problems.push(`adapter_config.json: "rank_pattern.${k}" ${r} exceeds the server's maximum LoRA rank ${limits.maxRank}`);
  if (config?.baseModel && config.baseModel !== limits.modelName && !config.baseModel.endsWith(`/${limits.modelName}`)) {
    warnings.push(`adapter was trained on base model ${JSON.stringify(config.baseModel)}, served model is ${JSON.stringify(limits.modelName)}`);
  }

  let tensors: Map<string, TensorEntry> = new Map();
  try {
    tensors = parseSafetensors(files.weights, WEIGHTS_FILE).tensors;
  } catch (e) {
    problems.push((e as Error).message);
  }
  if (tensors.size === 0 && !problems.some((p) => p.startsWith(WEIGHTS_FILE))) problems.push(`${WEIGHTS_FILE} holds no tensors`);

  // group tensors by module
  const modules = new Map<string, { layer: number; target: Target; parts: Map<string, TensorEntry> }>();
  for (const [name, t] of tensors) {
    const m = NAME.exec(name);
    if (!m) { problems.push(`tensor ${name} maps to no LoRA module (expected …model.layers.N.<self_attn|mlp>.<proj>.lora_A.weight / lora_B.weight / lora_magnitude_vector, or delta_weight for a merged-only adapter)`); continue; }
    const [, key, layerStr, block, proj, kind] = m;
    const layer = Number(layerStr);
    if (!(TARGETS as readonly string[]).includes(proj) || BLOCK[proj as Target] !== block) { problems.push(`tensor ${name}: module ${key} is not a LoRA target of this model (targets: ${TARGETS.join(', ')})`); continue; }
    if (layer >= model.numLayers) { problems.push(`tensor ${name}: layer ${layer} does not exist (the model has ${model.numLayers} layers)`); continue; }
    if (kind === 'lora_B.bias') { problems.push(`tensor ${name}: lora_B.bias (lora_bias) is not supported`); continue; }
    if (!['F32', 'F16', 'BF16'].includes(t.dtype)) { problems.push(`tensor ${name}: dtype ${t.dtype} is not supported (F32, F16, BF16)`); continue; }
    let entry = modules.get(key);
    if (!entry) modules.set(key, (entry = { layer, target: proj as Target, parts: new Map() }));
    // with and without the base_model.model. prefix, two names are one module's: refuse rather
    // than let the later one win (PEFT would read the prefixed one and ignore the other)
    const twin = entry.parts.get(kind);
    if (twin) { problems.push(`tensors ${twin.name} and ${name} are both module ${key}'s ${kind}: keep one`); continue; }
    entry.parts.set(kind, t);
  }

  // views only into a buffer that nothing else shares (not a slice of Node's Buffer pool), such as
  // a warm buffer from warm-buffers.ts, which then moves to the engine thread whole
  const ownsBuffer = files.weights.byteOffset === 0 && files.weights.byteLength === files.weights.buffer.byteLength;
  const factor = (t: TensorEntry): Float32Array => (ownsBuffer && t.dtype === 'F32' && t.bytes.byteOffset % 4 === 0
    ? new Float32Array(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength / 4)
    : bytesToF32(t.bytes, t.dtype, t.name));
  const targets: LoraTargetWeights[] = [];
  let hiddenMismatch = false;
  const deltaModules = [...modules.values()].filter((m) => m.parts.has('delta_weight')).length;
  if (deltaModules > 0 && deltaModules < modules.size) problems.push(`${WEIGHTS_FILE} mixes LoRA factors and merged deltas (delta_weight): an adapter holds one or the other`);
  for (const [key, { layer, target, parts }] of modules) {
    const D = parts.get('delta_weight');
    if (D) {
      // a merged-only adapter: ΔW itself, already scaled (merge/combine-delta.ts output "merged")
      const [out, inDim] = targetShape(model, target);
      if (parts.size > 1) { problems.push(`module ${key}: delta_weight comes alone (no lora_A, lora_B or lora_magnitude_vector beside it)`); continue; }
      if (config && !isTargeted(config, key)) problems.push(`module ${key} has weights but is not targeted by adapter_config.json target_modules/layers_to_transform/exclude_modules`);
      if (config?.useDora) { problems.push(`module ${key}: a merged-only adapter (delta_weight) cannot use DoRA (use_dora must be false)`); continue; }
      if (D.shape.length !== 2 || D.shape[0] !== out || D.shape[1] !== inDim) { problems.push(`module ${key}: delta_weight has shape [${D.shape}], expected [${out}, ${inDim}]`); continue; }
      const delta = factor(D);
      if (!allFinite(delta)) { problems.push(`tensor ${D.name} contains NaN or Inf values`); continue; }
      targets.push({ layer, target, rank: 0, scale: 1, a: new Float32Array(0), b: new Float32Array(0), magnitude: null, delta });
      continue;
    }
    const A = parts.get('lora_A.weight');
    const B = parts.get('lora_B.weight');
    const M = parts.get('lora_magnitude_vector');
    if (!A || !B) { problems.push(`module ${key}: needs both lora_A.weight and lora_B.weight`); continue; }
    if (config && !isTargeted(config, key)) problems.push(`module ${key} has weights but is not targeted by adapter_config.json target_modules/layers_to_transform/exclude_modules`);
    if (M && !config?.useDora) problems.push(`module ${key}: lora_magnitude_vector is present but use_dora is false`);
    if (!M && config?.useDora) problems.push(`module ${key}: use_dora is true but lora_magnitude_vector is missing`);
    const [out, inDim] = targetShape(model, target);
    const r = A.shape[0];
    let ok = true;
    if (A.shape.length !== 2 || A.shape[1] !== inDim) {
      problems.push(`module ${key}: lora_A has shape [${A.shape}], expected [r, ${inDim}]`);
      if (A.shape[1] !== inDim && (target !== 'o_proj' && target !== 'down_proj')) hiddenMismatch = true;
      ok = false;
    }
    if (B.shape.length !== 2 || B.shape[0] !== out || B.shape[1] !== r) { problems.push(`module ${key}: lora_B has shape [${B.shape}], expected [${out}, ${r}]`); ok = false; }
    if (M && (M.shape.length !== 1 || M.shape[0] !== out)) { problems.push(`module ${key}: lora_magnitude_vector has shape [${M.shape}], expected [${out}]`); ok = false; }
    if (!(r >= 1)) { problems.push(`module ${key}: rank 0 (lora_A has no rows)`); ok = false; }
    else if (r > limits.maxRank) { problems.push(`module ${key}: rank ${r} exceeds the server's maximum LoRA rank ${limits.maxRank}`); ok = false; }
    const scaling = config ? moduleScaling(config, key) : null;
    if (scaling && ok && scaling.rank !== r) { problems.push(`module ${key}: lora_A has rank ${r} but adapter_config.json resolves r=${scaling.rank} for it`); ok = false; }
    const scaleTrouble = scaling && config ? scaleProblem(`module ${key}: alpha ${scaling.alpha} with rank ${scaling.rank}`, scaling.alpha, scaling.rank, config.useRslora) : null;
    if (scaleTrouble && !problems.includes(scaleTrouble)) { problems.push(scaleTrouble); ok = false; }
    if (!ok) continue;
    const a = factor(A);
    const b = factor(B);
    const magnitude = M ? factor(M) : null;
    for (const [t, arr] of [[A, a], [B, b], [M, magnitude]] as const) if (arr && !allFinite(arr)) problems.push(`tensor ${t!.name} contains NaN or Inf values`);
    if (scaling) targets.push({ layer, target, rank: r, scale: scaling.scale, a, b, magnitude });
  }
  if (hiddenMismatch) problems.push(`the adapter's input sizes do not match this model's hidden size ${model.hiddenSize} (hint: trained for a different base model?)`);
  if (problems.length) return { adapter: null, problems, warnings };
  targets.sort((x, y) => x.layer - y.layer || TARGETS.indexOf(x.target) - TARGETS.indexOf(y.target));
  const bytes = targets.reduce((s, t) => s + t.a.byteLength + t.b.byteLength + (t.magnitude?.byteLength ?? 0) + (t.delta?.byteLength ?? 0), 0);
  return {
    adapter: { version: adapterVersion(files), targets, maxRank: Math.max(...targets.map((t) => t.rank)), useDora: config!.useDora, bytes, baseModel: config!.baseModel },
    problems,
    warnings,
  };
}

// Where JSON.parse failed, never what it read there (its message quotes the content).
function jsonErrorAt(message: string): string {
  const at = /at position (\d+)/.exec(message);
  if (at) return ` (at character ${at[1]})`;
  return /end of JSON input/.test(message) ? ' (it ends early)' : '';
}

function allFinite(a: Float32Array): boolean {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return false;
  return true;
}

// decodeAdapter, throwing a 422 LoraserveError that lists every problem.
export function decodeAdapterOrThrow(files: AdapterFiles, model: ModelConfig, limits: AdapterLimits, name: string): { adapter: LoraAdapter; warnings: string[] } {
  const r = decodeAdapter(files, model, limits);
  if (!r.adapter) throw new LoraserveError('invalid_adapter', `adapter ${JSON.stringify(name)} is invalid: ${r.problems.join('; ')}`, { problems: r.problems });
  return { adapter: r.adapter, warnings: r.warnings };
}
