// PEFT's ΔW-space family: `svd`, `ties_svd`, `dare_linear_svd`, `dare_ties_svd`, `magnitude_prune_svd`
// (_svd_generalized_task_arithmetic_weighted_adapter, PEFT 0.13).
//   ΔW_i = get_delta_weight = s_i · B_i A_i
//   v_i  = w_i · s_i                       ← the scale enters a SECOND time here
//   ΔW   = COMBINE([ΔW_1..ΔW_n], v)        (svd → task arithmetic, ties_svd → ties, …; trims each ΔW_i)
//   U S Vh = svd(ΔW);  B' = U[:, :k]·diag(S[:k]),  A' = Vh[:k, :]   (k = svd_rank or max r_i; new scale 1)
//   svd_clamp q: hi = quantile(cat(B'.flat, A'.flat), q); B', A' clamped to [−hi, hi]
// So `svd` gives the rank-k truncation of Σ w_i s_i² B_i A_i, exact only when every s_i = 1.
// The *_delta types (combine-delta.ts) are the single-scaling version.
import { invalidField } from '../runtime/errors.ts';
import { Rng } from '../runtime/random.ts';
import { checkTargetInputs } from './merge-options.ts';
import type { FactoredResult, MergePlan, PeftSvdType, TargetFactors } from './merge-options.ts';
import { combineStack, deltaOf, toF32 } from './merge-primitives.ts';
import type { StackCombination } from './merge-primitives.ts';
import { clampFactors, svd, svdProduct, truncate } from './svd.ts';

export const SVD_TO_STACK: Record<PeftSvdType, StackCombination> = {
  svd: 'linear', ties_svd: 'ties', dare_linear_svd: 'dare_linear', dare_ties_svd: 'dare_ties', magnitude_prune_svd: 'magnitude_prune',
};

export function mergeSvd(inputs: readonly (TargetFactors | null)[], weights: readonly number[], plan: MergePlan, rng: Rng, where = 'target'): FactoredResult {
  const { out, in: inDim } = checkTargetInputs(inputs, where);
  const v = inputs.map((t, i) => (t ? Math.fround(weights[i] * t.scale) : 0));
  if (plan.combination === 'svd') {
    // Σ v_i s_i B_i A_i is the product [v_1 s_1 B_1 | v_2 s_2 B_2 | …] · [A_1; A_2; …]: its SVD without ΔW
    const stacked = stackFactors(inputs, inputs.map((t, i) => (t ? v[i] * t.scale : 0)), out, inDim);
    if (stacked) return factoriseProduct(stacked.b, stacked.a, out, stacked.rank, inDim, plan.rank, plan.svdClamp, where);
  }
  const deltas: Float64Array[] = [];
  inputs.forEach((t) => { if (t) deltas.push(deltaOf(t.a, t.b, t.rank, out, inDim, t.scale)); });
  const delta = combineStack(SVD_TO_STACK[plan.combination as PeftSvdType], deltas, v.filter((_, i) => inputs[i] !== null), plan.density, plan.majoritySignMethod, rng);
  return factorise(delta, out, inDim, plan.rank, plan.svdClamp, where);
}

// ΔW [out, in] → rank-k LoRA factors as PEFT slices them (B = U·S, A = Vh), optionally clamped.
// relError = √(Σ discarded σ²)/√(Σ σ²); with a clamp it is measured directly as ‖ΔW − B·A‖_F/‖ΔW‖_F.
export function factorise(delta: Float64Array, out: number, inDim: number, rank: number, clamp: number | null, where = 'target'): FactoredResult {
  if (rank > Math.min(out, inDim)) throw invalidField('svd_rank', `${where}: svd_rank ${rank} exceeds min(out, in) = ${Math.min(out, inDim)} of this target`);
  const f = truncate(svd(delta, out, inDim, 'auto', rank), rank);
  let relError = f.relError;
  if (clamp !== null) {
    clampFactors(f.b, f.a, clamp);
    relError = measuredError(delta, f.b, f.a, out, inDim, rank);
  }
  return { kind: 'factors', a: toF32(f.a), b: toF32(f.b), rank, in: inDim, out, relError };
}

// [c_1 B_1 | c_2 B_2 | …] [out, R] and [A_1; A_2; …] [R, in] (R = Σ r_i) in float64, or null when
// R > min(out, in) (then the dense SVD of ΔW is cheaper).
export function stackFactors(inputs: readonly (TargetFactors | null)[], coef: readonly number[], out: number, inDim: number): { b: Float64Array; a: Float64Array; rank: number } | null {
  const R = inputs.reduce((s, t) => s + (t ? t.rank : 0), 0);
  if (R > Math.min(out, inDim)) return null;
  const b = new Float64Array(out * R);
  const a = new Float64Array(R * inDim);
  let col = 0;
  inputs.forEach((t, i) => {
    if (!t) return;
    for (let o = 0; o < out; o++) for (let k = 0; k < t.rank; k++) b[o * R + col + k] = coef[i] * t.b[o * t.rank + k];
    a.set(t.a, col * inDim);
    col += t.rank;
  });
  return { b, a, rank: R };
}

// factorise() for ΔW = B·A given as thin factors: the same result, from svdProduct.
export function factoriseProduct(b: Float64Array, a: Float64Array, out: number, R: number, inDim: number, rank: number, clamp: number | null, where = 'target'): FactoredResult {
  if (rank > Math.min(out, inDim)) throw invalidField('svd_rank', `${where}: svd_rank ${rank} exceeds min(out, in) = ${Math.min(out, inDim)} of this target`);
  const full = svdProduct(b, a, out, R, inDim);
  const kept = Math.min(rank, R);
  const f = truncate(full, kept);
  // a rank above R: the extra singular values are 0, their factors zero rows/columns
  const bOut = new Float64Array(out * rank);
  for (let o = 0; o < out; o++) for (let k = 0; k < kept; k++) bOut[o * rank + k] = f.b[o * kept + k];
  const aOut = new Float64Array(rank * inDim);
  aOut.set(f.a);
  let relError = f.relError;
  if (clamp !== null) {
    clampFactors(bOut, aOut, clamp);
    const delta = new Float64Array(out * inDim);
    for (let o = 0; o < out; o++) for (let k = 0; k < R; k++) { const c = b[o * R + k]; if (c !== 0) for (let i = 0; i < inDim; i++) delta[o * inDim + i] += c * a[k * inDim + i]; }
    relError = measuredError(delta, bOut, aOut, out, inDim, rank);
  }
  return { kind: 'factors', a: toF32(aOut), b: toF32(bOut), rank, in: inDim, out, relError };
}

function measuredError(delta: Float64Array, b: Float64Array, a: Float64Array, out: number, inDim: number, rank: number): number {
  let num = 0, den = 0;
  const row = new Float64Array(inDim);
  for (let o = 0; o < out; o++) {
    row.fill(0);
    for (let k = 0; k < rank; k++) { const c = b[o * rank + k]; if (c === 0) continue; for (let i = 0; i < inDim; i++) row[i] += c * a[k * inDim + i]; }
    for (let i = 0; i < inDim; i++) { const d = delta[o * inDim + i]; num += (d - row[i]) ** 2; den += d * d; }
  }
  return den > 0 ? Math.sqrt(num / den) : 0;
}
