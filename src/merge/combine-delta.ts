// loraserve's exact delta-space variants (not in PEFT): `linear_delta`, `ties_delta`,
// `dare_ties_delta`, `dare_linear_delta`, `magnitude_prune_delta`.
//   ΔW_i = s_i · B_i A_i                     (the full update of each adapter, scale applied ONCE)
//   ΔW   = COMBINE([ΔW_1..ΔW_n], w)         (the TIES / DARE operations on the task vectors ΔW_i,
//                                            trimmed per target matrix, weights w_i as the papers' λ_i)
// then either output "merged": ΔW itself, or output "factored": its rank-k truncated SVD
// (B = U·S, A = Vh, scale 1) with relError = √(Σ discarded σ²)/√(Σ σ²).
// One adapter stays itself here (no PEFT "one adapter ⇒ linear" rule).
import { Rng } from '../runtime/random.ts';
import { checkTargetInputs } from './merge-options.ts';
import type { DeltaType, MergePlan, TargetFactors, TargetResult } from './merge-options.ts';
import { combineStack, deltaOf, toF32 } from './merge-primitives.ts';
import type { StackCombination } from './merge-primitives.ts';
import { factorise, factoriseProduct, stackFactors } from './combine-svd.ts';

export const DELTA_TO_STACK: Record<DeltaType, StackCombination> = {
  linear_delta: 'linear', ties_delta: 'ties', dare_linear_delta: 'dare_linear', dare_ties_delta: 'dare_ties', magnitude_prune_delta: 'magnitude_prune',
};

// The merged ΔW [out, in] in float64.
export function combinedDelta(inputs: readonly (TargetFactors | null)[], weights: readonly number[], plan: MergePlan, rng: Rng, where = 'target'): { delta: Float64Array; out: number; in: number } {
  const { out, in: inDim } = checkTargetInputs(inputs, where);
  const deltas: Float64Array[] = [];
  const w: number[] = [];
  inputs.forEach((t, i) => {
    if (!t) return;
    deltas.push(deltaOf(t.a, t.b, t.rank, out, inDim, t.scale));
    w.push(weights[i]);
  });
  const delta = combineStack(DELTA_TO_STACK[plan.combination as DeltaType], deltas, w, plan.density, plan.majoritySignMethod, rng);
  return { delta, out, in: inDim };
}

export function mergeDelta(inputs: readonly (TargetFactors | null)[], weights: readonly number[], plan: MergePlan, rng: Rng, where = 'target'): TargetResult {
  if (plan.combination === 'linear_delta' && plan.output === 'factored') {
    const { out, in: inDim } = checkTargetInputs(inputs, where);
    const stacked = stackFactors(inputs, inputs.map((t, i) => (t ? weights[i] * t.scale : 0)), out, inDim);
    if (stacked) return factoriseProduct(stacked.b, stacked.a, out, stacked.rank, inDim, plan.rank, plan.svdClamp, where);
  }
  const { delta, out, in: inDim } = combinedDelta(inputs, weights, plan, rng, where);
  if (plan.output === 'merged') return { kind: 'delta', delta: toF32(delta), in: inDim, out };
  return factorise(delta, out, inDim, plan.rank, plan.svdClamp, where);
}
