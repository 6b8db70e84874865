// PEFT's A/B-space family: `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`
// (_generalized_task_arithmetic_weighted_adapter, PEFT 0.13).
//   v_i = √(w_i · s_i)              (the scale enters under the root, split between A and B)
//   A'  = COMBINE([A_1..A_n], v)    B' = COMBINE([B_1..B_n], v)      (separately; the new scale is 1)
// So B'A' = Σ_i Σ_j v_i v_j B_i A_j: cross terms B_i A_j (i ≠ j); it equals Σ w_i s_i B_i A_i only
// for one adapter. The pruning types trim each A and each B on its own, by magnitude or at random.
// PEFT 0.13 computes math.sqrt(w_i · s_i), which raises for a negative product: refused here too
// (later PEFT releases put the sign on A instead).
import { invalidField } from '../runtime/errors.ts';
import { Rng } from '../runtime/random.ts';
import { checkTargetInputs } from './merge-options.ts';
import type { FactoredResult, MergePlan, PeftAbType, TargetFactors } from './merge-options.ts';
import { combineStack, toF32, toF64 } from './merge-primitives.ts';

export function mergeAb(inputs: readonly (TargetFactors | null)[], weights: readonly number[], plan: MergePlan, rng: Rng, where = 'target'): FactoredResult {
  const { out, in: inDim } = checkTargetInputs(inputs, where);
  const kind = plan.combination as PeftAbType;
  const present: TargetFactors[] = [];
  const v: number[] = [];
  inputs.forEach((t, i) => {
    if (!t) return;
    const c = weights[i] * t.scale;
    if (c < 0) throw invalidField('weights', `${where}: weights[${i}] · scale = ${c} is negative; combination_type ${kind} takes √(weight · scale) as PEFT 0.13 does, which has no negative form (use cat, svd or a *_delta type)`);
    present.push(t);
    v.push(Math.fround(Math.sqrt(c))); // torch.tensor(list of Python floats) is float32
  });
  const rank = present[0].rank;
  present.forEach((t) => { if (t.rank !== rank) throw invalidField('adapters', `${where}: combination_type ${kind} needs equal ranks for this target, got ${present.map((p) => p.rank).join(', ')}`); });
  const a = combineStack(kind, present.map((t) => toF64(t.a)), v, plan.density, plan.majoritySignMethod, rng);
  const b = combineStack(kind, present.map((t) => toF64(t.b)), v, plan.density, plan.majoritySignMethod, rng);
  return { kind: 'factors', a: toF32(a), b: toF32(b), rank, in: inDim, out, relError: null };
}
