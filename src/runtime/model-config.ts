// config.json (Hugging Face) → ModelConfig: the facts the graph builder and the runtime need.
// Anything we do not implement is refused here, naming the field.
import { ModelConfigError } from './errors.ts';

export type RopeScaling =
  | { type: 'default' }
  | { type: 'linear'; factor: number }
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number };

export interface ModelConfig {
  architecture: 'llama' | 'mistral' | 'qwen2';
  hiddenSize: number;          // D
  intermediateSize: number;    // F (SwiGLU width)
  numLayers: number;           // L
  numHeads: number;            // H (query heads)
  numKvHeads: number;          // Hkv (GQA / MQA when < H)
  headDim: number;             // d
  vocabSize: number;           // V
  maxPositions: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  tieWordEmbeddings: boolean;
  attentionBias: boolean;      // q/k/v biases (Qwen2 always, Llama when attention_bias)
  oProjBias: boolean;          // Llama's attention_bias also covers o_proj; Qwen2 has none there
  mlpBias: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

const ARCHES: Record<string, ModelConfig['architecture']> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
};

type Json = Record<string, unknown>;

function num(cfg: Json, field: string, opts: { int?: boolean; min?: number; def?: number } = {}): number {
  const v = cfg[field] ?? opts.def;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new ModelConfigError(`config.json: "${field}" must be a number (got ${JSON.stringify(v)})`, field);
  if (opts.int && !Number.isInteger(v)) throw new ModelConfigError(`config.json: "${field}" must be an integer (got ${v})`, field);
  if (opts.min !== undefined && v < opts.min) throw new ModelConfigError(`config.json: "${field}" must be ≥ ${opts.min} (got ${v})`, field);
  return v;
}

export function parseModelConfig(cfg: Json, generation: Json = {}): ModelConfig {
  const archs = cfg.architectures;
  const archName = Array.isArray(archs) && typeof archs[0] === 'string' ? archs[0] : undefined;
  const architecture = archName ? ARCHES[archName] : ARCHES[`${capitalize(String(cfg.model_type ?? ''))}ForCausalLM`];
  if (!architecture) {
    throw new ModelConfigError(`config.json: "architectures" ${JSON.stringify(archs ?? cfg.model_type)} is not supported; supported: ${Object.keys(ARCHES).join(', ')}`, 'architectures');
  }
  const hiddenSize = num(cfg, 'hidden_size', { int: true, min: 1 });
  const numHeads = num(cfg, 'num_attention_heads', { int: true, min: 1 });
  const numKvHeads = num(cfg, 'num_key_value_heads', { int: true, min: 1, def: numHeads });
  if (numHeads % numKvHeads !== 0) throw new ModelConfigError(`config.json: "num_attention_heads" (${numHeads}) must be a multiple of "num_key_value_heads" (${numKvHeads})`, 'num_key_value_heads');
  const headDim = cfg.head_dim == null ? hiddenSize / numHeads : num(cfg, 'head_dim', { int: true, min: 2 });
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) throw new ModelConfigError(`config.json: head_dim ${headDim} must be an even integer`, 'head_dim');

  const act = cfg.hidden_act ?? 'silu';
  if (act !== 'silu') throw new ModelConfigError(`config.json: "hidden_act" ${JSON.stringify(act)} is not supported (only "silu")`, 'hidden_act');
  // pretraining_tp > 1 only splits matmuls during training: mathematically identical, ignored.
  if (architecture === 'mistral' || architecture === 'qwen2') {
    const sw = cfg.sliding_window;
    const useSw = architecture === 'qwen2' ? cfg.use_sliding_window === true : sw != null;
    if (useSw && typeof sw === 'number' && sw < num(cfg, 'max_position_embeddings', { int: true, min: 1 })) {
      throw new ModelConfigError(`config.json: "sliding_window" ${sw} is smaller than max_position_embeddings; sliding-window attention is not supported`, 'sliding_window');
    }
  }
  for (const field of ['attn_logit_softcapping', 'final_logit_softcapping']) {
    if (cfg[field] != null) throw new ModelConfigError(`config.json: "${field}" is not supported`, field);
  }

  const { theta, scaling } = parseRope(cfg);
  const eos = generation.eos_token_id ?? cfg.eos_token_id;
  const eosTokenIds = (Array.isArray(eos) ? eos : eos == null ? [] : [eos]).map((v) => {
    if (typeof v !== 'number' || !Number.isInteger(v)) throw new ModelConfigError(`eos_token_id must be an integer or a list of integers (got ${JSON.stringify(eos)})`, 'eos_token_id');
    return v;
  });
  const bos = generation.bos_token_id ?? cfg.bos_token_id;
  const attentionBias = architecture === 'qwen2' ? true : cfg.attention_bias === true;
  return {
    architecture,
    hiddenSize,
    intermediateSize: num(cfg, 'intermediate_size', { int: true, min: 1 }),
    numLayers: num(cfg, 'num_hidden_layers', { int: true, min: 1 }),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: num(cfg, 'vocab_size', { int: true, min: 1 }),
    maxPositions: num(cfg, 'max_position_embeddings', { int: true, min: 1, def: 2048 }),
    rmsNormEps: num(cfg, 'rms_norm_eps', { min: 0, def: 1e-6 }),
    ropeTheta: theta,
    ropeScaling: scaling,
    tieWordEmbeddings: cfg.tie_word_embeddings === true,
    attentionBias,
    oProjBias: architecture === 'qwen2' ? false : attentionBias,
    mlpBias: cfg.mlp_bias === true,
    bosTokenId: typeof bos === 'number' ? bos : null,
    eosTokenIds,
  };
}

function capitalize(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

// Accepts both spellings: rope_theta + rope_scaling (transformers v4) and rope_parameters (v5).
function parseRope(cfg: Json): { theta: number; scaling: RopeScaling } {
  const params = (cfg.rope_parameters ?? cfg.rope_scaling ?? null) as Json | null;
  const field = cfg.rope_parameters != null ? 'rope_parameters' : 'rope_scaling';
  if (params !== null && (typeof params !== 'object' || Array.isArray(params))) {
    throw new ModelConfigError(`config.json: "${field}" must be an object or null`, field);
  }
  const thetaRaw = params?.rope_theta ?? cfg.rope_theta ?? 10000;
  if (typeof thetaRaw !== 'number' || !(thetaRaw > 0)) throw new ModelConfigError(`config.json: rope_theta must be a positive number (got ${JSON.stringify(thetaRaw)})`, 'rope_theta');
  const type = String(params?.rope_type ?? params?.type ?? 'default');
  const pnum = (key: string, def?: number): number => {
    const v = params?.[key] ?? def;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw new ModelConfigError(`config.json: "${field}.${key}" must be a positive number (got ${JSON.stringify(v)})`, `${field}.${key}`);
    return v;
  };
  if (params?.partial_rotary_factor != null && params.partial_rotary_factor !== 1) {
    throw new ModelConfigError(`config.json: "${field}.partial_rotary_factor" other than 1 is not supported`, `${field}.partial_rotary_factor`);
  }
  switch (type) {
    case 'default':
      return { theta: thetaRaw, scaling: { type: 'default' } };
    case 'linear':
      return { theta: thetaRaw, scaling: { type: 'linear', factor: pnum('factor') } };
    case 'llama3': {
      const maxPos = typeof cfg.max_position_embeddings === 'number' ? cfg.max_position_embeddings : undefined;
      return {
        theta: thetaRaw,
        scaling: {
          type: 'llama3',
          factor: pnum('factor'),
          lowFreqFactor: pnum('low_freq_factor', 1),
          highFreqFactor: pnum('high_freq_factor', 4),
          originalMaxPositions: pnum('original_max_position_embeddings', maxPos),
        },
      };
    }
    default:
      throw new ModelConfigError(`config.json: "${field}.rope_type" ${JSON.stringify(type)} is not supported (supported: default, linear, llama3)`, `${field}.rope_type`);
  }
}
