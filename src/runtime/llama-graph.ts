// Builds the Llama-family decoder step as a graph (graph/ir.ts) from a ModelConfig and its weights.
//
// One graph serves prefill, chunked prefill and decode for a batch of sequences:
//   inputs   input_ids [B,S] int64, position_ids [B,S] int64,
//            attention_bias [B,1,rep·S,P+S] float (0 or -1e9; built by kv-batch.ts),
//            past_key.{l} [B,Hkv,d,P] (keys transposed), past_value.{l} [B,Hkv,P,d]: the KV cache,
//            fed in place from kv-cache.ts (P may exceed a row's length: the bias masks the rest),
//            logit_rows [R] int64 (flat indices into B·S of the positions whose logits are wanted)
//   outputs  logits [R,V], new_key.{l}, new_value.{l} [B,S,Hkv·d] (rotated keys and values of the new tokens)
// The KV cache stays in JS memory in the layouts MatMul reads directly, so a step reads it in place
// with no concat or transpose; only the new rows come back (onnxruntime-node notes §2, pattern d).
//
// Each of the seven target projections is one call to `linear`, the hook that multi-adapter LoRA
// replaces to add its delta.
import { GraphBuilder, float, int, ints } from './graph/ir.ts';
import type { Graph } from './graph/ir.ts';
import type { ModelConfig } from './model-config.ts';
import { ropeCaches, ropeInverseFrequencies } from './rope.ts';

export const TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type Target = (typeof TARGETS)[number];

export function targetPath(layer: number, target: Target): string {
  const block = target.endsWith('_proj') && ['gate_proj', 'up_proj', 'down_proj'].includes(target) ? 'mlp' : 'self_attn';
  return `model.layers.${layer}.${block}.${target}`;
}

// [out, in] of each target, from the config.
export function targetShape(cfg: ModelConfig, target: Target): [number, number] {
  const D = cfg.hiddenSize;
  const q = cfg.numHeads * cfg.headDim;
  const kv = cfg.numKvHeads * cfg.headDim;
  switch (target) {
    case 'q_proj': return [q, D];
    case 'k_proj': return [kv, D];
    case 'v_proj': return [kv, D];
    case 'o_proj': return [D, q];
    case 'gate_proj': return [cfg.intermediateSize, D];
    case 'up_proj': return [cfg.intermediateSize, D];
    case 'down_proj': return [D, cfg.intermediateSize];
  }
}

export type Weights = Map<string, Float32Array>;

// y = x · Wᵀ (+ b) for one target; x is [B,S,in]. Returns the output value name.
export type LinearHook = (b: GraphBuilder, x: string, layer: number, target: Target) => string;

export interface LlamaGraphOptions {
  maxPositions: number;          // rows of the RoPE caches (the served context length)
  linear?: LinearHook;           // default: baked-in weights (bakedLinear)
  extraInputs?: (b: GraphBuilder) => void;
}

// The default projection: W stored transposed [in, out] as an initializer, so MatMul can prepack it.
export function bakedLinear(cfg: ModelConfig, weights: Weights): LinearHook {
  return (b, x, layer, target) => addBias(b, weights, layer, target, bakedMatMul(b, cfg, weights, x, layer, target));
}

// y = g ⊙ (x·W0ᵀ + (x·Aᵀ)·(s·B)ᵀ) + bias, with the factors of each batch row fed as inputs
// (lora-arena.ts): lora_at [rows, in, R], lora_bt [rows, R, out], lora_g [rows|1, 1, out|1].
// R = 0 when no row has an adapter, which leaves only the base projection's cost.
export function loraLinear(cfg: ModelConfig, weights: Weights): LinearHook {
  return (b, x, layer, target) => {
    const [out, inDim] = targetShape(cfg, target);
    const at = b.input(`lora_at.${layer}.${target}`, 'float32', ['lora_rows', inDim, 'lora_rank']);
    const bt = b.input(`lora_bt.${layer}.${target}`, 'float32', ['lora_rows', 'lora_rank', out]);
    const g = b.input(`lora_g.${layer}.${target}`, 'float32', ['dora_rows', 1, `dora_out_${target}`]);
    const y0 = bakedMatMul(b, cfg, weights, x, layer, target);
    const delta = b.op('MatMul', [b.op('MatMul', [x, at]), bt]);
    return addBias(b, weights, layer, target, b.op('Mul', [b.op('Add', [y0, delta]), g]));
  };
}

function bakedMatMul(b: GraphBuilder, cfg: ModelConfig, weights: Weights, x: string, layer: number, target: Target): string {
  const name = `${targetPath(layer, target)}.weight`;
  const [out, inDim] = targetShape(cfg, target);
  const wT = b.initializer(`${name}.T`, transpose(weights.get(name)!, out, inDim), [inDim, out]);
  return b.op('MatMul', [x, wT]);
}

function addBias(b: GraphBuilder, weights: Weights, layer: number, target: Target, y: string): string {
  const bias = weights.get(`${targetPath(layer, target)}.bias`);
  return bias ? b.op('Add', [y, b.initializer(`${targetPath(layer, target)}.bias`, bias, [bias.length])]) : y;
}

export function buildLlamaGraph(cfg: ModelConfig, weights: Weights, opts: LlamaGraphOptions): Graph {
  const b = new GraphBuilder('loraserve-llama');
  const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: d, vocabSize: V } = cfg;
  const rep = H / Hkv;
  const kvDim = Hkv * d;
  const linear = opts.linear ?? bakedLinear(cfg, weights);
  const w = (name: string): Float32Array => {
    const t = weights.get(name);
    if (!t) throw new Error(`missing weight ${name}`);
    return t;
  };

  const ids = b.input('input_ids', 'int64', ['batch', 'seq']);
  const positions = b.input('position_ids', 'int64', ['batch', 'seq']);
  const bias = b.input('attention_bias', 'float32', ['batch', 1, 'group_seq', 'total']);
  const logitRows = b.input('logit_rows', 'int64', ['rows']);
  opts.extraInputs?.(b);

  const { cos, sin } = ropeCaches(opts.maxPositions, ropeInverseFrequencies(d, cfg.ropeTheta, cfg.ropeScaling));
  const cosCache = b.initializer('rope.cos', cos, [opts.maxPositions, d / 2]);
  const sinCache = b.initializer('rope.sin', sin, [opts.maxPositions, d / 2]);
  const embed = b.initializer('model.embed_tokens.weight', w('model.embed_tokens.weight'), [V, D]);
  const scale = b.float32Scalar(1 / Math.sqrt(d));

  // [P, S]: widths of the past and the new part of the attention scores
  const pastWidth = b.op('Slice', [b.op('Shape', ['past_key.0']), b.int64([3]), b.int64([4])]);
  const seqLen = b.op('Slice', [b.op('Shape', [ids]), b.int64([1]), b.int64([2])]);
  const splitSizes = b.op('Concat', [pastWidth, seqLen], { axis: int(0) });

  let h = b.op('Gather', [embed, ids], { axis: int(0) }); // [B,S,D]
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    // attention block
    const x = rmsNorm(b, h, b.initializer(`${p}.input_layernorm.weight`, w(`${p}.input_layernorm.weight`), [D]), cfg.rmsNormEps);
    const q = linear(b, x, l, 'q_proj');
    const k = linear(b, x, l, 'k_proj');
    const v = linear(b, x, l, 'v_proj');
    const qRot = b.op('RotaryEmbedding', [q, positions, cosCache, sinCache], { interleaved: int(0), num_heads: int(H) }, { domain: 'com.microsoft' });
    const kRot = b.op('RotaryEmbedding', [k, positions, cosCache, sinCache], { interleaved: int(0), num_heads: int(Hkv) }, { domain: 'com.microsoft', out: `new_key.${l}` });
    b.op('Identity', [v], {}, { out: `new_value.${l}` });
    b.output(kRot, 'float32', ['batch', 'seq', kvDim]);
    b.output(`new_value.${l}`, 'float32', ['batch', 'seq', kvDim]);
    const pastKT = b.input(`past_key.${l}`, 'float32', ['batch', Hkv, d, 'past']);   // Kᵀ per kv head
    const pastV = b.input(`past_value.${l}`, 'float32', ['batch', Hkv, 'past', d]);

    // Q: [B,S,H·d] → [B,Hkv,rep·S,d]; query head a = g·rep + r uses kv head g (repeat_kv)
    const qScaled = b.op('Mul', [qRot, scale]);
    const q5 = b.op('Transpose', [b.op('Reshape', [qScaled, b.int64([0, 0, Hkv, rep, d])])], { perm: ints([0, 2, 3, 1, 4]) });
    const qG = b.op('Reshape', [q5, b.int64([0, 0, -1, d])]);
    // new keys/values of this step: kᵀ [B,Hkv,d,S], v [B,Hkv,S,d]
    const kNewT = b.op('Transpose', [b.op('Reshape', [kRot, b.int64([0, 0, Hkv, d])])], { perm: ints([0, 2, 3, 1]) });
    const vNew = b.op('Transpose', [b.op('Reshape', [v, b.int64([0, 0, Hkv, d])])], { perm: ints([0, 2, 1, 3]) });
    // scores against the cached past and the new tokens, side by side: [B,Hkv,rep·S,P+S]
    // (the cache is read in place: no concat of the past with the new rows)
    const scores = b.op('Concat', [b.op('MatMul', [qG, pastKT]), b.op('MatMul', [qG, kNewT])], { axis: int(-1) });
    const probs = b.op('Softmax', [b.op('Add', [scores, bias])], { axis: int(-1) });
    const [probsPast, probsNew] = b.opN('Split', [probs, splitSizes], 2, { axis: int(-1) });
    const ctx = b.op('Add', [b.op('MatMul', [probsPast, pastV]), b.op('MatMul', [probsNew, vNew])]); // [B,Hkv,rep·S,d]
    const ctx5 = b.op('Transpose', [b.op('Reshape', [ctx, b.int64([0, 0, rep, -1, d])])], { perm: ints([0, 3, 1, 2, 4]) });
    const attn = b.op('Reshape', [ctx5, b.int64([0, 0, -1])]);             // [B,S,H·d]
    h = b.op('Add', [h, linear(b, attn, l, 'o_proj')]);

    // SwiGLU MLP block
    const x2 = rmsNorm(b, h, b.initializer(`${p}.post_attention_layernorm.weight`, w(`${p}.post_attention_layernorm.weight`), [D]), cfg.rmsNormEps);
    const gate = linear(b, x2, l, 'gate_proj');
    const up = linear(b, x2, l, 'up_proj');
    const act = b.op('Mul', [b.op('Mul', [gate, b.op('Sigmoid', [gate])]), up]);
    h = b.op('Add', [h, linear(b, act, l, 'down_proj')]);
  }
  const hn = rmsNorm(b, h, b.initializer('model.norm.weight', w('model.norm.weight'), [D]), cfg.rmsNormEps);
  const rows = b.op('Gather', [b.op('Reshape', [hn, b.int64([-1, D])]), logitRows], { axis: int(0) }); // [R,D]
  // lm_head [V,D] used as stored (transB), so a tied embedding is not duplicated.
  const head = cfg.tieWordEmbeddings ? embed : b.initializer('lm_head.weight', w('lm_head.weight'), [V, D]);
  b.op('Gemm', [rows, head], { transB: int(1) }, { out: 'logits' });
  b.output('logits', 'float32', ['rows', V]);
  return b.build();
}

// RMSNorm in float32: x · rsqrt(mean(x²) + eps) ⊙ w
function rmsNorm(b: GraphBuilder, x: string, weight: string, eps: number): string {
  return b.op('SimplifiedLayerNormalization', [x, weight], { axis: int(-1), epsilon: float(eps), stash_type: int(1) });
}

// [rows, cols] → [cols, rows]
export function transpose(m: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(m.length);
  const B = 64;
  for (let r0 = 0; r0 < rows; r0 += B) {
    for (let c0 = 0; c0 < cols; c0 += B) {
      const rEnd = Math.min(rows, r0 + B);
      const cEnd = Math.min(cols, c0 + B);
      for (let r = r0; r < rEnd; r++) for (let c = c0; c < cEnd; c++) out[c * rows + r] = m[r * cols + c];
    }
  }
  return out;
}
