// loraserve export --model DIR --adapter DIR|NAME --out DIR [--adapters STORE] [--shard-mb N] [--overwrite]
//
// Writes a full Hugging Face checkpoint with one adapter merged in, as PEFT's merge_and_unload does
// (reference §1.7): W = W0 + s·B·A for every target; DoRA: W = (m / ‖W0 + s·B·A‖_row) ⊙ (W0 + s·B·A).
// The math is merge-lora.ts's mergeLora, the same the server's merged path reproduces.
//   - Every tensor keeps its stored dtype: untouched tensors are copied byte for byte; a merged one
//     is computed in float32 from W0 and rounded once to its dtype (F32, F16 or BF16), as PEFT
//     rounds W0 + ΔW into a half-precision base.
//   - Weights go into model.safetensors, or, when they exceed --shard-mb (MB = 10⁶ bytes, default
//     2000), into model-0000i-of-0000N.safetensors shards filled greedily in checkpoint order, with
//     model.safetensors.index.json ({metadata: {total_size}, weight_map}) as huggingface_hub writes it.
//   - config.json, generation_config.json, the tokenizer files and every other top-level regular
//     file of the model directory except its weights are copied unchanged.
//   - Atomic: everything is written into a temporary directory beside --out, which is renamed to
//     --out at the end. An existing --out is refused unless --overwrite.
// --adapter is an adapter directory (adapter_config.json + adapter_model.safetensors); a value that
// is not a directory is taken as an adapter name in the store --adapters (default ./adapters).
import { closeSync, copyFileSync, existsSync, fsyncSync, lstatSync, openSync, readFileSync, readdirSync, realpathSync, renameSync, rmSync, statSync, writeSync, mkdirSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { parseFlags } from '../runtime/cli-args.ts';
import { invalidField, LoraserveError, ModelConfigError } from '../runtime/errors.ts';
import { expectedWeights, loadModelFiles } from '../runtime/model-loader.ts';
import { readSafetensorsFile } from '../runtime/safetensors.ts';
import type { Dtype, TensorEntry } from '../runtime/safetensors.ts';
import { f32ToDtypeBytes, tensorToF32 } from '../runtime/dtype.ts';
import { targetPath, targetShape } from '../runtime/model-targets.ts';
import { CONFIG_FILE, decodeAdapterOrThrow, readAdapterDir } from '../adapters/lora-adapter.ts';
import { checkAdapterName } from '../adapters/adapter-store.ts';
import { mergeDelta, mergeLora } from './merge-lora.ts';

export const DEFAULT_SHARD_MB = 2000;
export const INDEX_FILE = 'model.safetensors.index.json';

export interface ExportOptions {
  model: string;        // model directory
  adapter: string;      // adapter directory (resolved)
  out: string;
  shardBytes: number;   // a shard holds at most this many tensor bytes (a bigger tensor gets one of its own)
  overwrite: boolean;
}

export interface ExportResult {
  out: string;
  files: string[];                  // weight files written (shards, or model.safetensors)
  totalSize: number;                // tensor bytes, as the index's metadata.total_size
  mergedTargets: number;
  dtypes: Partial<Record<Dtype, number>>; // tensor count per dtype written
  useDora: boolean;
  adapterVersion: string;
  warnings: string[];
}

const OPTIONS = {
  model: { type: 'string' },
  adapter: { type: 'string' },
  adapters: { type: 'string', default: './adapters' },
  out: { type: 'string' },
  'shard-mb': { type: 'string' },
  overwrite: { type: 'boolean', default: false },
} as const;

// argv → ExportOptions; every refusal names its flag.
export function parseExportArgs(argv: string[]): ExportOptions {
  let values: { model?: string; adapter?: string; adapters?: string; out?: string; 'shard-mb'?: string; overwrite?: boolean };
  try {
    ({ values } = parseFlags({ args: argv, options: OPTIONS, strict: true, allowPositionals: false }));
  } catch (e) {
    throw invalidField('argv', `${(e as Error).message}; usage: loraserve export --model DIR --adapter DIR|NAME --out DIR [--adapters STORE] [--shard-mb N] [--overwrite]`);
  }
  for (const flag of ['model', 'adapter', 'out'] as const) if (!values[flag]) throw invalidField(`--${flag}`, `--${flag} is required`);
  let shardBytes = DEFAULT_SHARD_MB * 1e6;
  if (values['shard-mb'] !== undefined) {
    const mb = Number(values['shard-mb']);
    if (!(Number.isFinite(mb) && mb > 0)) throw invalidField('--shard-mb', `--shard-mb must be a positive number of megabytes (10⁶ bytes), got ${JSON.stringify(values['shard-mb'])}`);
    shardBytes = Math.max(1, Math.floor(mb * 1e6));
  }
  const model = resolve(values.model!);
  if (!isDir(model)) throw invalidField('--model', `--model ${model} is not a directory`);
  const out = resolve(values.out!);
  return { model, adapter: resolveAdapter(values.adapter!, values.adapters!), out, shardBytes, overwrite: values.overwrite ?? false };
}

// A directory with adapter_config.json is used as is; anything else must be an adapter name in the store.
function resolveAdapter(value: string, store: string): string {
  const asDir = resolve(value);
  if (isDir(asDir)) {
    if (!existsSync(join(asDir, CONFIG_FILE))) throw invalidField('--adapter', `--adapter ${asDir} is a directory without ${CONFIG_FILE}`);
    return realpathSync(asDir);
  }
  let name: string;
  try {
    name = checkAdapterName(value, '--adapter');
  } catch {
    throw invalidField('--adapter', `--adapter ${JSON.stringify(value)} is neither an adapter directory nor an adapter name`);
  }
  const dir = join(resolve(store), name);
  if (!isDir(dir)) throw invalidField('--adapter', `--adapter ${JSON.stringify(value)} is not a directory, and the store ${resolve(store)} (--adapters) has no adapter of that name`);
  return realpathSync(dir);
}

function isDir(p: string): boolean {
  return statSync(p, { throwIfNoEntry: false })?.isDirectory() ?? false;
}

// The checkpoint's tensors as stored, in checkpoint order (shard by shard, by offset within a file).
function readCheckpoint(dir: string): TensorEntry[] {
  const index = join(dir, INDEX_FILE);
  const single = join(dir, 'model.safetensors');
  let files: string[];
  if (existsSync(index)) {
    let idx: { weight_map?: Record<string, string> };
    try {
      idx = JSON.parse(readFileSync(index, 'utf8')) as typeof idx;
    } catch (e) {
      throw new ModelConfigError(`${index} is not valid JSON: ${(e as Error).message}`);
    }
    if (typeof idx.weight_map !== 'object' || idx.weight_map === null) throw new ModelConfigError(`${index}: "weight_map" is missing`, 'weight_map');
    files = [...new Set(Object.values(idx.weight_map))].map((f) => {
      if (f.includes('/') || f.includes('\\')) throw new ModelConfigError(`${index}: shard name ${f} must be a file in the model directory`, 'weight_map');
      return join(dir, f);
    });
  } else if (existsSync(single)) files = [single];
  else throw new ModelConfigError(`${dir}: no model.safetensors or ${INDEX_FILE} (--model)`);
  const all: TensorEntry[] = [];
  const seen = new Set<string>();
  for (const f of files) {
    const st = readSafetensorsFile(f);
    const entries = [...st.tensors.values()].sort((x, y) => x.bytes.byteOffset - y.bytes.byteOffset);
    for (const t of entries) {
      if (seen.has(t.name)) throw new ModelConfigError(`weight ${t.name} appears in two shards`, t.name);
      seen.add(t.name);
      all.push(t);
    }
  }
  return all;
}


// The weight files of a model directory, which are not copied.
const isWeightFile = (f: string): boolean => f === INDEX_FILE || /\.(safetensors|bin|pt|pth|ckpt|gguf|msgpack|h5)$/.test(f) || /\.safetensors\.index\.json$/.test(f) || /\.bin\.index\.json$/.test(f);

export async function exportMerged(opts: ExportOptions): Promise<ExportResult> {
  const modelDir = realpathSync(opts.model);
  const out = resolve(opts.out);
  if (out === modelDir || out.startsWith(`${modelDir}/`)) throw invalidField('--out', `--out ${out} is the model directory or inside it`);
  if (out === opts.adapter || out.startsWith(`${opts.adapter}/`)) throw invalidField('--out', `--out ${out} is the adapter directory or inside it`);
  if (lstatSync(out, { throwIfNoEntry: false }) && !opts.overwrite) throw invalidField('--out', `--out ${out} already exists; pass --overwrite to replace it`);
  if (!isDir(dirname(out))) throw invalidField('--out', `--out: the parent directory ${dirname(out)} does not exist`);

  const model = loadModelFiles(modelDir);
  const cfg = model.config;
  // PEFT refuses to merge into a GPTQ base too (formats-and-apis.md §6): writing W0 + ΔW back in
  // GPTQ's format would be a re-quantization that loses most of a small ΔW (docs/quantization.md)
  if (model.quantization) throw new ModelConfigError(`--model ${modelDir} is a GPTQ checkpoint (${model.quantization.bits}-bit, quantization_config in config.json): export merges into a float checkpoint only; serve the adapter over it unmerged instead`, 'quantization_config');
  const tensors = readCheckpoint(modelDir);
  const byName = new Map(tensors.map((t) => [t.name, t]));
  const problems: string[] = [];
  for (const [name, shape] of expectedWeights(cfg)) {
    const t = byName.get(name);
    const count = shape.reduce((a, b) => a * b, 1);
    if (!t) problems.push(`missing weight ${name} [${shape}]`);
    else if (t.shape.reduce((a, b) => a * b, 1) !== count) problems.push(`weight ${name} has shape [${t.shape}], expected [${shape}] from config.json`);
  }
  if (problems.length) throw new ModelConfigError(`--model ${modelDir}: weights do not match config.json: ${problems.slice(0, 10).join('; ')}`);

  const files = await readAdapterDir(opts.adapter);
  const { adapter, warnings } = decodeAdapterOrThrow(files, cfg, { maxRank: Number.MAX_SAFE_INTEGER, modelName: model.name }, basename(opts.adapter));

  // merge: W0 (as stored) → float32 → mergeLora → the stored dtype
  const replaced = new Map<string, Uint8Array>();
  for (const t of adapter.targets) {
    const name = `${targetPath(t.layer, t.target)}.weight`;
    const w0 = byName.get(name)!;
    if (w0.dtype !== 'F32' && w0.dtype !== 'F16' && w0.dtype !== 'BF16') throw new ModelConfigError(`--model: weight ${name} is ${w0.dtype}; only F32, F16 and BF16 weights can take a merge`, name);
    const [rows, cols] = targetShape(cfg, t.target);
    const merged = t.delta ? mergeDelta(tensorToF32(w0), t.delta) : mergeLora(tensorToF32(w0), { a: t.a, b: t.b, rank: t.rank, scale: t.scale, magnitude: t.magnitude }, rows, cols);
    for (let i = 0; i < merged.length; i++) {
      if (!Number.isFinite(merged[i])) throw new LoraserveError('invalid_adapter', `--adapter: merging into ${name} gives a non-finite value (a DoRA magnitude over a zero row norm?); nothing was written`);
    }
    replaced.set(name, f32ToDtypeBytes(merged, w0.dtype));
  }

  // shards: greedy in checkpoint order, as huggingface_hub's split_state_dict_into_shards
  const shards: TensorEntry[][] = [[]];
  let size = 0;
  for (const t of tensors) {
    const n = t.bytes.byteLength;
    if (size > 0 && size + n > opts.shardBytes) { shards.push([]); size = 0; }
    shards.at(-1)!.push(t);
    size += n;
  }
  const names = shards.length === 1 ? ['model.safetensors'] : shards.map((_, i) => `model-${pad5(i + 1)}-of-${pad5(shards.length)}.safetensors`);

  const tmp = join(dirname(out), `.${basename(out)}.tmp-${process.pid}-${Date.now()}`);
  mkdirSync(tmp);
  try {
    const weightMap: Record<string, string> = {};
    const dtypes: Partial<Record<Dtype, number>> = {};
    let totalSize = 0;
    shards.forEach((shard, i) => {
      writeSafetensorsStreaming(join(tmp, names[i]), shard.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, bytes: replaced.get(t.name) ?? t.bytes })), {
        format: 'pt', 'loraserve.adapter_version': adapter.version,
      });
      for (const t of shard) { weightMap[t.name] = names[i]; totalSize += t.bytes.byteLength; dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + 1; }
    });
    if (shards.length > 1) {
      const sorted = Object.fromEntries(Object.keys(weightMap).sort().map((k) => [k, weightMap[k]]));
      writeSynced(join(tmp, INDEX_FILE), new TextEncoder().encode(`${JSON.stringify({ metadata: { total_size: totalSize }, weight_map: sorted }, null, 2)}\n`));
    }
    for (const f of readdirSync(modelDir)) {
      if (isWeightFile(f)) continue;
      if (!lstatSync(join(modelDir, f)).isFile()) continue; // links and subdirectories stay behind
      copyFileSync(join(modelDir, f), join(tmp, f));
    }
    syncDir(tmp);
    if (lstatSync(out, { throwIfNoEntry: false })) {
      if (!opts.overwrite) throw invalidField('--out', `--out ${out} appeared while the export ran; pass --overwrite to replace it`);
      const old = join(dirname(out), `.${basename(out)}.old-${process.pid}-${Date.now()}`);
      renameSync(out, old);
      renameSync(tmp, out);
      rmSync(old, { recursive: true, force: true });
    } else renameSync(tmp, out);
    syncDir(dirname(out));
    return { out, files: names, totalSize, mergedTargets: replaced.size, dtypes, useDora: adapter.useDora, adapterVersion: adapter.version, warnings };
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

const pad5 = (n: number): string => String(n).padStart(5, '0');

interface RawTensor { name: string; dtype: Dtype; shape: number[]; bytes: Uint8Array }

const DTYPE_BYTES: Partial<Record<Dtype, number>> = { F64: 8, I64: 8, U64: 8, F32: 4, I32: 4, U32: 4, F16: 2, BF16: 2, I16: 2, U16: 2 };

// A safetensors file written piece by piece (no copy of the whole shard in memory): the layout of
// encodeSafetensors (header padded with spaces to 8 bytes), tensors ordered by element size, largest
// first, then by name, as the safetensors library orders them, so every tensor stays aligned.
export function writeSafetensorsStreaming(path: string, tensors: RawTensor[], metadata: Record<string, string>): void {
  const order = [...tensors].sort((x, y) => (DTYPE_BYTES[y.dtype] ?? 1) - (DTYPE_BYTES[x.dtype] ?? 1) || (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of order) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.byteLength] };
    offset += t.bytes.byteLength;
  }
  let json = JSON.stringify(header);
  const rawLen = new TextEncoder().encode(json).byteLength;
  json += ' '.repeat(Math.ceil(rawLen / 8) * 8 - rawLen);
  const headerBytes = new TextEncoder().encode(json);
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  const fd = openSync(path, 'w');
  try {
    writeAll(fd, len);
    writeAll(fd, headerBytes);
    for (const t of order) writeAll(fd, t.bytes);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.byteLength) done += writeSync(fd, bytes, done, Math.min(bytes.byteLength - done, 1 << 30));
}

function writeSynced(path: string, bytes: Uint8Array): void {
  const fd = openSync(path, 'w');
  try { writeAll(fd, bytes); fsyncSync(fd); } finally { closeSync(fd); }
}

function syncDir(dir: string): void {
  try {
    const fd = openSync(dir, 'r');
    try { fsyncSync(fd); } finally { closeSync(fd); }
  } catch { /* some file systems refuse fsync on a directory */ }
}

export async function exportCommand(argv: string[]): Promise<void> {
  const opts = parseExportArgs(argv);
  const t0 = performance.now();
  const r = await exportMerged(opts);
  for (const w of r.warnings) process.stderr.write(`loraserve export: warning: ${w}\n`);
  const dt = Object.entries(r.dtypes).map(([d, n]) => `${n} ${d}`).join(', ');
  process.stdout.write(`exported ${opts.model} + ${opts.adapter} (version ${r.adapterVersion}${r.useDora ? ', DoRA' : ''}) → ${r.out}: ` +
    `${r.mergedTargets} projections merged, ${(r.totalSize / 1e6).toFixed(1)} MB of weights (${dt}) in ${r.files.length === 1 ? 'model.safetensors' : `${r.files.length} shards + ${INDEX_FILE}`}, ` +
    `${((performance.now() - t0) / 1000).toFixed(1)} s. Serve it with: npm start -- --model ${r.out}\n`);
}
