// Builds the Llama-family decoder step as a graph (graph/ir.ts) from a ModelConfig and its weights.
//
// One step runs two groups of sequences at once, each a batch [B_g, S_g] (either may be empty):
// group 0 carries prompt chunks (prefill), group 1 one token per decoding sequence. Their tokens
// are flattened to [N = B_0·S_0 + B_1·S_1] for every projection, so a prefill chunk shares the
// decode step's single pass over the weights; attention runs per group.
//   inputs   group_sizes [2] int64 (B_g·S_g), and per group g:
//            input_ids.g, position_ids.g [B_g,S_g] int64, attention_bias.g [B_g,1,rep·S_g,P_g+S_g]
//            (0 or -1e9; built by step.ts), past_key.g.l [B_g,Hkv,d,P_g] (keys transposed),
//            past_value.g.l [B_g,Hkv,P_g,d]: the KV cache, fed in place from the lane arenas
//            (P_g may exceed a row's length: the bias masks the rest)
//            logit_rows [R] int64: flat token indices whose logits are wanted
//   outputs  logits [R,V]; new_key.l, new_value.l [N,Hkv·d]: rotated keys and values of the new tokens
// The KV cache stays in JS memory in the layouts MatMul reads directly, so a step reads it in place
// with no concat or transpose; only the new rows come back (onnxruntime-node notes §2, pattern d).
//
// Each of the seven target projections is one call to `linear`, the hook that multi-adapter LoRA
// replaces to add its delta.
import { GraphBuilder, float, int, ints } from './graph/ir.ts';
import type { Graph } from './graph/ir.ts';
import type { ModelConfig } from './model-config.ts';
import { targetPath, targetShape } from './model-targets.ts';
import type { Target } from './model-targets.ts';
import { ropeCaches, ropeInverseFrequencies } from './rope.ts';

export const GROUPS = 2;

export type Weights = Map<string, Float32Array>;

// The token groups of a step: flat [N, c] values ↔ each group's [B_g, S_g, c].
export interface TokenGroups {
  split(b: GraphBuilder, flat: string): string[];                  // [N, c] → [n_g, c] per group
  to3d(b: GraphBuilder, part: string, g: number, c: number): string; // [n_g, c] → [B_g, S_g, c]
  to2d(b: GraphBuilder, part: string, g: number, c: number): string; // [B_g, S_g, c] → [n_g, c]
  join(b: GraphBuilder, parts: string[]): string;                   // [n_g, c] per group → [N, c]
  // A shape tensor for group g: 'B', 'S', 'N' (= B·S) or a number; ['S', k] is S·k.
  shape(b: GraphBuilder, g: number, dims: (number | 'B' | 'S' | 'N' | ['S', number])[]): string;
}

// y = x · Wᵀ (+ b) for one target; x is flat [N, in]. Returns the output value name.
export type LinearHook = (b: GraphBuilder, x: string, layer: number, target: Target, groups: TokenGroups) => string;

export interface LlamaGraphOptions {
  maxPositions: number;          // rows of the RoPE caches (the served context length)
  linear?: LinearHook;           // default: baked-in weights (bakedLinear)
}

// The default projection: W stored transposed [in, out] as an initializer, so MatMul can prepack it.
export function bakedLinear(cfg: ModelConfig, weights: Weights): LinearHook {
  return (b, x, layer, target) => addBias(b, weights, layer, target, bakedMatMul(b, cfg, weights, x, layer, target));
}

// y = g ⊙ (x·W0ᵀ + (x·Aᵀ)·(s·B)ᵀ) + bias. The base product is one MatMul over all N tokens; the
// factors of each batch row of each group are fed as inputs, in PEFT's layout (lora-arena.ts):
// lora_a.g [rows, R, in], lora_b.g [rows, out, R], lora_g.g [rows|1, 1, out|1]. FusedMatMul with
// transB multiplies by their transposes inside the GEMM (MLAS packs either layout at the same
// cost), so no adapter is ever transposed. R = 0 when no row of a group has an adapter, which
// leaves only the base projection's cost.
export function loraLinear(cfg: ModelConfig, weights: Weights): LinearHook {
  return (b, x, layer, target, groups) => {
    const [out, inDim] = targetShape(cfg, target);
    const y0 = groups.split(b, bakedMatMul(b, cfg, weights, x, layer, target));
    const xs = groups.split(b, x);
    const parts = xs.map((xg, g) => {
      const a = b.input(`lora_a.${g}.${layer}.${target}`, 'float32', [`lora_rows_${g}`, `lora_rank_${g}`, inDim]);
      const sb = b.input(`lora_b.${g}.${layer}.${target}`, 'float32', [`lora_rows_${g}`, out, `lora_rank_${g}`]);
      const dora = b.input(`lora_g.${g}.${layer}.${target}`, 'float32', [`dora_rows_${g}`, 1, `dora_out_${g}_${target}`]);
      const timesT = (x3: string, m: string) => b.op('FusedMatMul', [x3, m], { transB: int(1) }, { domain: 'com.microsoft' });
      const delta = timesT(timesT(groups.to3d(b, xg, g, inDim), a), sb);
      return groups.to2d(b, b.op('Mul', [b.op('Add', [groups.to3d(b, y0[g], g, out), delta]), dora]), g, out);
    });
    return addBias(b, weights, layer, target, groups.join(b, parts));
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

  const groupSizes = b.input('group_sizes', 'int64', [GROUPS]);
  const gs = Array.from({ length: GROUPS }, (_, g) => ({
    ids: b.input(`input_ids.${g}`, 'int64', [`batch_${g}`, `seq_${g}`]),
    positions: b.input(`position_ids.${g}`, 'int64', [`batch_${g}`, `seq_${g}`]),
    bias: b.input(`attention_bias.${g}`, 'float32', [`batch_${g}`, 1, `group_seq_${g}`, `total_${g}`]),
  }));
  const logitRows = b.input('logit_rows', 'int64', ['rows']);
  const groups = tokenGroups(b, groupSizes, gs.map((g) => g.ids));

  const { cos, sin } = ropeCaches(opts.maxPositions, ropeInverseFrequencies(d, cfg.ropeTheta, cfg.ropeScaling));
  const cosCache = b.initializer('rope.cos', cos, [opts.maxPositions, d / 2]);
  const sinCache = b.initializer('rope.sin', sin, [opts.maxPositions, d / 2]);
  const embed = b.initializer('model.embed_tokens.weight', w('model.embed_tokens.weight'), [V, D]);
  const scale = b.float32Scalar(1 / Math.sqrt(d));
  // positions of all N tokens as [1, N], for the rotary op
  const positions = b.op('Concat', gs.map((g, i) => b.op('Reshape', [g.positions, groups.shape(b, i, [1, 'N'])], { allowzero: int(1) })), { axis: int(1) });
  // per group: [P_g, S_g], the widths of the past and the new part of its attention scores
  const splitSizes = gs.map((g, i) => b.op('Concat', [
    b.op('Slice', [b.op('Shape', [`past_key.${i}.0`]), b.int64([3]), b.int64([4])]),
    b.op('Slice', [b.op('Shape', [g.ids]), b.int64([1]), b.int64([2])]),
  ], { axis: int(0) }));

  let h = groups.join(b, gs.map((g, i) => groups.to2d(b, b.op('Gather', [embed, g.ids], { axis: int(0) }), i, D))); // [N,D]
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    // attention block: projections and rotary over all N tokens, attention per group
    const x = rmsNorm(b, h, b.initializer(`${p}.input_layernorm.weight`, w(`${p}.input_layernorm.weight`), [D]), cfg.rmsNormEps);
    const q = linear(b, x, l, 'q_proj', groups);
    const k = linear(b, x, l, 'k_proj', groups);
    const v = linear(b, x, l, 'v_proj', groups);
    const rotary = (t: string, heads: number, out?: string): string => {
      const r = b.op('RotaryEmbedding', [b.op('Unsqueeze', [t, b.int64([0])]), positions, cosCache, sinCache], { interleaved: int(0), num_heads: int(heads) }, { domain: 'com.microsoft' });
      return b.op('Squeeze', [r, b.int64([0])], {}, { out });
    };
    const qRot = groups.split(b, b.op('Mul', [rotary(q, H), scale]));
    const kFlat = rotary(k, Hkv, `new_key.${l}`);
    b.op('Identity', [v], {}, { out: `new_value.${l}` });
    b.output(kFlat, 'float32', ['tokens', kvDim]);
    b.output(`new_value.${l}`, 'float32', ['tokens', kvDim]);
    const kRot = groups.split(b, kFlat);
    const vs = groups.split(b, v);

    const attnParts = gs.map((g, i) => {
      const pastKT = b.input(`past_key.${i}.${l}`, 'float32', [`batch_${i}`, Hkv, d, `past_${i}`]); // Kᵀ per kv head
      const pastV = b.input(`past_value.${i}.${l}`, 'float32', [`batch_${i}`, Hkv, `past_${i}`, d]);
      // Q: [B,S,H·d] → [B,Hkv,rep·S,d]; query head a = g·rep + r uses kv head g (repeat_kv)
      const q5 = b.op('Transpose', [b.op('Reshape', [groups.to3d(b, qRot[i], i, H * d), b.int64([0, 0, Hkv, rep, d])])], { perm: ints([0, 2, 3, 1, 4]) });
      const qG = b.op('Reshape', [q5, groups.shape(b, i, ['B', Hkv, ['S', rep], d])], { allowzero: int(1) });
      // new keys/values of this step: kᵀ [B,Hkv,d,S], v [B,Hkv,S,d]
      const kNewT = b.op('Transpose', [b.op('Reshape', [groups.to3d(b, kRot[i], i, kvDim), b.int64([0, 0, Hkv, d])])], { perm: ints([0, 2, 3, 1]) });
      const vNew = b.op('Transpose', [b.op('Reshape', [groups.to3d(b, vs[i], i, kvDim), b.int64([0, 0, Hkv, d])])], { perm: ints([0, 2, 1, 3]) });
      // scores against the cached past and the new tokens, side by side: [B,Hkv,rep·S,P+S]
      // (the cache is read in place: no concat of the past with the new rows)
      const scores = b.op('Concat', [b.op('MatMul', [qG, pastKT]), b.op('MatMul', [qG, kNewT])], { axis: int(-1) });
      const probs = b.op('Softmax', [b.op('Add', [scores, g.bias])], { axis: int(-1) });
      const [probsPast, probsNew] = b.opN('Split', [probs, splitSizes[i]], 2, { axis: int(-1) });
      const ctx = b.op('Add', [b.op('MatMul', [probsPast, pastV]), b.op('MatMul', [probsNew, vNew])]); // [B,Hkv,rep·S,d]
      const ctx5 = b.op('Transpose', [b.op('Reshape', [ctx, groups.shape(b, i, ['B', Hkv, rep, 'S', d])], { allowzero: int(1) })], { perm: ints([0, 3, 1, 2, 4]) });
      return b.op('Reshape', [ctx5, groups.shape(b, i, ['N', H * d])], { allowzero: int(1) }); // [n_g, H·d]
    });
    h = b.op('Add', [h, linear(b, groups.join(b, attnParts), l, 'o_proj', groups)]);

    // SwiGLU MLP block
    const x2 = rmsNorm(b, h, b.initializer(`${p}.post_attention_layernorm.weight`, w(`${p}.post_attention_layernorm.weight`), [D]), cfg.rmsNormEps);
    const gate = linear(b, x2, l, 'gate_proj', groups);
    const up = linear(b, x2, l, 'up_proj', groups);
    const act = b.op('Mul', [b.op('Mul', [gate, b.op('Sigmoid', [gate])]), up]);
    h = b.op('Add', [h, linear(b, act, l, 'down_proj', groups)]);
  }
  const hn = rmsNorm(b, h, b.initializer('model.norm.weight', w('model.norm.weight'), [D]), cfg.rmsNormEps);
  const rows = b.op('Gather', [hn, logitRows], { axis: int(0) }); // [R,D]
  // lm_head [V,D] used as stored (transB), so a tied embedding is not duplicated.
  const head = cfg.tieWordEmbeddings ? embed : b.initializer('lm_head.weight', w('lm_head.weight'), [V, D]);
  b.op('Gemm', [rows, head], { transB: int(1) }, { out: 'logits' });
  b.output('logits', 'float32', ['rows', V]);
  return b.build();
}

// Reshapes between the flat token axis and the groups' [B_g, S_g] (allowzero: a group may be empty).
function tokenGroups(b: GraphBuilder, groupSizes: string, ids: string[]): TokenGroups {
  const n = ids.map((_, g) => b.op('Slice', [groupSizes, b.int64([g]), b.int64([g + 1])]));
  const idShape = ids.map((id) => b.op('Shape', [id]));
  const cache = new Map<string, string>();
  const shape = (key: string, make: () => string): string => {
    let v = cache.get(key);
    if (!v) cache.set(key, (v = make()));
    return v;
  };
  const dims = (bb: GraphBuilder, g: number, spec: (number | 'B' | 'S' | 'N' | ['S', number])[]): string =>
    shape(`dims.${g}.${JSON.stringify(spec)}`, () => bb.op('Concat', spec.map((x) => {
      if (typeof x === 'number') return bb.int64([x]);
      if (x === 'N') return n[g];
      const S = bb.op('Slice', [idShape[g], bb.int64([1]), bb.int64([2])]);
      if (x === 'B') return bb.op('Slice', [idShape[g], bb.int64([0]), bb.int64([1])]);
      if (x === 'S') return S;
      return bb.op('Mul', [S, bb.int64([x[1]])]);
    }), { axis: int(0) }));
  return {
    shape: dims,
    split: (bb, flat) => bb.opN('Split', [flat, groupSizes], ids.length, { axis: int(0) }),
    to3d: (bb, part, g, c) => bb.op('Reshape', [part, shape(`3d.${g}.${c}`, () => bb.op('Concat', [idShape[g], bb.int64([c])], { axis: int(0) }))], { allowzero: int(1) }),
    to2d: (bb, part, g, c) => bb.op('Reshape', [part, shape(`2d.${g}.${c}`, () => bb.op('Concat', [n[g], bb.int64([c])], { axis: int(0) }))], { allowzero: int(1) }),
    join: (bb, parts) => bb.op('Concat', parts, { axis: int(0) }),
  };
}

// RMSNorm in float32: x · rsqrt(mean(x²) + eps) ⊙ w
function rmsNorm(b: GraphBuilder, x: string, weight: string, eps: number): string {
  return b.op('SimplifiedLayerNormalization', [x, weight], { axis: int(-1), epsilon: float(eps), stash_type: int(1) });
}

// [rows, cols] → [cols, rows], blocked for the cache
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
