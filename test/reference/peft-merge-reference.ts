// A float64 re-implementation of PEFT 0.13's LoraModel.add_weighted_adapter for ONE target module,
// written from PEFT's source (tuners/lora/model.py: add_weighted_adapter, _check_add_weighted_adapter,
// _svd_generalized_task_arithmetic_weighted_adapter, _generalized_task_arithmetic_weighted_adapter;
// utils/merge_utils.py), quirks included. Deliberately plain (nested number[][] "tensors", no typed
// arrays, its own Jacobi eigen-solver) so it shares no code with src/merge.
//
// Randomness: torch.bernoulli cannot be reproduced; `bernoulli(p)` is injected. To compare with
// src/merge bit for bit the tests pass draws from the same Rng in the same order (per tensor, row-major:
// all A tensors, then all B tensors; or each ΔW_i in order), kept iff u < p.

export type Mat = number[][];

export interface RefAdapter { A: Mat; B: Mat; scaling: number; r: number }
export interface RefOptions {
  combination_type: string;
  svd_rank?: number | null;
  svd_clamp?: number | null;
  density?: number | null;
  majority_sign_method?: 'total' | 'frequency';
  bernoulli?: (p: number) => boolean;
}

const zeros = (r: number, c: number): Mat => Array.from({ length: r }, () => new Array<number>(c).fill(0));
const map = (t: Mat, f: (x: number, i: number, j: number) => number): Mat => t.map((row, i) => row.map((x, j) => f(x, i, j)));
const flat = (t: Mat): number[] => t.flat();
export const matmul = (x: Mat, y: Mat): Mat => x.map((row) => y[0].map((_, j) => row.reduce((s, v, k) => s + v * y[k][j], 0)));
export const transpose = (x: Mat): Mat => x[0].map((_, j) => x.map((row) => row[j]));

// ---- merge_utils.py -------------------------------------------------------------------------

export function magnitude_based_pruning(t: Mat, density: number): Mat {
  const f = flat(t);
  const k = Math.floor(density * f.length); // int(density * numel)
  const idx = f.map((_, i) => i).sort((a, b) => Math.abs(f[b]) - Math.abs(f[a]) || a - b).slice(0, k); // torch.topk (ties: lower index)
  const keep = new Set(idx);
  const cols = t[0].length;
  return map(t, (x, i, j) => (keep.has(i * cols + j) ? x : 0));
}

export function random_pruning(t: Mat, density: number, rescale: boolean, bernoulli: (p: number) => boolean): Mat {
  const mask = map(t, () => (bernoulli(density) ? 1 : 0));
  let pruned = map(t, (x, i, j) => x * mask[i][j]);
  if (rescale) pruned = map(pruned, (x) => x / density);
  return pruned;
}

export function prune(t: Mat, density: number, method: 'magnitude' | 'random', rescale: boolean, bernoulli?: (p: number) => boolean): Mat {
  if (density >= 1) return t; // warning, no pruning
  if (density < 0) throw new Error(`Density should be >= 0, got ${density}`);
  return method === 'magnitude' ? magnitude_based_pruning(t, density) : random_pruning(t, density, rescale, bernoulli!);
}

export function calculate_majority_sign_mask(stack: Mat[], method: 'total' | 'frequency'): boolean[][][] {
  const mag = map(stack[0], (_, i, j) => stack.reduce((s, t) => s + (method === 'total' ? t[i][j] : Math.sign(t[i][j])), 0));
  const majority = map(mag, (x) => (x >= 0 ? 1 : -1));
  return stack.map((t) => t.map((row, i) => row.map((x, j) => Math.sign(x) === majority[i][j])));
}

export function disjoint_merge(stack: Mat[], mask: boolean[][][]): Mat {
  return map(stack[0], (_, i, j) => {
    let s = 0, c = 0;
    stack.forEach((t, n) => { if (mask[n][i][j]) { s += t[i][j]; c += 1; } });
    return s / Math.max(c, 1);
  });
}

export function task_arithmetic(stack: Mat[], w: number[]): Mat {
  return map(stack[0], (_, i, j) => stack.reduce((s, t, n) => s + w[n] * t[i][j], 0));
}

export function magnitude_prune(stack: Mat[], w: number[], density: number): Mat {
  return task_arithmetic(stack.map((t) => prune(t, density, 'magnitude', false)), w);
}

export function ties(stack: Mat[], w: number[], density: number, method: 'total' | 'frequency'): Mat {
  const p = stack.map((t) => prune(t, density, 'magnitude', false));
  const mask = calculate_majority_sign_mask(p, method);
  return disjoint_merge(p.map((t, n) => map(t, (x) => x * w[n])), mask);
}

export function dare_linear(stack: Mat[], w: number[], density: number, bern: (p: number) => boolean): Mat {
  return task_arithmetic(stack.map((t) => prune(t, density, 'random', true, bern)), w);
}

export function dare_ties(stack: Mat[], w: number[], density: number, method: 'total' | 'frequency', bern: (p: number) => boolean): Mat {
  const p = stack.map((t) => prune(t, density, 'random', true, bern));
  const mask = calculate_majority_sign_mask(p, method);
  return disjoint_merge(p.map((t, n) => map(t, (x) => x * w[n])), mask);
}

// ---- linalg: SVD from a cyclic two-sided Jacobi eigen-solver on the smaller Gram matrix -------

function jacobiEigen(S: Mat): { values: number[]; vectors: Mat } {
  const n = S.length;
  const a = S.map((r) => r.slice());
  const v: Mat = Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j) => (i === j ? 1 : 0)));
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p][q] ** 2;
    if (off < 1e-30 * (1 + a.reduce((s, r, i) => s + r[i] ** 2, 0))) break;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) {
      if (Math.abs(a[p][q]) < 1e-300) continue;
      const theta = (a[q][q] - a[p][p]) / (2 * a[p][q]);
      const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
      const c = 1 / Math.sqrt(t * t + 1), s = t * c;
      for (let k = 0; k < n; k++) { const akp = a[k][p], akq = a[k][q]; a[k][p] = c * akp - s * akq; a[k][q] = s * akp + c * akq; }
      for (let k = 0; k < n; k++) { const apk = a[p][k], aqk = a[q][k]; a[p][k] = c * apk - s * aqk; a[q][k] = s * apk + c * aqk; }
      for (let k = 0; k < n; k++) { const vkp = v[k][p], vkq = v[k][q]; v[k][p] = c * vkp - s * vkq; v[k][q] = s * vkp + c * vkq; }
    }
  }
  const order = a.map((_, i) => i).sort((x, y) => a[y][y] - a[x][x]);
  return { values: order.map((i) => a[i][i]), vectors: order.map((i) => v.map((row) => row[i])) }; // vectors[j] = j-th eigenvector
}

// torch.linalg.svd(M, full_matrices=False) with signs fixed: each row of Vh has its largest-|x| entry positive.
export function svdRef(M: Mat): { U: Mat; S: number[]; Vh: Mat } {
  const m = M.length, n = M[0].length;
  let U: Mat, S: number[], Vh: Mat;
  if (m >= n) {
    const { values, vectors } = jacobiEigen(matmul(transpose(M), M));
    S = values.map((x) => Math.sqrt(Math.max(x, 0)));
    Vh = vectors;
    const MV = matmul(M, transpose(Vh));
    U = map(MV, (x, _i, j) => (S[j] > 0 ? x / S[j] : 0));
  } else {
    const { values, vectors } = jacobiEigen(matmul(M, transpose(M)));
    S = values.map((x) => Math.sqrt(Math.max(x, 0)));
    U = transpose(vectors);
    Vh = map(matmul(vectors, M), (x, j) => (S[j] > 0 ? x / S[j] : 0));
  }
  for (let j = 0; j < S.length; j++) {
    let best = 0, at = 0;
    Vh[j].forEach((x, i) => { if (Math.abs(x) > best) { best = Math.abs(x); at = i; } });
    if (Vh[j][at] < 0) { Vh[j] = Vh[j].map((x) => -x); U.forEach((row) => { row[j] = -row[j]; }); }
  }
  return { U, S, Vh };
}

export function quantile(values: number[], q: number): number {
  const s = values.slice().sort((a, b) => a - b);
  const pos = q * (s.length - 1);
  const lo = Math.floor(pos), hi = Math.ceil(pos);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

// ---- model.py ------------------------------------------------------------------------------

// _check_add_weighted_adapter: (combination_type, new_rank)
export function checkAddWeightedAdapter(ranks: number[], combination_type: string, svd_rank: number | null | undefined): [string, number] {
  const ct = ranks.length === 1 ? 'linear' : combination_type; // "if there is only one adapter, we can only use linear merging"
  if (['linear', 'ties', 'dare_ties', 'dare_linear', 'magnitude_prune'].includes(ct)) {
    if (new Set(ranks).size !== 1) throw new Error('All adapters must have the same r value when using combination_type linear, ties, dare_ties or dare_linear.');
    return [ct, ranks[0]];
  }
  if (ct === 'cat') return [ct, ranks.reduce((s, r) => s + r, 0)];
  if (ct.endsWith('svd')) return [ct, svd_rank || Math.max(...ranks)];
  throw new Error(`Invalid combination_type: ${ct}`);
}

export function getDeltaWeight(a: RefAdapter): Mat {
  return map(matmul(a.B, a.A), (x) => x * a.scaling);
}

// add_weighted_adapter for one target; returns the new lora_A, lora_B and the config's r / lora_alpha.
export function addWeightedAdapterRef(adapters: RefAdapter[], weights: number[], o: RefOptions): { A: Mat; B: Mat; r: number; lora_alpha: number } {
  const [ct, new_rank] = checkAddWeightedAdapter(adapters.map((a) => a.r), o.combination_type, o.svd_rank);
  const density = o.density as number;
  const msm = o.majority_sign_method ?? 'total';
  const bern = o.bernoulli ?? (() => { throw new Error('no bernoulli'); });
  const inDim = adapters[0].A[0].length, out = adapters[0].B.length;
  if (ct === 'cat') {
    const A = zeros(new_rank, inDim), B = zeros(out, new_rank);
    let row = 0;
    adapters.forEach((ad, n) => {
      ad.A.forEach((r, k) => { A[row + k] = r.map((x) => x * weights[n] * ad.scaling); });
      ad.B.forEach((r, i) => r.forEach((x, k) => { B[i][row + k] = x; }));
      row += ad.A.length;
    });
    return { A, B, r: new_rank, lora_alpha: new_rank };
  }
  if (ct.endsWith('svd')) {
    const valid_weights = adapters.map((ad, n) => weights[n] * ad.scaling); // scaling, again
    const deltas = adapters.map(getDeltaWeight);
    let dw: Mat;
    switch (ct) {
      case 'svd': dw = task_arithmetic(deltas, valid_weights); break;
      case 'ties_svd': dw = ties(deltas, valid_weights, density, msm); break;
      case 'dare_linear_svd': dw = dare_linear(deltas, valid_weights, density, bern); break;
      case 'dare_ties_svd': dw = dare_ties(deltas, valid_weights, density, msm, bern); break;
      case 'magnitude_prune_svd': dw = magnitude_prune(deltas, valid_weights, density); break;
      default: throw new Error(`Invalid value passed to combination type: ${ct}`);
    }
    return { ...svdFactors(dw, new_rank, o.svd_clamp ?? null), r: new_rank, lora_alpha: new_rank };
  }
  const valid_weights = adapters.map((ad, n) => {
    const x = weights[n] * ad.scaling;
    if (x < 0) throw new Error('math domain error'); // math.sqrt
    return Math.sqrt(x);
  });
  const out2 = [adapters.map((a) => a.A), adapters.map((a) => a.B)].map((stack) => {
    switch (ct) {
      case 'linear': return task_arithmetic(stack, valid_weights);
      case 'ties': return ties(stack, valid_weights, density, msm);
      case 'dare_linear': return dare_linear(stack, valid_weights, density, bern);
      case 'dare_ties': return dare_ties(stack, valid_weights, density, msm, bern);
      case 'magnitude_prune': return magnitude_prune(stack, valid_weights, density);
      default: throw new Error('Invalid combination type');
    }
  });
  return { A: out2[0], B: out2[1], r: new_rank, lora_alpha: new_rank };
}

// the SVD tail of _svd_generalized_task_arithmetic_weighted_adapter: returns (Vh, U) as (A, B)
export function svdFactors(dw: Mat, new_rank: number, clamp: number | null): { A: Mat; B: Mat } {
  const { U, S, Vh } = svdRef(dw);
  let Uk = U.map((row) => row.slice(0, new_rank).map((x, j) => x * S[j]));
  let Vk = Vh.slice(0, new_rank);
  if (clamp !== null) {
    const hi = quantile([...flat(Uk), ...flat(Vk)], clamp);
    const lo = -hi;
    Uk = map(Uk, (x) => Math.min(Math.max(x, lo), hi));
    Vk = map(Vk, (x) => Math.min(Math.max(x, lo), hi));
  }
  return { A: Vk, B: Uk };
}
