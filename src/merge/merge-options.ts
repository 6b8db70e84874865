// Types and validation of an adapter merge (PEFT add_weighted_adapter and loraserve's delta variants).
// Every refusal is a 400 LoraserveError whose `param` names the field.
import { invalidField } from '../runtime/errors.ts';

export const PEFT_AB_TYPES = ['linear', 'ties', 'dare_linear', 'dare_ties', 'magnitude_prune'] as const;
export const PEFT_SVD_TYPES = ['svd', 'ties_svd', 'dare_linear_svd', 'dare_ties_svd', 'magnitude_prune_svd'] as const;
export const DELTA_TYPES = ['linear_delta', 'ties_delta', 'dare_ties_delta', 'dare_linear_delta', 'magnitude_prune_delta'] as const;
export const COMBINATION_TYPES = ['cat', ...PEFT_AB_TYPES, ...PEFT_SVD_TYPES, ...DELTA_TYPES] as const;

export type PeftAbType = (typeof PEFT_AB_TYPES)[number];
export type PeftSvdType = (typeof PEFT_SVD_TYPES)[number];
export type DeltaType = (typeof DELTA_TYPES)[number];
export type CombinationType = (typeof COMBINATION_TYPES)[number];
export type MajoritySignMethod = 'total' | 'frequency';

// One adapter's factors for one target (layer × projection): ΔW = scale · B·A.
export interface TargetFactors {
  a: Float32Array;  // lora_A [rank, in]
  b: Float32Array;  // lora_B [out, rank]
  rank: number;
  scale: number;    // alpha/r or alpha/√r, as resolved for this module
  in: number;
  out: number;
}

export interface MergeOptions {
  combination_type: CombinationType;
  density?: number | null;                       // fraction kept, (0, 1]; required by the pruning types
  majority_sign_method?: MajoritySignMethod;     // ties / dare_ties (+ _svd, _delta); default 'total'
  svd_rank?: number | null;                      // *_svd and *_delta: rank of the result (default max r_i)
  svd_clamp?: number | null;                     // *_svd and factored *_delta: quantile in [0, 1]
  seed?: number | bigint;                        // dare_*: default 0
  output?: 'factored' | 'merged';                // *_delta only: factor back by SVD (default) or keep ΔW
}

// What a merge resolves before touching any tensor.
export interface MergePlan {
  combination: CombinationType;  // after PEFT's "one adapter ⇒ linear" rule
  rank: number;                  // r of the new adapter (for 'merged' delta output: the rank it would have)
  loraAlpha: number;             // PEFT writes lora_alpha = r, so the new scale is 1
  scale: number;                 // 1
  density: number | null;
  majoritySignMethod: MajoritySignMethod;
  svdClamp: number | null;
  seed: bigint;
  output: 'factored' | 'merged';
}

const PRUNING = new Set<string>(['ties', 'dare_linear', 'dare_ties', 'magnitude_prune', 'ties_svd', 'dare_linear_svd', 'dare_ties_svd', 'magnitude_prune_svd',
  'ties_delta', 'dare_ties_delta', 'dare_linear_delta', 'magnitude_prune_delta']);

export const isPeftAb = (t: string): t is PeftAbType => (PEFT_AB_TYPES as readonly string[]).includes(t);
export const isPeftSvd = (t: string): t is PeftSvdType => (PEFT_SVD_TYPES as readonly string[]).includes(t);
export const isDelta = (t: string): t is DeltaType => (DELTA_TYPES as readonly string[]).includes(t);

// |weight| of one input adapter in a merge: the bound per-request mixtures have (adapters/mixture.ts
// MAX_MIXTURE_WEIGHT); beyond it a merge is almost surely a mistake, and a weight of 1e30 made an
// adapter whose every request fails (its output overflows float32).
export const MAX_MERGE_WEIGHT = 8;

// Checks the request and resolves the new adapter's rank as PEFT does.
//   ranks: each input adapter's r (config "r"), in order.
export function planMerge(ranks: readonly number[], weights: readonly number[], options: MergeOptions): MergePlan {
  if (!Array.isArray(ranks) || ranks.length === 0) throw invalidField('adapters', 'adapters must list at least one adapter');
  if (!Array.isArray(weights)) throw invalidField('weights', 'weights must be a list of numbers');
  if (weights.length !== ranks.length) throw invalidField('weights', `weights has ${weights.length} entries but adapters has ${ranks.length}; they must be the same length`);
  weights.forEach((w, i) => {
    if (typeof w !== 'number' || !Number.isFinite(w)) throw invalidField('weights', `weights[${i}] must be a finite number`);
    if (Math.abs(w) > MAX_MERGE_WEIGHT) throw invalidField('weights', `weights[${i}] is ${w}; |weight| may be at most ${MAX_MERGE_WEIGHT} (a delta amplified past anything it was trained at overflows float32 or serves noise)`);
  });
  ranks.forEach((r, i) => { if (!(Number.isInteger(r) && r >= 1)) throw invalidField('adapters', `adapters[${i}] has rank ${r}; ranks must be integers ≥ 1`); });
  const requested = options.combination_type;
  if (!(COMBINATION_TYPES as readonly string[]).includes(requested)) {
    throw invalidField('combination_type', `combination_type ${JSON.stringify(requested)} is not one of ${COMBINATION_TYPES.join(', ')}`);
  }
  const density = options.density ?? null;
  if (density !== null && !(typeof density === 'number' && density > 0 && density <= 1)) {
    throw invalidField('density', `density must be in (0, 1] (the fraction of values kept), got ${String(density)}`);
  }
  const msm = options.majority_sign_method ?? 'total';
  if (msm !== 'total' && msm !== 'frequency') throw invalidField('majority_sign_method', `majority_sign_method must be "total" or "frequency", got ${JSON.stringify(msm)}`);
  const svdRank = options.svd_rank ?? null;
  if (svdRank !== null && !(Number.isInteger(svdRank) && svdRank >= 1)) throw invalidField('svd_rank', `svd_rank must be an integer ≥ 1, got ${String(svdRank)}`);
  const clamp = options.svd_clamp ?? null;
  if (clamp !== null && !(typeof clamp === 'number' && clamp >= 0 && clamp <= 1)) throw invalidField('svd_clamp', `svd_clamp must be a quantile in [0, 1], got ${String(clamp)}`);
  const output = options.output ?? 'factored';
  if (output !== 'factored' && output !== 'merged') throw invalidField('output', `output must be "factored" or "merged", got ${JSON.stringify(output)}`);
  if (output === 'merged' && !isDelta(requested)) throw invalidField('output', `output "merged" is only for the delta combination types (${DELTA_TYPES.join(', ')})`);
  let seed: bigint;
  try {
    const s = options.seed ?? 0;
    if (typeof s === 'number' && !Number.isSafeInteger(s)) throw new Error('not an integer');
    seed = BigInt(s);
  } catch {
    throw invalidField('seed', `seed must be an integer, got ${String(options.seed)}`);
  }

  // PEFT: "if there is only one adapter, we can only use linear merging" (the delta variants are ours: no such rule)
  const combination: CombinationType = ranks.length === 1 && !isDelta(requested) ? 'linear' : requested;
  if (PRUNING.has(combination) && density === null) throw invalidField('density', `combination_type ${combination} needs density (the fraction of values kept, in (0, 1])`);

  let rank: number;
  if (isPeftAb(combination)) {
    if (new Set(ranks).size !== 1) throw invalidField('adapters', `combination_type ${combination} needs all adapters to have the same r (got ${ranks.join(', ')}); use cat, svd or a *_svd / *_delta type`);
    rank = ranks[0];
  } else if (combination === 'cat') {
    rank = ranks.reduce((s, r) => s + r, 0);
  } else {
    rank = svdRank ?? Math.max(...ranks);
  }
  return { combination, rank, loraAlpha: rank, scale: 1, density, majoritySignMethod: msm, svdClamp: clamp, seed, output };
}

// A per-target stream of the seed, so that DARE's masks do not depend on the order targets are merged in.
export function targetSeed(seed: bigint, targetIndex: number): bigint {
  return BigInt.asUintN(64, seed + BigInt(targetIndex + 1) * 0x9e3779b97f4a7c15n);
}

// Checks one target's inputs (null: that adapter lacks the target) against each other.
export function checkTargetInputs(inputs: readonly (TargetFactors | null)[], where: string): { out: number; in: number } {
  const present = inputs.filter((x): x is TargetFactors => x !== null);
  if (present.length === 0) throw invalidField('adapters', `${where}: no adapter has this target`);
  const { out, in: inDim } = present[0];
  inputs.forEach((t, i) => {
    if (!t) return;
    if (t.out !== out || t.in !== inDim) throw invalidField('adapters', `${where}: adapters[${i}] has shape [${t.out}, ${t.in}], adapters[${inputs.indexOf(present[0])}] has [${out}, ${inDim}]`);
    if (t.a.length !== t.rank * t.in || t.b.length !== t.out * t.rank) throw invalidField('adapters', `${where}: adapters[${i}] factors do not match rank ${t.rank} and shape [${t.out}, ${t.in}]`);
    if (!Number.isFinite(t.scale)) throw invalidField('adapters', `${where}: adapters[${i}] has a non-finite scale`);
  });
  return { out, in: inDim };
}

// One target of the merged adapter: LoRA factors with scale 1 (alpha = r), or a full ΔW.
export interface FactoredResult {
  kind: 'factors';
  a: Float32Array;          // [rank, in]
  b: Float32Array;          // [out, rank]
  rank: number;
  in: number;
  out: number;
  relError: number | null;  // ‖ΔW − B·A‖_F / ‖ΔW‖_F where an SVD truncation made it (null for cat and the A/B family)
}

export interface DeltaResult {
  kind: 'delta';
  delta: Float32Array;      // ΔW [out, in], to be added to W0 as is (scale already applied)
  in: number;
  out: number;
}

export type TargetResult = FactoredResult | DeltaResult;
