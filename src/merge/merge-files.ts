// Merging adapter FILES: the pipeline that POST /v1/adapters/merge (in a worker thread) and
// `loraserve merge` share. PEFT directories in, a PEFT directory's files out:
//   parseMergeRequest   the JSON body / CLI flags → MergeRequest (every refusal a 400 naming its field)
//   planInputs          cheap checks on the inputs' configs before any tensor is touched: the
//                       shared base model, PEFT's rank rules (planMerge), the server's rank limit
//   mergeFiles          decode → mergeAdapters → adapter_config.json + adapter_model.safetensors + recipe
// The result is a plain PEFT LoRA (docs/merging.md): r = lora_alpha = the result's rank (scale 1),
// use_rslora and use_dora false, no rank/alpha patterns, target_modules the union of the inputs'
// targets, F32 tensors under PEFT's names. With output "merged" (delta-space types) it holds each
// target's ΔW instead of factors, as `…<proj>.delta_weight` [out, in] (lora-adapter.ts
// deltaTensorName): loraserve serves it on the merged path only, and `loraserve export` writes it
// into a full checkpoint; PEFT itself cannot load it.
import { invalidField, LoraserveError } from '../runtime/errors.ts';
import { encodeSafetensors } from '../runtime/safetensors.ts';
import type { TensorToWrite } from '../runtime/safetensors.ts';
import { TARGETS } from '../runtime/model-targets.ts';
import type { Target } from '../runtime/model-targets.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import { decodeAdapterOrThrow, deltaTensorName, peftTensorName } from '../adapters/lora-adapter.ts';
import type { AdapterFiles, AdapterLimits } from '../adapters/lora-adapter.ts';
import { checkAdapterName } from '../adapters/adapter-store.ts';
import { COMBINATION_TYPES, planMerge } from './merge-options.ts';
import type { CombinationType, MajoritySignMethod, MergeOptions, MergePlan } from './merge-options.ts';
import { mergeAdapters, mergeInputFromAdapter } from './merge-adapters.ts';

export interface MergeRequest {
  name: string;
  adapters: string[];
  weights: number[];
  options: MergeOptions;
}

// One input: its name (served name, or directory name for the CLI), version (content hash) and files.
export interface MergeInputFiles {
  name: string;
  version: string;
  files: AdapterFiles;
}

// Stored beside the merged adapter (merge_recipe.json) and listed with it.
export interface MergeRecipe {
  combination_type: CombinationType;     // as requested
  combination_applied: CombinationType;  // after PEFT's "one adapter ⇒ linear" rule
  inputs: { name: string; version: string; weight: number }[];
  weights: number[];
  density: number | null;
  majority_sign_method: MajoritySignMethod;
  svd_rank: number | null;
  svd_clamp: number | null;
  seed: number;
  output: 'factored' | 'merged';        // merged: ΔW kept as is (delta types), served on the merged path only
  rank: number;                          // the result's r (= lora_alpha); for output merged, the config's nominal r
  relative_error: number | null;         // max over targets of ‖ΔW − B·A‖_F / ‖ΔW‖_F (SVD-factored types; 0 for output merged)
  base_model: string | null;             // the inputs' common base_model_name_or_path, if any names one
  created: number;                       // unix seconds
}

export interface MergedFiles {
  files: AdapterFiles;
  recipe: MergeRecipe;
}

const FIELDS = ['name', 'adapters', 'weights', 'combination_type', 'density', 'majority_sign_method', 'svd_rank', 'svd_clamp', 'seed', 'output'];

// The request body (or the CLI's flags, as the same object) → MergeRequest. Types and presence are
// checked here; ranges by planMerge (later, with the inputs' ranks), except what needs no inputs.
export function parseMergeRequest(body: unknown): MergeRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw invalidField('body', 'the merge request must be a JSON object {name, adapters, weights, combination_type, …}');
  const b = body as Record<string, unknown>;
  for (const k of Object.keys(b)) if (!FIELDS.includes(k)) throw invalidField(k, `unknown field ${JSON.stringify(k)}; a merge takes ${FIELDS.join(', ')}`);
  const name = checkAdapterName(b.name, 'name');
  if (!Array.isArray(b.adapters)) throw invalidField('adapters', "'adapters' must be a list of adapter names");
  if (b.adapters.length === 0) throw invalidField('adapters', "'adapters' must list at least one adapter");
  b.adapters.forEach((a, i) => { if (typeof a !== 'string' || a.length === 0) throw invalidField('adapters', `adapters[${i}] must be an adapter name (a string)`); });
  const adapters = b.adapters as string[];
  const dup = adapters.find((a, i) => adapters.indexOf(a) !== i);
  if (dup !== undefined) throw invalidField('adapters', `adapters lists ${JSON.stringify(dup)} twice; give it once, with the sum of its weights`);
  if (!Array.isArray(b.weights)) throw invalidField('weights', "'weights' must be a list of numbers, one per adapter");
  if (b.weights.length !== adapters.length) throw invalidField('weights', `weights has ${b.weights.length} entries but adapters has ${adapters.length}; they must be the same length`);
  b.weights.forEach((w, i) => { if (typeof w !== 'number' || !Number.isFinite(w)) throw invalidField('weights', `weights[${i}] must be a finite number`); });
  if (typeof b.combination_type !== 'string') throw invalidField('combination_type', `'combination_type' is required: one of ${COMBINATION_TYPES.join(', ')}`);
  const opt = <T>(k: string, type: string): T | null => {
    const v = b[k];
    if (v === undefined || v === null) return null;
    if (typeof v !== type) throw invalidField(k, `'${k}' must be a ${type}, got ${JSON.stringify(v)}`);
    return v as T;
  };
  const options: MergeOptions = {
    combination_type: b.combination_type as CombinationType,
    density: opt<number>('density', 'number'),
    majority_sign_method: opt<MajoritySignMethod>('majority_sign_method', 'string') ?? undefined,
    svd_rank: opt<number>('svd_rank', 'number'),
    svd_clamp: opt<number>('svd_clamp', 'number'),
    seed: opt<number>('seed', 'number') ?? undefined,
    output: opt<'factored' | 'merged'>('output', 'string') ?? undefined,
  };
  // every field's own range, checked by planMerge with stand-in ranks before any input is read
  // (output "merged" with a non-delta type gets planMerge's own 400)
  planMerge(adapters.map(() => 1), b.weights as number[], options);
  return { name, adapters, weights: b.weights as number[], options };
}

interface ConfigFacts { r: number; base: string | null; revision: string | null }

function configFacts(input: MergeInputFiles): ConfigFacts {
  let c: Record<string, unknown>;
  try {
    c = JSON.parse(new TextDecoder().decode(input.files.config)) as Record<string, unknown>;
  } catch {
    throw new LoraserveError('invalid_adapter', `adapter ${JSON.stringify(input.name)}: adapter_config.json is not valid JSON`, { param: 'adapters' });
  }
  const str = (v: unknown): string | null => (typeof v === 'string' && v.trim() !== '' ? v.trim() : null);
  // PEFT's rank of an input (_check_add_weighted_adapter): r, or the largest of r and the
  // rank_pattern values when there are any
  const pattern = c.rank_pattern && typeof c.rank_pattern === 'object' && !Array.isArray(c.rank_pattern) ? Object.values(c.rank_pattern).filter((v): v is number => typeof v === 'number') : [];
  const r = typeof c.r === 'number' ? Math.max(c.r, ...pattern) : NaN;
  return { r, base: str(c.base_model_name_or_path), revision: str(c.revision) };
}

// Before any tensor is decoded: the inputs share a base model (where their configs name one: an
// adapter that names none is taken to be for the served model, like every adapter served here),
// PEFT's rank rules hold (planMerge on the configs' r) and the result fits the rank limit.
// A base that names the served model (its name, or a path ending in it: "models/default",
// "/srv/models/default") counts as that model, as decodeAdapter's base check reads it: adapters
// trained on the same model from different directories, or by a fine-tuning job, merge together.
export function planInputs(inputs: readonly MergeInputFiles[], req: MergeRequest, limits: AdapterLimits): { plan: MergePlan; base: string | null } {
  const { maxRank, modelName } = limits;
  const served = (b: string | null): string | null => (b !== null && (b === modelName || b.endsWith(`/${modelName}`)) ? modelName : b);
  const facts = inputs.map((x) => { const f = configFacts(x); return { ...f, base: served(f.base) }; });
  const named = facts.map((f, i) => ({ ...f, name: inputs[i].name })).filter((f) => f.base !== null);
  const base = named[0]?.base ?? null;
  const other = named.find((f) => f.base !== base || (f.revision !== null && named[0].revision !== null && f.revision !== named[0].revision));
  if (other) {
    const show = (f: (typeof named)[number]) => `${JSON.stringify(f.name)} (${f.base}${f.revision ? `@${f.revision}` : ''})`;
    throw invalidField('adapters', `adapters ${show(named[0])} and ${show(other)} were trained on different base models; only adapters of the same base can be merged`);
  }
  const plan = planMerge(facts.map((f) => f.r), req.weights, req.options);
  if (plan.rank > maxRank) {
    const param = req.options.svd_rank != null ? 'svd_rank' : 'adapters';
    throw invalidField(param, `the merged adapter would have rank ${plan.rank}, above the server's maximum LoRA rank ${maxRank} (--max-lora-rank)${param === 'adapters' ? '; choose an svd type with a smaller svd_rank' : ''}`);
  }
  return { plan, base };
}


// The whole merge: inputs' files → the merged adapter's files and recipe. Pure but for the clock.
export function mergeFiles(inputs: readonly MergeInputFiles[], req: MergeRequest, model: ModelConfig, limits: AdapterLimits): MergedFiles {
  if (inputs.length !== req.adapters.length) throw new Error(`mergeFiles: ${inputs.length} inputs for ${req.adapters.length} adapters`);
  const { base } = planInputs(inputs, req, limits);
  const decoded = inputs.map((x, i) => mergeInputFromAdapter(decodeAdapterOrThrow(x.files, model, limits, x.name).adapter, configFacts(x).r, i));
  const result = mergeAdapters(decoded, req.weights, req.options);
  const { plan } = result;
  const tensors: Record<string, TensorToWrite> = {};
  const kinds = new Set<Target>();
  for (const [key, t] of result.targets) {
    const [layerStr, target] = key.split('.') as [string, Target];
    const layer = Number(layerStr);
    kinds.add(target);
    if (t.kind === 'delta') {
      tensors[deltaTensorName(layer, target)] = { dtype: 'F32', shape: [t.out, t.in], data: t.delta };
      continue;
    }
    if (t.rank !== plan.rank) throw new Error(`mergeFiles: ${key} has rank ${t.rank}, the plan ${plan.rank}`);
    tensors[peftTensorName(layer, target, 'lora_A')] = { dtype: 'F32', shape: [t.rank, t.in], data: t.a };
    tensors[peftTensorName(layer, target, 'lora_B')] = { dtype: 'F32', shape: [t.out, t.rank], data: t.b };
  }
  const config = {
    base_model_name_or_path: base,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layers_pattern: null,
    layers_to_transform: null,
    lora_alpha: plan.loraAlpha,
    lora_dropout: 0,
    modules_to_save: null,
    peft_type: 'LORA',
    r: plan.rank,
    target_modules: TARGETS.filter((t) => kinds.has(t)),
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: false,
  };
  const o = req.options;
  const recipe: MergeRecipe = {
    combination_type: o.combination_type,
    combination_applied: plan.combination,
    inputs: inputs.map((x, i) => ({ name: x.name, version: x.version, weight: req.weights[i] })),
    weights: [...req.weights],
    density: plan.density,
    majority_sign_method: plan.majoritySignMethod,
    svd_rank: o.svd_rank ?? null,
    svd_clamp: plan.svdClamp,
    seed: Number(plan.seed),
    output: plan.output,
    rank: plan.rank,
    relative_error: plan.output === 'merged' ? 0 : result.maxRelError,
    base_model: base,
    created: Math.floor(Date.now() / 1000),
  };
  return {
    files: { config: new TextEncoder().encode(`${JSON.stringify(config, null, 2)}\n`), weights: encodeSafetensors(tensors, { format: 'pt', loraserve_merge: plan.combination }) },
    recipe,
  };
}
