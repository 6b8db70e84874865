// PEFT `cat`: the exact weighted sum of the deltas, at rank Σ r_i.
//   A' = concat_rows(w_1 s_1 A_1, w_2 s_2 A_2, …)   [Σr, in]
//   B' = concat_cols(B_1, B_2, …)                  [out, Σr]
//   ⇒ B'A' = Σ_i w_i s_i B_i A_i, and the new adapter's scale is 1 (lora_alpha = r = Σ r_i).
// Adapters that lack the target are skipped; the tail of A'/B' up to the plan's rank stays zero.
import { invalidField } from '../runtime/errors.ts';
import { checkTargetInputs } from './merge-options.ts';
import type { FactoredResult, MergePlan, TargetFactors } from './merge-options.ts';

export function mergeCat(inputs: readonly (TargetFactors | null)[], weights: readonly number[], plan: MergePlan, where = 'target'): FactoredResult {
  return catFactors(inputs, weights, plan.rank, where);
}

// The concatenation itself at rank R ≥ Σ r_i (also per-request mixtures, adapters/mixture.ts).
export function catFactors(inputs: readonly (TargetFactors | null)[], weights: readonly number[], R: number, where = 'target'): FactoredResult {
  const { out, in: inDim } = checkTargetInputs(inputs, where);
  const used = inputs.reduce((s, t) => s + (t ? t.rank : 0), 0);
  if (used > R) throw invalidField('adapters', `${where}: the inputs' ranks add up to ${used}, more than the merged rank ${R}`);
  const a = new Float32Array(R * inDim);
  const b = new Float32Array(out * R);
  let row = 0;
  inputs.forEach((t, i) => {
    if (!t) return;
    const c = weights[i] * t.scale; // PEFT: lora_A.data * weight * scaling (float32 math)
    for (let k = 0; k < t.rank; k++) {
      const src = k * inDim, dst = (row + k) * inDim;
      for (let j = 0; j < inDim; j++) a[dst + j] = t.a[src + j] * c;
    }
    for (let o = 0; o < out; o++) for (let k = 0; k < t.rank; k++) b[o * R + row + k] = t.b[o * t.rank + k];
    row += t.rank;
  });
  return { kind: 'factors', a, b, rank: R, in: inDim, out, relError: null };
}
