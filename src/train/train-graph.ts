// The training graph of a Llama-family model with LoRA on chosen (layer, target) pairs: a
// full-sequence causal forward over a batch [B, T] (no KV cache), the weighted next-token
// cross-entropy, and (gradients: true) its gradients with respect to every LoRA A and B, appended
// by autodiff.ts. The base weights are initializers of the session: frozen, resident once.
//
//   inputs   input_ids [B,T] int64, labels [B,T] int64, loss_weights [B,T] float32,
//            lora_a.<layer>.<target> [r, in], lora_b.<layer>.<target> [out, r] per slot,
//            with gradients: compute_gradients [1] int64 (0: the backward is skipped, its
//            outputs are zeros; an eval on the training session costs a forward pass),
//            with gradients and dropout > 0: lora_dropout.<layer>.<target> [N, in] float32 per
//            slot, the dropout mask of that slot's LoRA input (0 or 1/(1−p); [1, in] ones: none)
//   outputs  loss = Σ w·NLL / Σ w (scalar), nll_sum, weight_sum (scalars, for exact eval
//            aggregation), token_logprobs [B,T] (log p(labels[b,t]) at each position), and with
//            gradients grad.lora_a.* / grad.lora_b.* (d loss / d factor, the factor's shape)
//
// Labels are already shifted: labels[b,t] is the token that should follow input_ids[b,t]
// (input_ids[b,t+1] for plain language modelling), and loss_weights[b,t] is 1 where that
// prediction counts (0 for prompt tokens, the last position, padding). Every label must be a valid
// id, also where the weight is 0 (there is no -100). Padding goes at the end of a row: with causal
// attention the real tokens never see it, and its weights are 0.
//
// Projection with LoRA: y = x·W0ᵀ + s·(x·Aᵀ)·Bᵀ (+ bias), x flat [N = B·T, in]. W0 is held
// transposed [in, out] (as llama-graph.ts holds it, so MatMul prepacks it); A and B are used as
// stored through FusedMatMul's transB, with s as its alpha.
// Dropout (PEFT's lora_dropout, training graph only): y = x·W0ᵀ + s·((m ⊙ x)·Aᵀ)·Bᵀ, the mask m
// fed per slot (each module its own nn.Dropout) and drawn in JS (train-session.ts, DropoutMasks);
// the backward carries it through the Mul rule. With dropout 0 the graph has no mask inputs and
// no extra nodes.
import { GraphBuilder, float, int, ints } from '../runtime/graph/ir.ts';
import type { Graph } from '../runtime/graph/ir.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import { loraInputNames, transpose } from '../runtime/llama-graph.ts';
import type { Weights } from '../runtime/llama-graph.ts';
import { targetPath, targetShape } from '../runtime/model-targets.ts';
import type { Target } from '../runtime/model-targets.ts';
import { ropeCaches, ropeInverseFrequencies } from '../runtime/rope.ts';
import { differentiate } from './autodiff.ts';

// One LoRA pair: its rank and its scale s (α/r, or α/√r with rsLoRA), each its own.
export interface LoraSlot {
  layer: number;
  target: Target;
  rank: number;
  scale: number;
}

export interface TrainGraphOptions {
  slots: LoraSlot[];
  maxPositions: number;  // rows of the RoPE tables: the longest sequence the graph accepts
  gradients?: boolean;   // default true; false gives the forward-only (eval) graph
  runtimeUnbroadcast?: boolean; // reduce every binary op's gradients at run time (tests: the generic path)
  dropout?: number;      // lora_dropout p in [0, 1), default 0; > 0 adds one mask input per slot
                         // (training graph only: the forward-only graph never applies dropout)
}

export const LOSS_OUTPUTS = ['loss', 'nll_sum', 'weight_sum', 'token_logprobs'] as const;

export function loraFactorNames(slots: LoraSlot[]): string[] {
  return slots.flatMap((s) => { const n = loraInputNames(s.layer, s.target); return [n.a, n.b]; });
}

// The dropout mask input of a slot: [N, in] float32, 0 (dropped) or 1/(1−p) (kept).
export const dropoutMaskName = (layer: number, target: Target): string => `lora_dropout.${layer}.${target}`;

// Whether a graph built with these options takes dropout masks.
export const hasDropout = (opts: Pick<TrainGraphOptions, 'dropout' | 'gradients'>): boolean => opts.gradients !== false && (opts.dropout ?? 0) > 0;

export function buildTrainGraph(cfg: ModelConfig, weights: Weights, opts: TrainGraphOptions): Graph {
  const forward = buildForward(cfg, weights, opts);
  if (opts.gradients === false) return forward;
  if (opts.slots.length === 0) throw new Error('a training graph needs at least one LoRA slot (gradients: false gives the base model\'s eval graph)');
  // compute_gradients [1] int64: 0 skips the backward pass (an evaluation on the same session)
  forward.inputs.push({ name: 'compute_gradients', type: 'int64', dims: [1] });
  forward.initializers.push({ name: 'train.gate_zero', type: 'int64', dims: [1], data: BigInt64Array.of(0n) });
  forward.nodes.push({ op: 'Greater', domain: '', inputs: ['compute_gradients', 'train.gate_zero'], outputs: ['train.gate'], attrs: {} });
  // Only frozen operands broadcast here (RoPE tables, the mask, biases, loss weights; RMSNorm is
  // one fused op with its own rule), so no gradient needs summing back to a smaller shape.
  return differentiate(forward, 'loss', loraFactorNames(opts.slots), { onlyFrozenBroadcast: opts.runtimeUnbroadcast !== true, gate: 'train.gate' });
}

function buildForward(cfg: ModelConfig, weights: Weights, opts: TrainGraphOptions): Graph {
  const b = new GraphBuilder('loraserve-train');
  const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: d, vocabSize: V } = cfg;
  const rep = H / Hkv;
  const w = (name: string): Float32Array => {
    const t = weights.get(name);
    if (!t) throw new Error(`missing weight ${name}`);
    return t;
  };
  const slots = new Map<string, LoraSlot>();
  for (const s of opts.slots) {
    const key = `${s.layer}.${s.target}`;
    if (slots.has(key) || s.layer < 0 || s.layer >= cfg.numLayers || !(s.rank >= 1)) throw new Error(`bad or duplicate LoRA slot ${key} (rank ${s.rank})`);
    slots.set(key, s);
  }

  const ids = b.input('input_ids', 'int64', ['batch', 'seq']);
  const labels = b.input('labels', 'int64', ['batch', 'seq']);
  const lossWeights = b.input('loss_weights', 'float32', ['batch', 'seq']);
  const dropout = opts.dropout ?? 0;
  if (!(dropout >= 0 && dropout < 1)) throw new Error(`dropout must be in [0, 1), got ${dropout}`);
  const factors = new Map<string, { a: string; b: string; mask?: string }>();
  for (const s of opts.slots) {
    const [out, inDim] = targetShape(cfg, s.target);
    const n = loraInputNames(s.layer, s.target);
    // the mask's rows are symbolic: [N, in] in a step, [1, in] of ones (broadcast) in an evaluation
    const mask = hasDropout(opts) ? b.input(dropoutMaskName(s.layer, s.target), 'float32', ['dropout_rows', inDim]) : undefined;
    factors.set(`${s.layer}.${s.target}`, { a: b.input(n.a, 'float32', [s.rank, inDim]), b: b.input(n.b, 'float32', [out, s.rank]), mask });
  }

  const bt = b.op('Shape', [ids]);                                   // [B, T]
  const T = b.op('Shape', [ids], { start: int(1), end: int(2) });    // [T]
  const dims = (...tail: number[]): string => b.op('Concat', [bt, b.int64(tail)], { axis: int(0) });

  const linear = (x: string, layer: number, target: Target): string => {
    const name = `${targetPath(layer, target)}.weight`;
    const [out, inDim] = targetShape(cfg, target);
    let y = b.op('MatMul', [x, b.initializer(`${name}.T`, transpose(w(name), out, inDim), [inDim, out])]);
    const lora = factors.get(`${layer}.${target}`);
    if (lora) {
      const xIn = lora.mask ? b.op('Mul', [x, lora.mask]) : x;                                                    // dropout(x), LoRA path only
      const xa = b.op('FusedMatMul', [xIn, lora.a], { transB: int(1) }, { domain: 'com.microsoft' });            // [N, r]
      const delta = b.op('FusedMatMul', [xa, lora.b], { transB: int(1), alpha: float(slots.get(`${layer}.${target}`)!.scale) }, { domain: 'com.microsoft' });
      y = b.op('Add', [y, delta]);
    }
    const bias = weights.get(`${targetPath(layer, target)}.bias`);
    return bias ? b.op('Add', [y, b.initializer(`${targetPath(layer, target)}.bias`, bias, [out])]) : y;
  };
  const rmsNorm = (x: string, name: string): string =>
    b.op('SimplifiedLayerNormalization', [x, b.initializer(name, w(name), [D])], { axis: int(-1), epsilon: float(cfg.rmsNormEps), stash_type: int(1) });

  // RoPE, rotate_half: x·cos + [x2, x1]·[−sin, sin], tables [P, d] sliced to the T positions and
  // shaped [T, 1, d] to broadcast over [B, T, heads, d] (frozen: no gradient goes into them).
  const { cos, sin } = ropeCaches(opts.maxPositions, ropeInverseFrequencies(d, cfg.ropeTheta, cfg.ropeScaling));
  const half = d / 2;
  const cosFull = new Float32Array(opts.maxPositions * d);
  const sinSigned = new Float32Array(opts.maxPositions * d);
  for (let p = 0; p < opts.maxPositions; p++) {
    for (let j = 0; j < half; j++) {
      cosFull[p * d + j] = cosFull[p * d + half + j] = cos[p * half + j];
      sinSigned[p * d + j] = -sin[p * half + j];
      sinSigned[p * d + half + j] = sin[p * half + j];
    }
  }
  const table = (name: string, data: Float32Array): string =>
    b.op('Unsqueeze', [b.op('Slice', [b.initializer(name, data, [opts.maxPositions, d]), b.int64([0]), T, b.int64([0])]), b.int64([1])]);
  const cosT = table('rope.cos_full', cosFull);
  const sinT = table('rope.sin_signed', sinSigned);
  const rope = (t: string, heads: number): string => {
    const t4 = b.op('Reshape', [t, dims(heads, d)]); // [B, T, heads, d]
    const [x1, x2] = b.opN('Split', [t4, b.int64([half, half])], 2, { axis: int(-1) });
    const swapped = b.op('Concat', [x2, x1], { axis: int(-1) });
    return b.op('Add', [b.op('Mul', [t4, cosT]), b.op('Mul', [swapped, sinT])]);
  };

  // causal mask [rep·T, T] (query rows grouped by kv head as below): −1e9 above the diagonal
  const scalar0 = b.initializer('train.i64_zero', BigInt64Array.of(0n), []);
  const scalar1 = b.initializer('train.i64_one', BigInt64Array.of(1n), []);
  const pos = b.op('Range', [scalar0, b.op('Reshape', [T, b.int64([])]), scalar1]);
  const future = b.op('Greater', [b.op('Unsqueeze', [pos, b.int64([0])]), b.op('Unsqueeze', [pos, b.int64([1])])]);
  const mask = b.op('Tile', [b.op('Where', [future, b.float32Scalar(-1e9), b.float32Scalar(0)]), b.int64([rep, 1])]);

  const embed = b.initializer('model.embed_tokens.weight', w('model.embed_tokens.weight'), [V, D]);
  let h = b.op('Reshape', [b.op('Gather', [embed, ids], { axis: int(0) }), b.int64([-1, D])]); // [N, D]
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    const x = rmsNorm(h, `${p}.input_layernorm.weight`);
    const q = rope(linear(x, l, 'q_proj'), H);   // [B, T, H, d]
    const k = rope(linear(x, l, 'k_proj'), Hkv); // [B, T, Hkv, d]
    const v = b.op('Reshape', [linear(x, l, 'v_proj'), dims(Hkv, d)]);
    // GQA without repeating k/v: query head a = g·rep + r reads kv head g, so Q is grouped as
    // [B, Hkv, rep·T, d] against K, V [B, Hkv, T, d] (llama-graph.ts does the same)
    const qG = b.op('Reshape', [b.op('Transpose', [b.op('Reshape', [q, b.int64([0, 0, Hkv, rep, d])])], { perm: ints([0, 2, 3, 1, 4]) }), b.int64([0, 0, -1, d])]);
    const kH = b.op('Transpose', [k], { perm: ints([0, 2, 1, 3]) });
    const vH = b.op('Transpose', [v], { perm: ints([0, 2, 1, 3]) });
    const scores = b.op('FusedMatMul', [qG, kH], { transB: int(1), alpha: float(1 / Math.sqrt(d)) }, { domain: 'com.microsoft' });
    const probs = b.op('Softmax', [b.op('Add', [scores, mask])], { axis: int(-1) });
    const ctx = b.op('MatMul', [probs, vH]); // [B, Hkv, rep·T, d]
    const ctxT = b.op('Transpose', [b.op('Reshape', [ctx, b.int64([0, 0, rep, -1, d])])], { perm: ints([0, 3, 1, 2, 4]) });
    h = b.op('Add', [h, linear(b.op('Reshape', [ctxT, b.int64([-1, H * d])]), l, 'o_proj')]);

    const x2 = rmsNorm(h, `${p}.post_attention_layernorm.weight`);
    const gate = linear(x2, l, 'gate_proj');
    const act = b.op('Mul', [b.op('Mul', [gate, b.op('Sigmoid', [gate])]), linear(x2, l, 'up_proj')]);
    h = b.op('Add', [h, linear(act, l, 'down_proj')]);
  }
  const hn = rmsNorm(h, 'model.norm.weight');
  const head = cfg.tieWordEmbeddings ? embed : b.initializer('lm_head.weight', w('lm_head.weight'), [V, D]);
  const logits = b.op('FusedMatMul', [hn, head], { transB: int(1) }, { domain: 'com.microsoft' }); // [N, V]

  // weighted cross-entropy: log-softmax (stable), the label's entry, Σ w·NLL / Σ w
  const logp = b.op('LogSoftmax', [logits], { axis: int(-1) });
  const tokenLogp = b.op('GatherElements', [logp, b.op('Reshape', [labels, b.int64([-1, 1])])], { axis: int(1) }); // [N, 1]
  const weighted = b.op('Mul', [tokenLogp, b.op('Reshape', [lossWeights, b.int64([-1, 1])])]);
  b.op('Neg', [b.op('ReduceSum', [weighted], { keepdims: int(0) })], {}, { out: 'nll_sum' });
  b.op('ReduceSum', [lossWeights], { keepdims: int(0) }, { out: 'weight_sum' });
  // a batch without weighted tokens gives loss 0 rather than NaN
  b.op('Div', ['nll_sum', b.op('Max', ['weight_sum', b.float32Scalar(1e-6)])], {}, { out: 'loss' });
  b.op('Reshape', [tokenLogp, bt], {}, { out: 'token_logprobs' });
  for (const o of ['loss', 'nll_sum', 'weight_sum']) b.output(o, 'float32', []);
  b.output('token_logprobs', 'float32', ['batch', 'seq']);
  return b.build();
}
