// PEFT's merge_utils.py (task_arithmetic, ties, dare_linear, dare_ties, magnitude_prune and their
// helpers) over Float64Array "task tensors" of equal length. Pruning is per tensor: each call prunes
// each tensor of the stack on its own (one A, one B or one ΔW), never globally.
import { Rng } from '../runtime/random.ts';
import { addDelta } from './merge-lora.ts';
import type { MajoritySignMethod } from './merge-options.ts';

export type Stack = readonly Float64Array[];

// Σ_i w_i · T_i
export function taskArithmetic(tensors: Stack, weights: ArrayLike<number>): Float64Array {
  const out = new Float64Array(tensors[0].length);
  tensors.forEach((t, i) => { const w = weights[i]; for (let j = 0; j < t.length; j++) out[j] += w * t[j]; });
  return out;
}

// Keep the k = ⌊density · numel⌋ entries of largest |t| (torch.topk); ties in |t| are broken by the
// lower index (torch leaves the order unspecified).
export function magnitudeBasedPruning(t: Float64Array, density: number): Float64Array {
  const n = t.length;
  const k = Math.min(Math.floor(density * n), n);
  const out = new Float64Array(n);
  if (k <= 0) return out;
  const abs = new Float64Array(n);
  for (let i = 0; i < n; i++) abs[i] = Math.abs(t[i]);
  const thr = kthLargest(Float64Array.from(abs), k); // the k-th largest |t|
  let above = 0;
  for (let i = 0; i < n; i++) if (abs[i] > thr) above++;
  let atThr = k - above; // entries equal to the threshold still to keep, lowest index first
  for (let i = 0; i < n; i++) {
    if (abs[i] > thr) out[i] = t[i];
    else if (abs[i] === thr && atThr > 0) { out[i] = t[i]; atThr--; }
  }
  return out;
}

// The k-th largest value (1-based) of `x` (reordered in place): quickselect, O(n) expected.
export function kthLargest(x: Float64Array, k: number): number {
  let lo = 0, hi = x.length - 1;
  const target = x.length - k; // index in ascending order
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    // median of three as pivot
    const a = x[lo], b = x[mid], c = x[hi];
    const pivot = a < b ? (b < c ? b : a < c ? c : a) : (a < c ? a : b < c ? c : b);
    let i = lo, j = hi;
    while (i <= j) {
      while (x[i] < pivot) i++;
      while (x[j] > pivot) j--;
      if (i <= j) { const t = x[i]; x[i] = x[j]; x[j] = t; i++; j--; }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else return x[target];
  }
  return x[target];
}

// Bernoulli(density) mask, one uniform draw per entry in row-major order: kept iff u < density;
// rescale divides the kept entries by density (PEFT ≥ 0.10: `pruned_tensor / density`).
export function randomPruning(t: Float64Array, density: number, rescale: boolean, rng: Rng): Float64Array {
  const out = new Float64Array(t.length);
  for (let i = 0; i < t.length; i++) if (rng.next() < density) out[i] = rescale ? t[i] / density : t[i];
  return out;
}

// PEFT's prune(): density ≥ 1 returns the tensor unchanged (no mask drawn, no rescale).
export function prune(t: Float64Array, density: number, method: 'magnitude' | 'random', rescale: boolean, rng: Rng | null): Float64Array {
  if (density >= 1) return t;
  if (density < 0) throw new RangeError(`Density should be >= 0, got ${density}`);
  if (method === 'magnitude') return magnitudeBasedPruning(t, density);
  return randomPruning(t, density, rescale, rng!);
}

// mask_i[j] = sign(T_i[j]) == γ[j], γ = +1 where Σ (values: 'total', or signs: 'frequency') ≥ 0 else −1.
// A zero entry has sign 0 and is never in the mask.
export function majoritySignMask(tensors: Stack, method: MajoritySignMethod): Uint8Array[] {
  const n = tensors[0].length;
  const mag = new Float64Array(n);
  if (method === 'total') { for (const t of tensors) for (let j = 0; j < n; j++) mag[j] += t[j]; }
  else { for (const t of tensors) for (let j = 0; j < n; j++) mag[j] += t[j] > 0 ? 1 : t[j] < 0 ? -1 : 0; }
  return tensors.map((t) => {
    const m = new Uint8Array(n);
    for (let j = 0; j < n; j++) m[j] = mag[j] >= 0 ? (t[j] > 0 ? 1 : 0) : (t[j] < 0 ? 1 : 0);
    return m;
  });
}

// Σ_i W_i ⊙ mask_i / max(Σ_i mask_i, 1)
export function disjointMerge(weighted: Stack, mask: readonly Uint8Array[]): Float64Array {
  const n = weighted[0].length;
  const sum = new Float64Array(n);
  const count = new Float64Array(n);
  weighted.forEach((t, i) => { const m = mask[i]; for (let j = 0; j < n; j++) if (m[j]) { sum[j] += t[j]; count[j]++; } });
  for (let j = 0; j < n; j++) sum[j] /= Math.max(count[j], 1);
  return sum;
}

function weigh(tensors: Stack, weights: ArrayLike<number>): Float64Array[] {
  return tensors.map((t, i) => { const w = weights[i]; const o = new Float64Array(t.length); for (let j = 0; j < t.length; j++) o[j] = t[j] * w; return o; });
}

// Σ_i w_i · magnitude_prune(T_i)
export function magnitudePrune(tensors: Stack, weights: ArrayLike<number>, density: number): Float64Array {
  return taskArithmetic(tensors.map((t) => prune(t, density, 'magnitude', false, null)), weights);
}

// trim (magnitude) → elect the sign on the UNWEIGHTED trimmed tensors → disjoint mean of the WEIGHTED ones
export function ties(tensors: Stack, weights: ArrayLike<number>, density: number, method: MajoritySignMethod): Float64Array {
  const pruned = tensors.map((t) => prune(t, density, 'magnitude', false, null));
  return disjointMerge(weigh(pruned, weights), majoritySignMask(pruned, method));
}

// Σ_i w_i · random_prune(T_i, rescale) ; the tensors draw from `rng` in order
export function dareLinear(tensors: Stack, weights: ArrayLike<number>, density: number, rng: Rng): Float64Array {
  return taskArithmetic(tensors.map((t) => prune(t, density, 'random', true, rng)), weights);
}

export function dareTies(tensors: Stack, weights: ArrayLike<number>, density: number, method: MajoritySignMethod, rng: Rng): Float64Array {
  const pruned = tensors.map((t) => prune(t, density, 'random', true, rng));
  return disjointMerge(weigh(pruned, weights), majoritySignMask(pruned, method));
}

export type StackCombination = 'linear' | 'ties' | 'dare_linear' | 'dare_ties' | 'magnitude_prune';

// The one switch the three families share (PEFT's names for the A/B family; svd and *_delta map onto it).
export function combineStack(kind: StackCombination, tensors: Stack, weights: ArrayLike<number>, density: number | null, method: MajoritySignMethod, rng: Rng): Float64Array {
  switch (kind) {
    case 'linear': return taskArithmetic(tensors, weights);
    case 'ties': return ties(tensors, weights, density!, method);
    case 'dare_linear': return dareLinear(tensors, weights, density!, rng);
    case 'dare_ties': return dareTies(tensors, weights, density!, method, rng);
    case 'magnitude_prune': return magnitudePrune(tensors, weights, density!);
  }
}

// helpers shared by the combination files
export const toF64 = (x: Float32Array): Float64Array => Float64Array.from(x);
export const toF32 = (x: Float64Array): Float32Array => Float32Array.from(x);

// ΔW = scale · B·A in float64 ([out, in])
export function deltaOf(a: Float32Array, b: Float32Array, rank: number, out: number, inDim: number, scale: number): Float64Array {
  const d = new Float64Array(out * inDim);
  addDelta(d, a, b, rank, out, inDim, scale);
  return d;
}
