// A Hugging Face model directory → LoadedModel (config, float32 weights, tokenizer files).
// Shared by the server, the CLI, the trainer and the benchmarks.
import { existsSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { ModelConfigError } from './errors.ts';
import { parseModelConfig } from './model-config.ts';
import type { ModelConfig } from './model-config.ts';
import { readSafetensorsFile } from './safetensors.ts';
import type { Dtype } from './safetensors.ts';
import { tensorToF32 } from './dtype.ts';
import { TARGETS, targetHasBias, targetPath, targetShape } from './model-targets.ts';
import type { Weights } from './llama-graph.ts';

export interface LoadedModel {
  dir: string;
  name: string;                       // the id served as the base model
  config: ModelConfig;
  weights: Weights;                   // HF names → float32 data
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

export function loadModel(dirArg: string, opts: { name?: string } = {}): LoadedModel {
  const files = loadModelFiles(dirArg, opts);
  const { weights, dtype } = readWeights(files.dir);
  checkWeights(files.config, weights);
  return { ...files, weights, weightDtype: dtype };
}

// Everything but the weights: config, tokenizer files and the served name (cheap).
export function loadModelFiles(dirArg: string, opts: { name?: string } = {}): Omit<LoadedModel, 'weights' | 'weightDtype'> {
  const dir = resolve(dirArg);
  if (!existsSync(dir)) throw new ModelConfigError(`model directory ${dir} does not exist`);
  return {
    dir,
    name: opts.name ?? basename(dir),
    config: parseModelConfig(readJson(join(dir, 'config.json'), true), readJson(join(dir, 'generation_config.json'), false)),
    tokenizerJson: readJson(join(dir, 'tokenizer.json'), true),
    tokenizerConfig: readJson(join(dir, 'tokenizer_config.json'), false),
  };
}

// model.safetensors, or shards listed in model.safetensors.index.json.
function readWeights(dir: string): { weights: Weights; dtype: Dtype } {
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
  const counts = new Map<Dtype, number>();
  for (const file of files) {
    const st = readSafetensorsFile(file);
    for (const [name, t] of st.tensors) {
      if (name.endsWith('.rotary_emb.inv_freq')) continue; // non-persistent buffer in old checkpoints
      if (weights.has(name)) throw new ModelConfigError(`weight ${name} appears in two shards`, name);
      if (weightMap && weightMap[name] !== basename(file)) throw new ModelConfigError(`weight ${name} is in ${basename(file)} but the index says ${weightMap[name]}`, name);
      weights.set(name, tensorToF32(t));
      counts.set(t.dtype, (counts.get(t.dtype) ?? 0) + t.bytes.byteLength);
    }
  }
  if (weightMap) {
    for (const name of Object.keys(weightMap)) {
      if (!weights.has(name) && !name.endsWith('.rotary_emb.inv_freq')) throw new ModelConfigError(`weight ${name} is listed in the index but missing from ${weightMap[name]}`, name);
    }
  }
  const dtype = [...counts.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 'F32';
  return { weights, dtype };
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

export function checkWeights(cfg: ModelConfig, weights: Weights): void {
  const expected = expectedWeights(cfg);
  const problems: string[] = [];
  for (const [name, shape] of expected) {
    const t = weights.get(name);
    const count = shape.reduce((a, b) => a * b, 1);
    if (!t) problems.push(`missing weight ${name} [${shape}]`);
    else if (t.length !== count) problems.push(`weight ${name} has ${t.length} values, expected shape [${shape}] from config.json`);
  }
  for (const name of weights.keys()) {
    if (name === 'lm_head.weight' && cfg.tieWordEmbeddings) continue; // some exporters keep the tied copy; unused
    if (!expected.has(name)) problems.push(`unexpected weight ${name} (not part of this architecture's config)`);
  }
  if (problems.length) throw new ModelConfigError(`model weights do not match config.json: ${problems.slice(0, 10).join('; ')}${problems.length > 10 ? `; and ${problems.length - 10} more` : ''}`);
}
