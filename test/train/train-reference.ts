// The tests' own float64 loss: ReferenceLlama (test/reference, no code shared with src) run over
// each row with ΔW = s·B·A added to the targeted weights, then Σ w·NLL / Σ w with a float64
// log-softmax. Shared by the gradient check and the step-0 test. referenceLossLora is a second,
// full-sequence float64 forward that computes the LoRA path per token, for dropout masks (dropout test).
import { ReferenceLlama } from '../reference/llama-reference.ts';
import { Rng } from '../../src/runtime/random.ts';

export interface RefSlot { layer: number; target: string; rank: number; scale: number; out: number; in: number }
export interface RefBatch { B: number; T: number; ids: number[]; labels: number[]; weights: number[] }

export const modulePath = (layer: number, target: string): string =>
  `model.layers.${layer}.${['gate_proj', 'up_proj', 'down_proj'].includes(target) ? 'mlp' : 'self_attn'}.${target}.weight`;

// ΔW = s · B[out, r] · A[r, in], in float64
export function loraDelta(slot: RefSlot, a: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  const { out, in: n, rank: r, scale } = slot;
  const dw = new Float64Array(out * n);
  for (let o = 0; o < out; o++) for (let k = 0; k < r; k++) {
    const bk = scale * b[o * r + k];
    for (let i = 0; i < n; i++) dw[o * n + i] += bk * a[k * n + i];
  }
  return dw;
}

export function referenceLoss(cfgJson: Record<string, unknown>, weights: Map<string, Float32Array>, deltas: Map<string, Float64Array>, batch: RefBatch): { loss: number; logprobs: number[] } {
  const logprobs: number[] = [];
  let nll = 0;
  let wsum = 0;
  for (let row = 0; row < batch.B; row++) {
    const model = new ReferenceLlama(cfgJson, weights, deltas);
    const logits = model.forward(batch.ids.slice(row * batch.T, (row + 1) * batch.T));
    logits.forEach((z, t) => {
      const i = row * batch.T + t;
      let max = -Infinity;
      for (const v of z) max = Math.max(max, v);
      let sum = 0;
      for (const v of z) sum += Math.exp(v - max);
      const lp = z[batch.labels[i]] - max - Math.log(sum);
      logprobs.push(lp);
      nll -= batch.weights[i] * lp;
      wsum += batch.weights[i];
    });
  }
  return { loss: nll / wsum, logprobs };
}

export function randomArray(n: number, std: number, rng: Rng): Float32Array {
  return Float32Array.from({ length: n }, () => std * rng.normal());
}

// A LoRA slot with its factors and, optionally, a dropout mask [B·T, in] (row-major, token-major)
// applied to the LoRA path's input only: y = W x (+ b) + s·B·(A·(m ⊙ x)).
export interface RefLora { slot: RefSlot; a: ArrayLike<number>; b: ArrayLike<number>; mask?: ArrayLike<number> }

// Σ w·NLL / Σ w of a float64 full-sequence causal Llama (default RoPE, GQA, SwiGLU, tied or untied
// head, optional biases) with the LoRA path computed per token, so that a per-token dropout mask
// can be applied (a mask cannot be folded into ΔW). Written for the dropout test; with no masks it
// agrees with referenceLoss (the test checks that).
export function referenceLossLora(cfg: Record<string, any>, weights: Map<string, Float32Array>, loras: RefLora[], batch: RefBatch): { loss: number; logprobs: number[] } {
  const D: number = cfg.hidden_size;
  const H: number = cfg.num_attention_heads;
  const Hkv: number = cfg.num_key_value_heads ?? H;
  const d: number = cfg.head_dim ?? D / H;
  const F: number = cfg.intermediate_size;
  const V: number = cfg.vocab_size;
  const eps: number = cfg.rms_norm_eps;
  const rep = H / Hkv;
  if (cfg.rope_scaling) throw new Error('referenceLossLora: default RoPE only');
  const theta: number = cfg.rope_theta ?? 10000;
  const invFreq = Array.from({ length: d / 2 }, (_, j) => Math.pow(theta, -(2 * j) / d));
  const W = (name: string): Float32Array => {
    const t = weights.get(name);
    if (!t) throw new Error(`missing weight ${name}`);
    return t;
  };
  const byPath = new Map(loras.map((l) => [modulePath(l.slot.layer, l.slot.target), l]));
  const { B, T } = batch;
  // y = W x (+ b) (+ s·B·A·(m ⊙ x)) for token `tok` (flat index into the batch)
  const linear = (x: Float64Array, layer: number, target: string, out: number, inDim: number, tok: number): Float64Array => {
    const path = modulePath(layer, target);
    const w = W(path);
    const bias = weights.get(path.replace(/\.weight$/, '.bias'));
    const y = new Float64Array(out);
    for (let o = 0; o < out; o++) {
      let s = bias ? bias[o] : 0;
      for (let i = 0; i < inDim; i++) s += w[o * inDim + i] * x[i];
      y[o] = s;
    }
    const l = byPath.get(path);
    if (l) {
      const r = l.slot.rank;
      const xm = Float64Array.from(x, (v, i) => (l.mask ? l.mask[tok * inDim + i] * v : v));
      const ax = new Float64Array(r);
      for (let k = 0; k < r; k++) for (let i = 0; i < inDim; i++) ax[k] += l.a[k * inDim + i] * xm[i];
      for (let o = 0; o < out; o++) {
        let s = 0;
        for (let k = 0; k < r; k++) s += l.b[o * r + k] * ax[k];
        y[o] += l.slot.scale * s;
      }
    }
    return y;
  };
  const rmsnorm = (x: Float64Array, w: Float32Array): Float64Array => {
    let ss = 0;
    for (const v of x) ss += v * v;
    const r = 1 / Math.sqrt(ss / x.length + eps);
    return x.map((v, i) => v * r * w[i]);
  };
  const rope = (x: Float64Array, heads: number, pos: number): void => {
    const half = d / 2;
    for (let hh = 0; hh < heads; hh++) {
      for (let j = 0; j < half; j++) {
        const ang = pos * invFreq[j];
        const c = Math.cos(ang);
        const s = Math.sin(ang);
        const a = x[hh * d + j];
        const b = x[hh * d + j + half];
        x[hh * d + j] = a * c - b * s;
        x[hh * d + j + half] = b * c + a * s;
      }
    }
  };

  const embed = W('model.embed_tokens.weight');
  const head = cfg.tie_word_embeddings === true ? embed : W('lm_head.weight');
  const logprobs: number[] = [];
  let nll = 0;
  let wsum = 0;
  for (let row = 0; row < B; row++) {
    const tok = (t: number): number => row * T + t;
    let h = Array.from({ length: T }, (_, t) => Float64Array.from(embed.subarray(batch.ids[tok(t)] * D, (batch.ids[tok(t)] + 1) * D)));
    for (let l = 0; l < cfg.num_hidden_layers; l++) {
      const p = `model.layers.${l}`;
      const x = h.map((v) => rmsnorm(v, W(`${p}.input_layernorm.weight`)));
      const q = x.map((v, t) => { const y = linear(v, l, 'q_proj', H * d, D, tok(t)); rope(y, H, t); return y; });
      const k = x.map((v, t) => { const y = linear(v, l, 'k_proj', Hkv * d, D, tok(t)); rope(y, Hkv, t); return y; });
      const v = x.map((xv, t) => linear(xv, l, 'v_proj', Hkv * d, D, tok(t)));
      h = h.map((ht, t) => {
        const attn = new Float64Array(H * d);
        for (let a = 0; a < H; a++) {
          const g = Math.floor(a / rep);
          const scores = new Float64Array(t + 1);
          let max = -Infinity;
          for (let u = 0; u <= t; u++) {
            let s = 0;
            for (let i = 0; i < d; i++) s += q[t][a * d + i] * k[u][g * d + i];
            scores[u] = s / Math.sqrt(d);
            max = Math.max(max, scores[u]);
          }
          let sum = 0;
          for (let u = 0; u <= t; u++) { scores[u] = Math.exp(scores[u] - max); sum += scores[u]; }
          for (let u = 0; u <= t; u++) for (let i = 0; i < d; i++) attn[a * d + i] += (scores[u] / sum) * v[u][g * d + i];
        }
        const o = linear(attn, l, 'o_proj', D, H * d, tok(t));
        return ht.map((val, i) => val + o[i]);
      });
      h = h.map((ht, t) => {
        const x2 = rmsnorm(ht, W(`${p}.post_attention_layernorm.weight`));
        const gate = linear(x2, l, 'gate_proj', F, D, tok(t));
        const up = linear(x2, l, 'up_proj', F, D, tok(t));
        const act = gate.map((gv, i) => (gv / (1 + Math.exp(-gv))) * up[i]);
        const down = linear(act, l, 'down_proj', D, F, tok(t));
        return ht.map((val, i) => val + down[i]);
      });
    }
    h.forEach((ht, t) => {
      const hn = rmsnorm(ht, W('model.norm.weight'));
      const z = new Float64Array(V);
      for (let r = 0; r < V; r++) {
        let s = 0;
        for (let i = 0; i < D; i++) s += head[r * D + i] * hn[i];
        z[r] = s;
      }
      let max = -Infinity;
      for (const val of z) max = Math.max(max, val);
      let sum = 0;
      for (const val of z) sum += Math.exp(val - max);
      const i = tok(t);
      const lp = z[batch.labels[i]] - max - Math.log(sum);
      logprobs.push(lp);
      nll -= batch.weights[i] * lp;
      wsum += batch.weights[i];
    });
  }
  return { loss: nll / wsum, logprobs };
}

// Analytic gradient entries `an` against central finite differences `fd` at the same entries of one
// tensor: the norm-wise relative error ‖an − fd‖ / ‖fd‖ must be ≤ 1e-3, and each entry within 1e-3 of
// max(|fd|, ‖fd‖∞). Problems go to `errors`; returns the norm-wise error.
export function compareGradient(name: string, picks: readonly number[], fd: readonly number[], an: readonly number[], errors: string[]): number {
  const norm = Math.hypot(...fd);
  const inf = Math.max(...fd.map(Math.abs));
  const rel = Math.hypot(...fd.map((f, j) => f - an[j])) / norm;
  if (!(rel <= 1e-3)) errors.push(`${name}: norm-wise relative error ${rel.toExponential(2)} (fd ${fd.map((f) => f.toExponential(3))}, graph ${an.map((f) => f.toExponential(3))})`);
  fd.forEach((f, j) => {
    if (!(Math.abs(an[j] - f) <= 1e-3 * Math.max(Math.abs(f), inf))) errors.push(`${name}[${picks[j]}]: ${an[j]} vs fd ${f}`);
  });
  return rel;
}
