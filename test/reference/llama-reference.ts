// An independent float64 Llama forward pass for tests. It reads the raw Hugging Face config.json
// fields and weight map itself and shares no code with src/runtime's graph builder.
// Follows shared/reference/formats-and-apis.md §4.3–4.4 (rotate_half RoPE, repeat_kv GQA, RMSNorm).

type Json = Record<string, any>;

export class ReferenceLlama {
  private readonly D: number;
  private readonly H: number;
  private readonly Hkv: number;
  private readonly d: number;
  private readonly F: number;
  private readonly L: number;
  private readonly V: number;
  private readonly eps: number;
  private readonly invFreq: number[];
  private readonly w: Map<string, Float64Array>;
  private readonly tied: boolean;
  // per layer: cached keys/values [t][Hkv*d]
  // the final hidden state (after the last norm) of every position fed so far
  hidden: Float64Array[] = [];
  private kCache: number[][][] = [];
  private vCache: number[][][] = [];

  constructor(cfg: Json, weights: Map<string, Float32Array>, deltas: Map<string, Float64Array> = new Map()) {
    this.D = cfg.hidden_size;
    this.H = cfg.num_attention_heads;
    this.Hkv = cfg.num_key_value_heads ?? this.H;
    this.d = cfg.head_dim ?? this.D / this.H;
    this.F = cfg.intermediate_size;
    this.L = cfg.num_hidden_layers;
    this.V = cfg.vocab_size;
    this.eps = cfg.rms_norm_eps;
    this.tied = cfg.tie_word_embeddings === true;
    this.w = new Map();
    for (const [k, v] of weights) {
      const f = Float64Array.from(v);
      const delta = deltas.get(k); // ΔW added explicitly (LoRA checks)
      if (delta) for (let i = 0; i < f.length; i++) f[i] += delta[i];
      this.w.set(k, f);
    }
    this.invFreq = referenceInvFreq(cfg, this.d);
    this.reset();
  }

  reset(): void {
    this.hidden = [];
    this.kCache = Array.from({ length: this.L }, () => []);
    this.vCache = Array.from({ length: this.L }, () => []);
  }

  get length(): number {
    return this.kCache[0].length;
  }

  // Feeds tokens after the cached ones; returns the logits of every new position.
  forward(tokens: number[]): Float64Array[] {
    return tokens.map((t) => this.forwardOne(t));
  }

  private forwardOne(token: number): Float64Array {
    const { D, H, Hkv, d, L, V } = this;
    const pos = this.length;
    let h = this.row('model.embed_tokens.weight', token, D);
    for (let l = 0; l < L; l++) {
      const p = `model.layers.${l}`;
      const x = this.rmsnorm(h, this.w.get(`${p}.input_layernorm.weight`)!);
      const q = this.linear(x, `${p}.self_attn.q_proj`, H * d, D);
      const k = this.linear(x, `${p}.self_attn.k_proj`, Hkv * d, D);
      const v = this.linear(x, `${p}.self_attn.v_proj`, Hkv * d, D);
      for (let a = 0; a < H; a++) this.rope(q, a * d, pos);
      for (let g = 0; g < Hkv; g++) this.rope(k, g * d, pos);
      this.kCache[l].push(Array.from(k));
      this.vCache[l].push(Array.from(v));
      const T = this.kCache[l].length;
      const attn = new Float64Array(H * d);
      const rep = H / Hkv;
      for (let a = 0; a < H; a++) {
        const g = Math.floor(a / rep);
        const scores = new Float64Array(T);
        let max = -Infinity;
        for (let t = 0; t < T; t++) {
          let s = 0;
          for (let i = 0; i < d; i++) s += q[a * d + i] * this.kCache[l][t][g * d + i];
          scores[t] = s / Math.sqrt(d);
          if (scores[t] > max) max = scores[t];
        }
        let sum = 0;
        for (let t = 0; t < T; t++) { scores[t] = Math.exp(scores[t] - max); sum += scores[t]; }
        for (let t = 0; t < T; t++) {
          const pr = scores[t] / sum;
          for (let i = 0; i < d; i++) attn[a * d + i] += pr * this.vCache[l][t][g * d + i];
        }
      }
      const o = this.linear(attn, `${p}.self_attn.o_proj`, D, H * d);
      h = h.map((val, i) => val + o[i]);
      const x2 = this.rmsnorm(h, this.w.get(`${p}.post_attention_layernorm.weight`)!);
      const gate = this.linear(x2, `${p}.mlp.gate_proj`, this.F, D);
      const up = this.linear(x2, `${p}.mlp.up_proj`, this.F, D);
      const act = gate.map((gv, i) => (gv / (1 + Math.exp(-gv))) * up[i]);
      const down = this.linear(act, `${p}.mlp.down_proj`, D, this.F);
      h = h.map((val, i) => val + down[i]);
    }
    const hn = this.rmsnorm(h, this.w.get('model.norm.weight')!);
    this.hidden.push(hn);
    const head = this.w.get(this.tied ? 'model.embed_tokens.weight' : 'lm_head.weight')!;
    const logits = new Float64Array(V);
    for (let r = 0; r < V; r++) {
      let s = 0;
      for (let i = 0; i < D; i++) s += head[r * D + i] * hn[i];
      logits[r] = s;
    }
    return logits;
  }

  private row(name: string, r: number, cols: number): Float64Array {
    return this.w.get(name)!.slice(r * cols, (r + 1) * cols);
  }

  // y = W x (+ b), W [out, in]
  private linear(x: Float64Array, prefix: string, out: number, inDim: number): Float64Array {
    const W = this.w.get(`${prefix}.weight`)!;
    const b = this.w.get(`${prefix}.bias`);
    const y = new Float64Array(out);
    for (let o = 0; o < out; o++) {
      let s = b ? b[o] : 0;
      for (let i = 0; i < inDim; i++) s += W[o * inDim + i] * x[i];
      y[o] = s;
    }
    return y;
  }

  private rmsnorm(x: Float64Array, w: Float64Array): Float64Array {
    let ss = 0;
    for (const v of x) ss += v * v;
    const r = 1 / Math.sqrt(ss / x.length + this.eps);
    return x.map((v, i) => v * r * w[i]);
  }

  // rotate_half on one head starting at `off`: pairs (j, j + d/2)
  private rope(x: Float64Array, off: number, pos: number): void {
    const half = this.d / 2;
    for (let j = 0; j < half; j++) {
      const ang = pos * this.invFreq[j];
      const c = Math.cos(ang);
      const s = Math.sin(ang);
      const a = x[off + j];
      const b = x[off + j + half];
      x[off + j] = a * c - b * s;
      x[off + j + half] = b * c + a * s;
    }
  }
}

function referenceInvFreq(cfg: Json, d: number): number[] {
  const rp = cfg.rope_parameters ?? cfg.rope_scaling ?? {};
  const theta = rp.rope_theta ?? cfg.rope_theta ?? 10000;
  const type = rp.rope_type ?? rp.type ?? 'default';
  const inv = Array.from({ length: d / 2 }, (_, j) => Math.pow(theta, -(2 * j) / d));
  if (type === 'linear') return inv.map((f) => f / rp.factor);
  if (type === 'llama3') {
    const L = rp.original_max_position_embeddings;
    const lowWl = L / rp.low_freq_factor;
    const highWl = L / rp.high_freq_factor;
    return inv.map((f) => {
      const wl = (2 * Math.PI) / f;
      if (wl < highWl) return f;
      if (wl > lowWl) return f / rp.factor;
      const smooth = (L / wl - rp.low_freq_factor) / (rp.high_freq_factor - rp.low_freq_factor);
      return (1 - smooth) * f / rp.factor + smooth * f;
    });
  }
  return inv;
}

// Greedy decoding with the reference: `n` tokens after `prompt`, each with its log-probability.
export function greedyReference(ref: ReferenceLlama, prompt: number[], n: number): { ids: number[]; lp: number[] } {
  let logits = ref.forward(prompt).at(-1)!;
  const ids: number[] = [];
  const lp: number[] = [];
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
    let max = -Infinity;
    for (const x of logits) max = Math.max(max, x);
    let sum = 0;
    for (const x of logits) sum += Math.exp(x - max);
    ids.push(best);
    lp.push(logits[best] - max - Math.log(sum));
    logits = ref.forward([best])[0];
  }
  return { ids, lp };
}
