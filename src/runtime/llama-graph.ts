// Builds the Llama-family decoder step as a graph (graph/ir.ts) from a ModelConfig and its weights.
//
// One step runs two groups of sequences at once, each a batch [B_g, S_g] (either may be empty):
// group 0 carries prompt chunks (prefill), group 1 one token per decoding sequence. Their tokens
// are flattened to [N = B_0·S_0 + B_1·S_1] for every projection, so a prefill chunk shares the
// decode step's single pass over the weights; attention runs per group.
//   inputs   group_sizes [2] int64 (B_g·S_g), and per group g:
//            input_ids.g, position_ids.g [B_g,S_g] int64, attention_bias.g [B_g,1,rep·S_g,P_g+S_g]
//            (0 or -1e9; built by step.ts), past_key.g.l and past_value.g.l [B_g,Hkv,P_g,d]:
//            the KV cache, fed in place from the lane arenas
//            (P_g may exceed a row's length: the bias masks the rest)
//            logit_rows [R] int64: flat token indices whose logits are wanted
//            hidden_rows [H] int64: flat token indices whose final hidden states are wanted (embeddings)
//   outputs  logits [R,V]; logits_lse [R]: log Σ exp of each logits row (logprobs read it);
//            hidden [H,D] (after the final norm); new_key.l, new_value.l [N,Hkv·d]:
//            rotated keys and values of the new tokens
// The KV cache stays in JS memory in the layouts MatMul reads directly, so a step reads it in place
// with no concat or transpose; only the new rows come back (onnxruntime-node notes §2, pattern d).
//
// Each of the seven target projections is one call to `linear`, the hook that multi-adapter LoRA
// replaces to add its delta (loraLinear: per adapter slot, in two bands, with inputs shared by both
// groups: lora_a/lora_b per target, lora_g per layer, lora_x per band, lora_src, lora_pick,
// lora_g_index). Every such node costs ~4 µs in a 110M-model step on this VM even when no token has
// an adapter (~1000 of them: ~10% of a decode step), so the served graph (buildServedGraph) runs
// them only in steps that have adapter tokens.
import { GraphBuilder, float, graph, int, ints } from './graph/ir.ts';
import type { Graph } from './graph/ir.ts';
import type { ModelConfig } from './model-config.ts';
import { TARGETS, targetPath, targetShape } from './model-targets.ts';
import type { Target } from './model-targets.ts';
import { ropeCaches, ropeInverseFrequencies } from './rope.ts';
import { blocksOf, quantizeOnce, stackRows } from './quantize.ts';
import type { QuantizedMatrix, QuantScheme } from './quantize.ts';
import type { PrequantizedLinear } from './gptq.ts';

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
  quant?: GraphQuant | null;     // W0 of the seven projections quantized (MatMulNBits); null: float32
  prequantized?: Prequantized | null; // W0 quantized in the checkpoint (GPTQ): used as stored
  groups?: readonly number[];    // the token groups it runs (default both); any other must be
                                 // empty when it runs: buildServedGraph picks such a body per step
}

// W0 as a pre-quantized checkpoint stores it (gptq.ts, repacked losslessly): `<path>.weight` → its
// MatMulNBits layout and the permutation of K that x is gathered by (act-order), and the kernel's
// accuracy_level. A projection not in the map uses its float `.weight` as usual.
export interface Prequantized {
  linears: Map<string, PrequantizedLinear>;
  accuracyLevel: 0 | 4;
}

// Quantized W0 (issue 18): the scheme, and MatMulNBits' accuracy_level (4: activations to int8, the
// fast path on CPU; 0: float activations, exact against dequant(W0), and slow for 8 bits).
export interface GraphQuant extends QuantScheme {
  accuracyLevel: 0 | 4;
  lmHead?: boolean;              // the LM head too (a quantized copy when tied to the embeddings)
}

// The default projection: W stored transposed [in, out] as an initializer, so MatMul can prepack it.
export function bakedLinear(cfg: ModelConfig, weights: Weights, quant: GraphQuant | null = null, pre: Prequantized | null = null): LinearHook {
  return (b, x, layer, target) => addBias(b, weights, layer, target, bakedMatMul(b, cfg, weights, x, layer, target, quant, pre));
}

// The served projection: y = g ⊙ (x·W0ᵀ + (x·Aᵀ)·(s·B)ᵀ) + bias, with each token's own adapter (or
// none). The base product is one MatMul over all N tokens. The delta is computed per adapter SLOT
// (lora-arena.ts), not per row, over the tokens that use it, in two bands whatever group the
// tokens come from:
//   band 1  entries = the slots [lo, hi) of the arena, fed in place as lora_a.l.t [E, R, in] and
//           lora_b.l.t [E, out, R] (PEFT's layout; FusedMatMul transB multiplies by the
//           transposes inside the GEMM, so no adapter is ever transposed)
//   band 0  entries = a few slots picked from the same views (lora_pick): one Gather copy of
//           their factors, for rows whose many tokens (a prompt chunk among decode tokens) would
//           otherwise pad every band-1 entry to their width (lora-feeds.ts pickBand)
// Per band, lora_x.g [E_g, m_g] lists each entry's flat token indices (N, a zero row, pads the
// rest). The deltas of both bands, flattened, stand one above the other with a zero row under
// them ([E_1·m_1 + E_0·m_0 + 1, out]); lora_src [N] gives each token its delta's row there (a
// token without an adapter: the zero row, so y + 0 = x·W0ᵀ exactly; a step without adapters feeds
// [1], the zero row broadcast), and one Gather and one Add put them into y. (ScatterND with reduction add did the same ~0.7 ms slower per [512, 2048]
// output on this VM: it adds element by element on one thread, ~40 ms of a 512-token prefill.)
// A step with no adapter feeds E = 0 and R = 0. DoRA: lora_g.l [G, Σout] holds each slot's multipliers
// for the layer's targets side by side (row 0: ones), lora_g_index [N] picks a row per token; a step
// without DoRA feeds one row of ones and index [0], a broadcast multiply by 1.
// Every LoRA input is shared by both token groups: a step feeds 2 per target plus one per layer.
export function loraLinear(cfg: ModelConfig, weights: Weights, quant: GraphQuant | null = null, pre: Prequantized | null = null): LinearHook {
  const perGraph = new WeakMap<GraphBuilder, LoraShared>();
  return (b, x, layer, target) => {
    let shared = perGraph.get(b);
    if (!shared) perGraph.set(b, (shared = loraShared(b, cfg)));
    const [out, inDim] = targetShape(cfg, target);
    const names = loraInputNames(layer, target);
    const a = b.input(names.a, 'float32', ['lora_entries', 'lora_rank', inDim]);
    const sb = b.input(names.b, 'float32', ['lora_entries', out, 'lora_rank']);
    const timesT = (x3: string, m: string) => b.op('FusedMatMul', [x3, m], { transB: int(1) }, { domain: 'com.microsoft' });
    const flat = (delta: string) => b.op('Flatten', [delta], { axis: int(2) }); // [E, m, out] → [E·m, out]
    const xs = shared.tokens(x, inDim);
    const base = bakedMatMul(b, cfg, weights, x, layer, target, quant, pre); // the adapters' deltas stay float32 (and read x unpermuted)
    const pick = (m: string) => b.op('Gather', [m, 'lora_pick'], { axis: int(0) });
    const deltas = b.op('Concat', [
      flat(timesT(timesT(xs[1], a), sb)), // band 1: the slots in place
      flat(timesT(timesT(xs[0], pick(a)), pick(sb))), // band 0: picked slots
      shared.zeroRow(out),
    ], { axis: int(0) });
    let y = b.op('Add', [base, b.op('Gather', [deltas, 'lora_src'], { axis: int(0) })]);
    y = b.op('Mul', [y, shared.dora(layer, target)]);
    return addBias(b, weights, layer, target, y);
  };
}

// Names of the per-target and per-layer LoRA inputs (lora-arena.ts feeds them).
export function loraInputNames(layer: number, target: Target): { a: string; b: string } {
  return { a: `lora_a.${layer}.${target}`, b: `lora_b.${layer}.${target}` };
}

export const doraInputName = (layer: number): string => `lora_g.${layer}`;

// Column offset of each target's multipliers in a layer's DoRA row (TARGETS order), and the width.
export function doraColumns(cfg: ModelConfig): { offsets: Map<Target, number>; width: number } {
  const offsets = new Map<Target, number>();
  let width = 0;
  for (const t of TARGETS) {
    offsets.set(t, width);
    width += targetShape(cfg, t)[0];
  }
  return { offsets, width };
}

interface LoraShared {
  tokens(x: string, inDim: number): string[]; // per band: x's rows of each entry, [E_g, m_g, in]
  zeroRow(width: number): string;             // [1, width] of zeros
  dora(layer: number, target: Target): string; // [N | 1, out] multipliers
}

// What the projections of one graph share: the token gathers of each distinct x (q/k/v and
// gate/up read the same x) and the DoRA rows of each layer.
function loraShared(b: GraphBuilder, cfg: ModelConfig): LoraShared {
  for (let g = 0; g < GROUPS; g++) b.input(`lora_x.${g}`, 'int64', [`lora_entries_${g}`, `lora_width_${g}`]);
  b.input('lora_src', 'int64', ['lora_tokens']);
  b.input('lora_pick', 'int64', ['lora_entries_0']);
  b.input('lora_g_index', 'int64', ['dora_tokens']);
  const { offsets, width } = doraColumns(cfg);
  const gathered = new Map<string, string[]>();
  const zeroRows = new Map<number, string>();
  const layers = new Map<number, string>();
  const zeroRow = (width: number): string => {
    let zero = zeroRows.get(width);
    if (!zero) zeroRows.set(width, (zero = b.initializer(`lora.zero_row.${width}`, new Float32Array(width), [1, width])));
    return zero;
  };
  return {
    zeroRow,
    tokens(x, inDim) {
      let xs = gathered.get(x);
      if (!xs) {
        const padded = b.op('Concat', [x, zeroRow(inDim)], { axis: int(0) }); // [N + 1, in]: row N is the pad
        xs = Array.from({ length: GROUPS }, (_, g) => b.op('Gather', [padded, `lora_x.${g}`], { axis: int(0) }));
        gathered.set(x, xs);
      }
      return xs;
    },
    dora(layer, target) {
      let rows = layers.get(layer);
      if (!rows) {
        rows = b.op('Gather', [b.input(doraInputName(layer), 'float32', ['dora_rows', width]), 'lora_g_index'], { axis: int(0) });
        layers.set(layer, rows);
      }
      const from = offsets.get(target)!;
      return b.op('Slice', [rows, b.int64([from]), b.int64([from + targetShape(cfg, target)[0]]), b.int64([1])]);
    },
  };
}

// W stored transposed; one transposed copy per weight array, so that the served graph's two
// bodies (buildServedGraph) hold the same array and the export keeps it once.
const transposed = new WeakMap<Float32Array, Float32Array>();
const permutations = new WeakMap<Int32Array, BigInt64Array>();

// MatMulNBits' inputs for W [N, K] as stored (its B layout): x, then W quantized once per weight
// array and scheme (quantizeOnce: the served graph's two bodies share it), its scales and zero points.
function quantizedInputs(b: GraphBuilder, quant: GraphQuant, name: string, w: Float32Array, n: number, k: number, x: string): string[] {
  return nbitsInputs(b, name, quantizeOnce(w, n, k, quant), x);
}

function nbitsInputs(b: GraphBuilder, name: string, q: QuantizedMatrix, x: string): string[] {
  const { bits, block } = q.scheme;
  const blocks = blocksOf(q.k, block);
  return [
    x,
    b.initializer(`${name}.q${bits}`, q.packed, [q.n, blocks, (block * bits) / 8]),
    b.initializer(`${name}.scales`, q.scales, [q.n * blocks]),
    ...(q.zeroPoints ? [b.initializer(`${name}.zero_points`, q.zeroPoints, [q.zeroPoints.length])] : []),
  ];
}

const quantAttrs = (quant: QuantScheme & { accuracyLevel: number }, n: number, k: number) => ({ K: int(k), N: int(n), bits: int(quant.bits), block_size: int(quant.block), accuracy_level: int(quant.accuracyLevel) });

// Projections that read the same x run as one call over their stacked weights, then a Split: q/k/v
// and gate/up, 4 calls a layer instead of 7. Quantized: one MatMulNBits over the stacked rows. On
// this VM a MatMulNBits call costs ~60–70 µs at M = 1 whatever its size (bench/quant-probe.ts:
// 768→768 and 768→2048 within 15 µs of each other). A GPTQ base keeps one call per target (each may
// have its own act-order permutation).
const FUSED: readonly (readonly Target[])[] = [['q_proj', 'k_proj', 'v_proj'], ['gate_proj', 'up_proj']];
const fusedOutputs = new WeakMap<GraphBuilder, Map<string, string[]>>();
const stackedT = new WeakMap<Float32Array, Float32Array>(); // float32: Wᵀ side by side, per first weight

// The group's outputs for x: one call over the stacked weights (MatMulNBits over the stacked
// quantized rows, or MatMul over [in, Σout]), then a Split; built once per graph and x. Float32,
// interleaved in one process (plain graph, 110M model, 160 decode steps each, three runs): decode
// 12.3 / 12.8 / 14.1 ms against 14.1 / 13.1 / 16.0 with one MatMul per target; 512-token prefill
// the same within the noise. The stacked arrays are built once per weight array, so both served
// bodies share them.
function fusedProjection(b: GraphBuilder, cfg: ModelConfig, weights: Weights, x: string, layer: number, group: readonly Target[], quant: GraphQuant | null): string[] {
  let cache = fusedOutputs.get(b);
  if (!cache) fusedOutputs.set(b, (cache = new Map()));
  const key = `${layer}|${group.join(',')}|${x}`;
  let outs = cache.get(key);
  if (!outs) {
    const inDim = targetShape(cfg, group[0])[1];
    const sizes = group.map((t) => targetShape(cfg, t)[0]);
    const total = sizes.reduce((a, n) => a + n, 0);
    const ws = group.map((t) => weights.get(`${targetPath(layer, t)}.weight`)!);
    const name = `${targetPath(layer, group[0])}.stacked${group.length}`;
    let y: string;
    if (quant) {
      const stacked = stackRows(ws.map((w, i) => quantizeOnce(w, sizes[i], inDim, quant)));
      y = b.op('MatMulNBits', nbitsInputs(b, `${name}.weight`, stacked, x), quantAttrs(quant, total, inDim), { domain: 'com.microsoft' });
    } else {
      let wT = stackedT.get(ws[0]);
      if (!wT) stackedT.set(ws[0], (wT = transpose(concatRows(ws), total, inDim)));
      y = b.op('MatMul', [x, b.initializer(`${name}.T`, wT, [inDim, total])]);
    }
    outs = b.opN('Split', [y, b.int64(sizes)], group.length, { axis: int(-1) });
    cache.set(key, outs);
  }
  return outs;
}

const concatRows = (parts: Float32Array[]): Float32Array => {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
};

function bakedMatMul(b: GraphBuilder, cfg: ModelConfig, weights: Weights, x: string, layer: number, target: Target, quant: GraphQuant | null = null, pre: Prequantized | null = null): string {
  const name = `${targetPath(layer, target)}.weight`;
  const [out, inDim] = targetShape(cfg, target);
  const stored = pre?.linears.get(name);
  if (stored) {
    // act-order: MatMulNBits reads K in the checkpoint's group order, x gathered to match
    let perm = stored.perm && permutations.get(stored.perm);
    if (stored.perm && !perm) permutations.set(stored.perm, (perm = BigInt64Array.from(stored.perm, BigInt)));
    const input = perm ? b.op('Gather', [x, b.initializer(`${name}.perm`, perm, [inDim])], { axis: int(-1) }) : x;
    const attrs = quantAttrs({ ...stored.matrix.scheme, accuracyLevel: pre!.accuracyLevel }, out, inDim);
    return b.op('MatMulNBits', nbitsInputs(b, name, stored.matrix, input), attrs, { domain: 'com.microsoft' });
  }
  const group = pre ? undefined : FUSED.find((g) => g.includes(target)); // a GPTQ base keeps one call per target
  if (group) return fusedProjection(b, cfg, weights, x, layer, group, quant)[group.indexOf(target)];
  const w = weights.get(name)!;
  if (quant) return b.op('MatMulNBits', quantizedInputs(b, quant, name, w, out, inDim, x), quantAttrs(quant, out, inDim), { domain: 'com.microsoft' });
  let wT = transposed.get(w);
  if (!wT) transposed.set(w, (wT = transpose(w, out, inDim)));
  return b.op('MatMul', [x, b.initializer(`${name}.T`, wT, [inDim, out])]);
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
  const linear = opts.linear ?? bakedLinear(cfg, weights, opts.quant ?? null, opts.prequantized ?? null);
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
  const hiddenRows = b.input('hidden_rows', 'int64', ['hidden_rows']);
  const active = opts.groups ?? Array.from({ length: GROUPS }, (_, g) => g);
  const groups = tokenGroups(b, groupSizes, gs.map((g) => g.ids), active);

  const { cos, sin } = ropeCaches(opts.maxPositions, ropeInverseFrequencies(d, cfg.ropeTheta, cfg.ropeScaling));
  const cosCache = b.initializer('rope.cos', cos, [opts.maxPositions, d / 2]);
  const sinCache = b.initializer('rope.sin', sin, [opts.maxPositions, d / 2]);
  const embed = b.initializer('model.embed_tokens.weight', w('model.embed_tokens.weight'), [V, D]);
  const scale = b.float32Scalar(1 / Math.sqrt(d));
  // positions of all N tokens as [N, 1], for the rotary op: N sequences of one token each. As one
  // sequence of N ([1, N]) the op refuses N above its caches' rows (maxPositions), which a step's
  // prompt chunk plus its decode rows can exceed ("Updating cos_cache and sin_cache … not supported")
  const positions = b.op('Concat', active.map((i) => b.op('Reshape', [gs[i].positions, groups.shape(b, i, ['N', 1])], { allowzero: int(1) })), { axis: int(0) });
  // per group: [P_g, S_g], the widths of the past and the new part of its attention scores
  const splitSizes = gs.map((g, i) => !active.includes(i) ? '' : b.op('Concat', [
    b.op('Slice', [b.op('Shape', [`past_key.${i}.0`]), b.int64([2]), b.int64([3])]),
    b.op('Slice', [b.op('Shape', [g.ids]), b.int64([1]), b.int64([2])]),
  ], { axis: int(0) }));

  let h = groups.join(b, active.map((i) => groups.to2d(b, b.op('Gather', [embed, gs[i].ids], { axis: int(0) }), i, D))); // [N,D]
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    // attention block: projections and rotary over all N tokens, attention per group
    const x = rmsNorm(b, h, b.initializer(`${p}.input_layernorm.weight`, w(`${p}.input_layernorm.weight`), [D]), cfg.rmsNormEps);
    const q = linear(b, x, l, 'q_proj', groups);
    const k = linear(b, x, l, 'k_proj', groups);
    const v = linear(b, x, l, 'v_proj', groups);
    const rotary = (t: string, heads: number, out?: string): string => {
      const r = b.op('RotaryEmbedding', [b.op('Unsqueeze', [t, b.int64([1])]), positions, cosCache, sinCache], { interleaved: int(0), num_heads: int(heads) }, { domain: 'com.microsoft' });
      return b.op('Squeeze', [r, b.int64([1])], {}, { out });
    };
    const qRot = groups.split(b, b.op('Mul', [rotary(q, H), scale]));
    const kFlat = rotary(k, Hkv, `new_key.${l}`);
    b.op('Identity', [v], {}, { out: `new_value.${l}` });
    b.output(kFlat, 'float32', ['tokens', kvDim]);
    b.output(`new_value.${l}`, 'float32', ['tokens', kvDim]);
    const kRot = groups.split(b, kFlat);
    const vs = groups.split(b, v);

    const attnParts = active.map((i) => {
      const g = gs[i];
      const pastK = b.input(`past_key.${i}.${l}`, 'float32', [`batch_${i}`, Hkv, `past_${i}`, d]);
      const pastV = b.input(`past_value.${i}.${l}`, 'float32', [`batch_${i}`, Hkv, `past_${i}`, d]);
      // Q: [B,S,H·d] → [B,Hkv,rep·S,d]; query head a = g·rep + r uses kv head g (repeat_kv)
      const q5 = b.op('Transpose', [b.op('Reshape', [groups.to3d(b, qRot[i], i, H * d), b.int64([0, 0, Hkv, rep, d])])], { perm: ints([0, 2, 3, 1, 4]) });
      const qG = b.op('Reshape', [q5, groups.shape(b, i, ['B', Hkv, ['S', rep], d])], { allowzero: int(1) });
      // new keys/values of this step: [B,Hkv,S,d]
      const heads = (t: string): string => b.op('Transpose', [b.op('Reshape', [groups.to3d(b, t, i, kvDim), b.int64([0, 0, Hkv, d])])], { perm: ints([0, 2, 1, 3]) });
      const kNew = heads(kRot[i]);
      const vNew = heads(vs[i]);
      // scores against the cached past and the new tokens, side by side: [B,Hkv,rep·S,P+S]. The
      // cache is read in place (no concat of the past with the new rows), the keys as stored,
      // position-major: FusedMatMul's transB multiplies by Kᵀ inside the GEMM (docs/architecture.md)
      const timesKT = (keys: string): string => b.op('FusedMatMul', [qG, keys], { transB: int(1) }, { domain: 'com.microsoft' });
      const scores = b.op('Concat', [timesKT(pastK), timesKT(kNew)], { axis: int(-1) });
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
  b.op('Gather', [hn, hiddenRows], { axis: int(0) }, { out: 'hidden' }); // [H,D]: usually none
  b.output('hidden', 'float32', ['hidden_rows', D]);
  const rows = b.op('Gather', [hn, logitRows], { axis: int(0) }); // [R,D]
  // lm_head [V,D] used as stored (transB), so a tied embedding is not duplicated.
  const headW = cfg.tieWordEmbeddings ? w('model.embed_tokens.weight') : w('lm_head.weight');
  if (opts.quant?.lmHead) {
    b.op('MatMulNBits', quantizedInputs(b, opts.quant, 'lm_head.weight', headW, V, D, rows), quantAttrs(opts.quant, V, D), { domain: 'com.microsoft', out: 'logits' });
  } else {
    const head = cfg.tieWordEmbeddings ? embed : b.initializer('lm_head.weight', headW, [V, D]);
    b.op('Gemm', [rows, head], { transB: int(1) }, { out: 'logits' });
  }
  b.output('logits', 'float32', ['rows', V]);
  logSumExpRows(b, 'logits', 'logits_lse');
  b.output('logits_lse', 'float32', ['rows']);
  return b.build();
}

// out [R] = log Σ_j exp(x[r, j]) of x [R, V], stably (max-shifted), in float32. A logprob is
// logits[id] − lse: in the graph this costs ~15 µs a row at vocab 32000, in JS (float64) ~300 µs.
export function logSumExpRows(b: GraphBuilder, x: string, out: string): string {
  const axis = b.int64([1]);
  const max = b.op('ReduceMax', [x, axis], { keepdims: int(1) });
  const sum = b.op('ReduceSum', [b.op('Exp', [b.op('Sub', [x, max])]), axis], { keepdims: int(1) });
  return b.op('Squeeze', [b.op('Add', [b.op('Log', [sum]), max]), axis], {}, { out });
}

// The served graph: If(the step has adapter tokens, the LoRA body (loraLinear), the plain body).
// A step without adapters then runs exactly the plain graph's nodes: the LoRA body's ~1000 small
// nodes cost ~10% of a 110M-model decode step on this VM even when empty (≈4 µs each in place).
// Both bodies read the same weights from the outer graph (ORT prepacks a shared initializer once:
// measured, RSS as for one body). The condition is read from the LoRA token feeds' shapes, so the
// step runner feeds the same inputs either way.
export function buildServedGraph(cfg: ModelConfig, weights: Weights, opts: Omit<LlamaGraphOptions, 'linear'>): Graph {
  const lora = buildLlamaGraph(cfg, weights, { ...opts, linear: loraLinear(cfg, weights, opts.quant ?? null, opts.prequantized ?? null) });
  const plain = buildLlamaGraph(cfg, weights, opts);
  // initializers: one per name where both bodies hold the same data (the weights, most
  // constants); a constant that differs keeps a copy per body, under the body's prefix
  const initializers = new Map(lora.initializers.map((t) => [t.name, t]));
  const body = (g: Graph, prefix: string): Graph => {
    const own = new Set<string>();
    for (const t of g.initializers) {
      const other = initializers.get(t.name);
      if (!other) initializers.set(t.name, t);
      else if (!sameData(other.data, t.data)) own.add(t.name);
    }
    const local = new Set([...g.nodes.flatMap((n) => n.outputs), ...own]);
    const rename = (v: string) => (local.has(v) ? `${prefix}${v}` : v);
    for (const t of g.initializers) if (own.has(t.name)) initializers.set(rename(t.name), { ...t, name: rename(t.name) });
    return {
      name: prefix,
      inputs: [],
      outputs: g.outputs.map((o) => ({ ...o, name: rename(o.name) })),
      nodes: g.nodes.map((n) => ({ ...n, inputs: n.inputs.map(rename), outputs: n.outputs.map(rename) })),
      initializers: [],
    };
  };
  const thenBody = body(lora, 'lora.');
  const elseBody = body(plain, 'plain.');
  // the condition: any entry in either band's token feeds
  const b = new GraphBuilder('loraserve-served');
  const entries = b.op('Add', [b.op('Size', ['lora_x.0']), b.op('Size', ['lora_x.1'])]);
  const any = b.op('Greater', [entries, b.int64([0])]);
  b.opN('If', [any], lora.outputs.length, { then_branch: graph(thenBody), else_branch: graph(elseBody) }, { outs: lora.outputs.map((o) => o.name) });
  const top = b.build();
  // its constants under names the bodies' shared constants do not use
  const own = (v: string) => (top.initializers.some((t) => t.name === v) ? `served.${v}` : v);
  return {
    name: 'loraserve-served',
    inputs: lora.inputs,
    outputs: lora.outputs,
    nodes: top.nodes.map((n) => ({ ...n, inputs: n.inputs.map(own) })),
    initializers: [...initializers.values(), ...top.initializers.map((t) => ({ ...t, name: own(t.name) }))],
  };
}

function sameData(a: Float32Array | BigInt64Array | Int32Array | Uint8Array, b: Float32Array | BigInt64Array | Int32Array | Uint8Array): boolean {
  if (a === b) return true;
  if (a.constructor !== b.constructor || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// Reshapes between the flat token axis and the groups' [B_g, S_g] (allowzero: a group may be empty).
// With one active group (the others empty), split and join are the identity.
function tokenGroups(b: GraphBuilder, groupSizes: string, ids: string[], active: readonly number[]): TokenGroups {
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
    split: (bb, flat) => {
      if (active.length === ids.length) return bb.opN('Split', [flat, groupSizes], ids.length, { axis: int(0) });
      if (active.length !== 1) throw new Error('token groups: one group, or all of them');
      return ids.map((_, g) => (g === active[0] ? flat : ''));
    },
    to3d: (bb, part, g, c) => bb.op('Reshape', [part, shape(`3d.${g}.${c}`, () => bb.op('Concat', [idShape[g], bb.int64([c])], { axis: int(0) }))], { allowzero: int(1) }),
    to2d: (bb, part, g, c) => bb.op('Reshape', [part, shape(`2d.${g}.${c}`, () => bb.op('Concat', [n[g], bb.int64([c])], { axis: int(0) }))], { allowzero: int(1) }),
    join: (bb, parts) => (parts.length === 1 ? parts[0] : bb.op('Concat', parts, { axis: int(0) })),
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
