// AdamW (Loshchilov & Hutter; torch.optim.AdamW's update) over named Float32Arrays, updated in
// place, and global-norm gradient clipping (torch.nn.utils.clip_grad_norm_). Arithmetic per entry
// is in float64; moments are stored in float32 like the parameters.
//
//   p ← p − lr·λ·p                          decoupled weight decay, before the Adam step
//   m ← β1·m + (1 − β1)·g,  v ← β2·v + (1 − β2)·g²
//   p ← p − lr · (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε)

export interface AdamWOptions {
  lr: number;
  beta1?: number;       // 0.9
  beta2?: number;       // 0.999
  eps?: number;         // 1e-8
  weightDecay?: number; // 0.01 (torch's default)
}

// Everything a checkpoint needs to resume the optimizer exactly.
export interface AdamWState {
  step: number;
  m: Map<string, Float32Array>;
  v: Map<string, Float32Array>;
}

export class AdamW {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  lr: number; // a schedule may change it between steps
  private state: AdamWState = { step: 0, m: new Map(), v: new Map() };

  constructor(opts: AdamWOptions) {
    this.lr = opts.lr;
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0.01;
  }

  get stepCount(): number {
    return this.state.step;
  }

  // One update of every parameter that has a gradient (in place).
  step(params: Map<string, Float32Array>, grads: Map<string, Float32Array>): void {
    const t = ++this.state.step;
    const { beta1: b1, beta2: b2, eps, lr } = this;
    const c1 = 1 - b1 ** t;
    const c2 = 1 - b2 ** t;
    const decay = 1 - lr * this.weightDecay;
    for (const [name, g] of grads) {
      const p = params.get(name);
      if (!p || p.length !== g.length) throw new Error(`AdamW: no parameter ${name} of ${g.length} values`);
      const m = this.moment(this.state.m, name, p.length);
      const v = this.moment(this.state.v, name, p.length);
      for (let i = 0; i < p.length; i++) {
        const gi = g[i];
        const mi = b1 * m[i] + (1 - b1) * gi;
        const vi = b2 * v[i] + (1 - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - lr * (mi / c1) / (Math.sqrt(vi / c2) + eps);
      }
    }
  }

  exportState(): AdamWState {
    return { step: this.state.step, m: copy(this.state.m), v: copy(this.state.v) };
  }

  importState(state: AdamWState): void {
    this.state = { step: state.step, m: copy(state.m), v: copy(state.v) };
  }

  private moment(store: Map<string, Float32Array>, name: string, length: number): Float32Array {
    let a = store.get(name);
    if (!a) store.set(name, (a = new Float32Array(length)));
    return a;
  }
}

const copy = (m: Map<string, Float32Array>): Map<string, Float32Array> => new Map([...m].map(([k, a]) => [k, a.slice()]));

// The L2 norm of all gradients taken as one vector.
export function globalNorm(grads: Iterable<Float32Array>): number {
  let sq = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) sq += g[i] * g[i];
  return Math.sqrt(sq);
}

// Scales all gradients together so their global L2 norm is at most maxNorm; returns the norm
// before clipping (as torch does: coefficient maxNorm / (norm + 1e-6), applied only when < 1).
export function clipGradNorm(grads: Iterable<Float32Array>, maxNorm: number): number {
  const list = [...grads];
  const norm = globalNorm(list);
  const coef = maxNorm / (norm + 1e-6);
  if (coef < 1) for (const g of list) for (let i = 0; i < g.length; i++) g[i] *= coef;
  return norm;
}
