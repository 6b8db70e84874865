// A Hugging Face model directory → LoadedModel (config, float32 weights, tokenizer files).
// Shared by the server, the CLI, the trainer and the benchmarks. A GPTQ checkpoint (config.json
// quantization_config, gptq.ts) has its quantized linears dequantized into the float32 weights,
// or, with keepQuantized (the served runtime), repacked for MatMulNBits beside them.
import { existsSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { ModelConfigError } from './errors.ts';
import { parseModelConfig } from './model-config.ts';
import type { ModelConfig } from './model-config.ts';
import { readSafetensorsFile } from './safetensors.ts';
import type { Dtype } from './safetensors.ts';
import { tensorToF32 } from './dtype.ts';
import { TARGETS, targetHasBias, targetOfPath, targetPath, targetShape } from './model-targets.ts';
import type { Weights } from './llama-graph.ts';
import { GPTQ_SUFFIXES, dequantizeGptq, gptqTensorProblems, gptqTensorsOf, parseGptqConfig, repackGptq } from './gptq.ts';
import type { GptqConfig, PrequantizedLinear } from './gptq.ts';
import type { TensorEntry } from './safetensors.ts';

export interface LoadedModel {
  dir: string;
  name: string;                       // the id served as the base model
  config: ModelConfig;
  quantization: GptqConfig | null;    // a pre-quantized GPTQ checkpoint (gptq.ts), or null
  weights: Weights;                   // HF names → float32 data (a GPTQ linear's W0 dequantized unless kept)
  prequantized: Map<string, PrequantizedLinear>; // keepQuantized: `<path>.weight` → MatMulNBits' layout, not in weights
  weightDtype: Dtype;                 // storage dtype of the checkpoint (most common)
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
}

function readJson(path: string, required: boolean): Record<string, unknown> {
  if (!existsSync(path)) {
    if (required) throw new ModelConfigError(`${path} is missing`);
    return {};
  }
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new ModelConfigError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
}

export function loadModel(dirArg: string, opts: { name?: string; keepQuantized?: boolean } = {}): LoadedModel {
  const files = loadModelFiles(dirArg, opts);
  const { weights, quantized, dtype } = readWeights(files.dir, files.quantization !== null);
  checkWeights(files.config, weights, files.quantization, quantized);
  const prequantized = new Map<string, PrequantizedLinear>();
  for (const path of quantizedLinears(files.config, quantized)) {
    const [n, k] = linearShape(files.config, path);
    const t = gptqTensorsOf(path, (name) => quantized.get(name));
    if (opts.keepQuantized) prequantized.set(`${path}.weight`, repackGptq(files.quantization!, t, n, k, path));
    else weights.set(`${path}.weight`, dequantizeGptq(files.quantization!, t, n, k, path));
  }
  return { ...files, weights, prequantized, weightDtype: dtype };
}

// Everything but the weights: config, tokenizer files and the served name (cheap).
export function loadModelFiles(dirArg: string, opts: { name?: string } = {}): Omit<LoadedModel, 'weights' | 'weightDtype' | 'prequantized'> {
  const dir = resolve(dirArg);
  if (!existsSync(dir)) throw new ModelConfigError(`model directory ${dir} does not exist`);
  const configJson = readJson(join(dir, 'config.json'), true);
  const autoGptq = join(dir, 'quantize_config.json'); // AutoGPTQ's own file, when config.json has none
  return {
    dir,
    name: opts.name ?? basename(dir),
    config: parseModelConfig(configJson, readJson(join(dir, 'generation_config.json'), false)),
    quantization: configJson.quantization_config != null ? parseGptqConfig(configJson.quantization_config)
      : existsSync(autoGptq) ? parseGptqConfig(readJson(autoGptq, true), autoGptq) : null,
    tokenizerJson: readJson(join(dir, 'tokenizer.json'), true),
    tokenizerConfig: readJson(join(dir, 'tokenizer_config.json'), false),
  };
}

// model.safetensors, or shards listed in model.safetensors.index.json. With `gptq`, the packed
// tensors (qweight, qzeros, scales, g_idx) are kept as stored, in `quantized`.
function readWeights(dir: string, gptq: boolean): { weights: Weights; quantized: Map<string, TensorEntry>; dtype: Dtype } {
  const single = join(dir, 'model.safetensors');
  const index = join(dir, 'model.safetensors.index.json');
  const files: string[] = [];
  let weightMap: Record<string, string> | null = null;
  if (existsSync(index)) {
    const idx = readJson(index, true);
    if (typeof idx.weight_map !== 'object' || idx.weight_map === null) throw new ModelConfigError(`${index}: "weight_map" is missing`, 'weight_map');
    weightMap = idx.weight_map as Record<string, string>;
    for (const f of new Set(Object.values(weightMap))) {
      if (f.includes('/') || f.includes('\\')) throw new ModelConfigError(`${index}: shard name ${f} must be a file in the model directory`, 'weight_map');
      files.push(join(dir, f));
    }
  } else if (existsSync(single)) {
    files.push(single);
  } else {
    const bin = ['pytorch_model.bin', 'model.bin'].find((f) => existsSync(join(dir, f)));
    throw new ModelConfigError(bin ? `${dir}: ${bin} is a pickle checkpoint; only safetensors weights are loaded (pickle can run code)` : `${dir}: no model.safetensors or model.safetensors.index.json`);
  }
  const weights: Weights = new Map();
  const quantized = new Map<string, TensorEntry>();
  const counts = new Map<Dtype, number>();
  for (const file of files) {
    const st = readSafetensorsFile(file);
    for (const [name, t] of st.tensors) {
      if (name.endsWith('.rotary_emb.inv_freq')) continue; // non-persistent buffer in old checkpoints
      if (weights.has(name) || quantized.has(name)) throw new ModelConfigError(`weight ${name} appears in two shards`, name);
      if (weightMap && weightMap[name] !== basename(file)) throw new ModelConfigError(`weight ${name} is in ${basename(file)} but the index says ${weightMap[name]}`, name);
      if (gptq && isGptqTensor(name)) { quantized.set(name, t); continue; }
      weights.set(name, tensorToF32(t));
      counts.set(t.dtype, (counts.get(t.dtype) ?? 0) + t.bytes.byteLength);
    }
  }
  if (weightMap) {
    for (const name of Object.keys(weightMap)) {
      if (!weights.has(name) && !quantized.has(name) && !name.endsWith('.rotary_emb.inv_freq')) throw new ModelConfigError(`weight ${name} is listed in the index but missing from ${weightMap[name]}`, name);
    }
  }
  const dtype = [...counts.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 'F32';
  return { weights, quantized, dtype };
}

const isGptqTensor = (name: string): boolean => (GPTQ_SUFFIXES as readonly string[]).some((s) => name.endsWith(`.${s}`));

// The projections stored GPTQ-packed (those with a qweight); the others keep a float `.weight`.
function quantizedLinears(cfg: ModelConfig, quantized: Map<string, unknown>): string[] {
  const paths: string[] = [];
  for (let l = 0; l < cfg.numLayers; l++) for (const t of TARGETS) if (quantized.has(`${targetPath(l, t)}.qweight`)) paths.push(targetPath(l, t));
  return paths;
}

function linearShape(cfg: ModelConfig, path: string): [number, number] {
  return targetShape(cfg, targetOfPath(path)!);
}

// Every weight the config implies, with its shape; refuses missing, misshapen and unknown weights.
export function expectedWeights(cfg: ModelConfig): Map<string, number[]> {
  const D = cfg.hiddenSize;
  const m = new Map<string, number[]>();
  m.set('model.embed_tokens.weight', [cfg.vocabSize, D]);
  m.set('model.norm.weight', [D]);
  if (!cfg.tieWordEmbeddings) m.set('lm_head.weight', [cfg.vocabSize, D]);
  for (let l = 0; l < cfg.numLayers; l++) {
    m.set(`model.layers.${l}.input_layernorm.weight`, [D]);
    m.set(`model.layers.${l}.post_attention_layernorm.weight`, [D]);
    for (const t of TARGETS) {
      const [out, inDim] = targetShape(cfg, t);
      m.set(`${targetPath(l, t)}.weight`, [out, inDim]);
      if (targetHasBias(cfg, t)) m.set(`${targetPath(l, t)}.bias`, [out]);
    }
  }
  return m;
}

// A GPTQ checkpoint: a projection with a qweight needs qweight, qzeros, scales (and may have g_idx)
// of gptq.ts' shapes in place of its `.weight`; one without keeps a float `.weight`.
export function checkWeights(cfg: ModelConfig, weights: Weights, gptq: GptqConfig | null = null, quantized: Map<string, TensorEntry> = new Map()): void {
  const expected = expectedWeights(cfg);
  const problems: string[] = [];
  const packed = new Set(quantizedLinears(cfg, quantized));
  for (const [name, shape] of expected) {
    const path = name.slice(0, -'.weight'.length);
    if (gptq && packed.has(path)) {
      problems.push(...gptqTensorProblems(gptq, path, shape[0], shape[1], (n) => quantized.get(n)));
      if (weights.has(name)) problems.push(`weight ${name} is stored beside ${path}.qweight (either float or GPTQ, not both)`);
      continue;
    }
    const t = weights.get(name);
    const count = shape.reduce((a, b) => a * b, 1);
    if (!t) problems.push(`missing weight ${name} [${shape}]`);
    else if (t.length !== count) problems.push(`weight ${name} has ${t.length} values, expected shape [${shape}] from config.json`);
  }
  for (const name of weights.keys()) {
    if (name === 'lm_head.weight' && cfg.tieWordEmbeddings) continue; // some exporters keep the tied copy; unused
    if (!expected.has(name)) problems.push(`unexpected weight ${name} (not part of this architecture's config)`);
  }
  for (const name of quantized.keys()) {
    const path = name.slice(0, name.lastIndexOf('.'));
    if (!packed.has(path)) problems.push(`unexpected weight ${name} (${expected.has(`${path}.weight`) ? `no ${path}.qweight beside it` : "not part of this architecture's config"})`);
  }
  if (problems.length) throw new ModelConfigError(`model weights do not match config.json: ${problems.slice(0, 10).join('; ')}${problems.length > 10 ? `; and ${problems.length - 10} more` : ''}`);
}
