// Merge benchmark (issue 13): time of the merge math for 3 rank-16 adapters (all seven targets of
// every layer) on the synthetic 110M model, per combination type. It calls mergeAdapters directly:
// the HTTP endpoint and `loraserve merge` add only reading and writing files.
//   weights 0.5 / 0.3 / 0.2, density 0.5, seed 1, majority_sign_method total, svd_rank 16 for the
//   *_svd and *_delta types (the delta types factored back to rank 16).
// The types that prune a full ΔW and then run a dense SVD of it (ties_svd, dare_*_svd,
// magnitude_prune_svd and the pruned *_delta) take seconds per target: they are measured on one
// layer's seven targets (layer 0), and the whole model's time is that × the number of layers (every
// layer has the same shapes). The other types (cat, the A/B-space family, svd and linear_delta,
// which factor the stacked thin factors without forming ΔW) run on the whole model.
//   npm run bench -- --only merge [--quick]     (--quick: one run per type instead of three)
import { loadavg } from 'node:os';
import { TARGETS } from '../src/runtime/model-targets.ts';
import { loadModelFiles } from '../src/runtime/model-loader.ts';
import { encodeSafetensors } from '../src/runtime/safetensors.ts';
import { decodeAdapterOrThrow } from '../src/adapters/lora-adapter.ts';
import { COMBINATION_TYPES, isDelta, isPeftSvd, mergeAdapters, mergeInputFromAdapter } from '../src/merge/index.ts';
import type { CombinationType, MergeInputAdapter, MergeOptions } from '../src/merge/index.ts';
import { buildAdapter } from '../scripts/make-test-adapters.ts';
import { llama110mDir } from './bench-models.ts';
import { median, printTable } from './stats.ts';

const RANK = 16;
const WEIGHTS = [0.5, 0.3, 0.2];
const DENSITY = 0.5;
const SEED = 1;
const SUBSET_LAYER = 0;

export interface MergeTypeFigure {
  combination_type: CombinationType;
  scope: 'whole model' | 'one layer';
  targets_measured: number;
  runs_ms: number[];                // each run's time for the targets measured
  ms: number;                       // median of runs_ms
  per_target_ms: number;            // ms / targets_measured
  whole_model_ms: number;           // measured (whole model) or extrapolated (one layer × layers)
  extrapolated: boolean;
  result_rank: number;
  max_rel_error: number | null;     // largest SVD truncation error over the targets measured
}

export interface MergeBench {
  model: string;
  layers: number;
  targets: number;                  // targets of the whole model (layers × 7)
  adapters: number;
  rank: number;
  weights: number[];
  density: number;
  seed: number;
  svd_rank: number;
  subset: string;
  quick: boolean;
  loadavg_1min: { start: number; end: number }; // the machine's load around the run (other work skews the times)
  types: MergeTypeFigure[];
}

// The types whose cost is a dense SVD of a pruned full ΔW per target.
export const isSlow = (c: CombinationType): boolean => (isPeftSvd(c) && c !== 'svd') || (isDelta(c) && c !== 'linear_delta');

function optionsFor(c: CombinationType): MergeOptions {
  return { combination_type: c, density: DENSITY, seed: SEED, majority_sign_method: 'total', svd_rank: isPeftSvd(c) || isDelta(c) ? RANK : null };
}

export async function mergeBench(opts: { quick: boolean }): Promise<MergeBench> {
  const loadStart = loadavg()[0];
  const dir = llama110mDir();
  const model = loadModelFiles(dir);
  const cfg = model.config;
  const inputs: MergeInputAdapter[] = [1, 2, 3].map((seed) => {
    const f = buildAdapter(cfg, { rank: RANK, alpha: 2 * RANK, seed, scaleB: 0.2 });
    const files = { config: new TextEncoder().encode(JSON.stringify(f.config)), weights: encodeSafetensors(f.tensors) };
    return mergeInputFromAdapter(decodeAdapterOrThrow(files, cfg, { maxRank: RANK, modelName: model.name }, `bench-${seed}`).adapter, RANK);
  });
  const subset: MergeInputAdapter[] = inputs.map((a) => ({ r: a.r, targets: new Map([...a.targets].filter(([k]) => k.startsWith(`${SUBSET_LAYER}.`))) }));
  const allTargets = inputs[0].targets.size;
  const runs = opts.quick ? 1 : 3;

  const types: MergeTypeFigure[] = [];
  for (const c of COMBINATION_TYPES) {
    const slow = isSlow(c);
    const use = slow ? subset : inputs;
    const n = use[0].targets.size;
    const times: number[] = [];
    let rank = 0;
    let err: number | null = null;
    for (let i = 0; i < (slow ? 1 : runs); i++) {
      const t0 = performance.now();
      const r = mergeAdapters(use, WEIGHTS, optionsFor(c));
      times.push(performance.now() - t0);
      rank = r.plan.rank;
      err = r.maxRelError;
    }
    const ms = median(times);
    types.push({
      combination_type: c, scope: slow ? 'one layer' : 'whole model', targets_measured: n, runs_ms: times, ms, per_target_ms: ms / n,
      whole_model_ms: slow ? ms * cfg.numLayers : ms, extrapolated: slow, result_rank: rank, max_rel_error: err,
    });
    const last = types.at(-1)!;
    console.log(`  ${c}: ${(last.whole_model_ms / 1000).toFixed(2)} s for the whole model${slow ? ` (extrapolated from layer ${SUBSET_LAYER}: ${(ms / 1000).toFixed(2)} s)` : ''}`);
  }

  printTable(`merge time, 3 rank-${RANK} adapters on all ${TARGETS.length} targets × ${cfg.numLayers} layers of llama-110m (weights ${WEIGHTS.join('/')}, density ${DENSITY}, seed ${SEED}; ` +
    `* = measured on layer ${SUBSET_LAYER}'s ${TARGETS.length} targets, whole model extrapolated ×${cfg.numLayers})`, types.map((t) => ({
    type: `${t.combination_type}${t.extrapolated ? ' *' : ''}`,
    'targets measured': String(t.targets_measured),
    'ms measured': t.ms,
    'ms / target': t.per_target_ms,
    'whole model s': t.whole_model_ms / 1000,
    'result r': String(t.result_rank),
    'max rel. error': t.max_rel_error === null ? '–' : t.max_rel_error.toExponential(2),
  })));
  return {
    model: 'llama-110m', layers: cfg.numLayers, targets: allTargets, adapters: inputs.length, rank: RANK, weights: WEIGHTS, density: DENSITY, seed: SEED, svd_rank: RANK,
    subset: `layer ${SUBSET_LAYER}'s ${TARGETS.length} targets`, quick: opts.quick, loadavg_1min: { start: loadStart, end: loadavg()[0] }, types,
  };
}
