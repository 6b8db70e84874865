// Two measurements of issue 10 that the serving cases alone do not give, both through a running
// server over HTTP (serving-suite.ts runs them):
//   - servedVsPlain: one stream's decode step after a 512-token prompt, as a client sees it (the
//     median gap between its tokens), next to the plain graph's step at context 16 (runtime-bench's
//     openPlainGraph: buildLlamaGraph's default, one StepRunner, no server), timed in this process
//     in rounds around each served stream so that the machine's drift cancels (servedVsPlain).
//   - rankAfterRank64: rank-4 batches' decode speed before any rank-64 request and after each of a
//     few rank-64 requests, with loraserve_lora_arena_bytes sampled during each; and, in turn with
//     each of those, the same batch on a twin server that never ran a rank-64 request (the control:
//     this VM's speed drifts 10–30% between minutes, so "before" measured minutes earlier is not
//     the speed the after batch would have had without the rank-64 request).
// Nothing here asserts; the suite turns the figures into checks and prints them.
import { runServing, serverSnapshot } from './serving-bench.ts';
import type { ServingMetrics, ServingOptions } from './serving-bench.ts';
import { openPlainGraph } from './runtime-bench.ts';
import { laneCapacities } from '../src/runtime/lanes.ts';
import { SERVED_LANE_GROWTH } from '../src/runtime/model-runtime.ts';

export type BaseOptions = Omit<ServingOptions, 'numPrompts' | 'adapters' | 'seed' | 'label' | 'popularity' | 'inputLen' | 'outputLen'>;

const median = (xs: number[]): number => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

// The largest value of loraserve_lora_arena_bytes seen while `work` runs (sampled every `everyMs`
// through /metrics, once before and once after), and the value once it is done.
export async function sampleArena<T>(url: string, work: () => Promise<T>, everyMs = 250): Promise<{ result: T; maxBytes: number; endBytes: number }> {
  const read = async (): Promise<number> => (await serverSnapshot(url))?.loraArenaBytes ?? NaN;
  let maxBytes = await read();
  let done = false;
  const poller = (async () => {
    while (!done) {
      await new Promise((r) => setTimeout(r, everyMs));
      if (done) break;
      const v = await read();
      if (!Number.isNaN(v)) maxBytes = Number.isNaN(maxBytes) ? v : Math.max(maxBytes, v);
    }
  })();
  try {
    const result = await work();
    await new Promise((r) => setTimeout(r, 300)); // the engine frees a finished sequence's row after its last token
    return { result, maxBytes, endBytes: await read() };
  } finally {
    done = true;
    await poller;
  }
}

export interface ServedVsPlain {
  prompt_tokens: number;
  output_tokens: number;
  lane_capacity: number;              // the served stream's KV lane (lanes.ts, growth 1.5); the plain graph's at its context too
  plain_ctx16_ms: number[];           // each: the median step of a plain-graph run at context 16; one more than the rounds
  plain_ctx_prompt_ms: number;        // median of plain_ctx_prompt_samples
  plain_ctx_prompt_samples: number[]; // each round: the plain graph's step at the served stream's context and lane
  served_itl_median_ms: number[];     // each round: the served stream's median inter-token gap
  served_tpot_ms: number[];
  served_server_step_ms: number[];    // the server's mean decode step meanwhile (/metrics)
  round_ratios: number[];             // each round: served ITL / the mean of the context-16 runs before and after it
  ctx_ratios: number[];               // each round: the plain graph at the served context / the same context-16 mean
  plain_ms: number;                   // median of the context-16 runs
  served_ms: number;                  // median of served_itl_median_ms
  ratio: number;                      // median of round_ratios: the check's figure
  ctx_ratio: number;                  // median of ctx_ratios: what the context alone costs the plain graph
  best_ratio: number;                 // min(served) / min(plain): the figure before 2026-12-03, kept for comparison
}

// Rounds of: the plain graph at context 16, the plain graph at the served stream's context (in the
// lane the server puts it in), then one served stream; a last context-16 run closes the final
// round. Each round's ratio divides the served gap by the mean of the context-16 runs on either
// side of it, so a drift of the machine's speed between minutes (10–30% here) cancels to first
// order, and the figure is the median over rounds. (Until 2026-12-03 it was the best served run
// over the best plain run: one fast plain run, 14.3 ms among 18.5–19.6, made that 1.49×.)
export async function servedVsPlain(o: { base: BaseOptions; modelDir: string; promptLen: number; outputLen: number; plainSteps: number; reps: number }): Promise<ServedVsPlain> {
  const g = await openPlainGraph('synthetic-110M', o.modelDir);
  const capacity = laneCapacities(g.maxPositions, SERVED_LANE_GROWTH).find((c) => c >= o.promptLen + o.outputLen) ?? g.maxPositions;
  const plain: number[] = [];
  const plainCtx: number[] = [];
  const served: ServingMetrics[] = [];
  try {
    await g.decodeAt(16, 4); // the plain session's first runs
    for (let k = 0; k < o.reps; k++) {
      plain.push(await g.decodeAt(16, o.plainSteps));
      plainCtx.push(await g.decodeAt(o.promptLen, o.plainSteps, capacity));
      const { metrics } = await runServing({ ...o.base, inputLen: o.promptLen, outputLen: o.outputLen, numPrompts: 1, adapters: [], popularity: 'round-robin', seed: 9100 + k, label: `served batch-1 after ${o.promptLen}` });
      if (metrics.successful !== 1) throw new Error(`served batch-1 probe failed: ${metrics.errors.join('; ')}`);
      served.push(metrics);
    }
    plain.push(await g.decodeAt(16, o.plainSteps));
  } finally {
    await g.release();
    (globalThis as { gc?: () => void }).gc?.();
  }
  const itl = served.map((m) => m.median_itl_ms);
  const around = (k: number): number => (plain[k] + plain[k + 1]) / 2;
  const roundRatios = itl.map((x, k) => x / around(k));
  const ctxRatios = plainCtx.map((x, k) => x / around(k));
  return {
    prompt_tokens: o.promptLen, output_tokens: o.outputLen, lane_capacity: capacity,
    plain_ctx16_ms: plain, plain_ctx_prompt_ms: median(plainCtx), plain_ctx_prompt_samples: plainCtx,
    served_itl_median_ms: itl,
    served_tpot_ms: served.map((m) => m.median_tpot_ms),
    served_server_step_ms: served.map((m) => m.server?.mean_decode_step_ms ?? NaN),
    round_ratios: roundRatios, ctx_ratios: ctxRatios,
    plain_ms: median(plain), served_ms: median(itl), ratio: median(roundRatios), ctx_ratio: median(ctxRatios),
    best_ratio: Math.min(...itl) / Math.min(...plain),
  };
}

export interface RankSample {
  phase: 'before' | 'rank-64' | 'after' | 'control';
  decode_tok_s: number;               // the server's decode steps: tokens / their time (else client output tok/s)
  out_tok_s: number;                  // client: output tokens / wall
  tpot_med_ms: number;
  mean_decode_batch: number;
  arena_max_bytes: number;            // loraserve_lora_arena_bytes, largest seen during the batch
  arena_end_bytes: number;            // … once it is done
}

export interface RankAfterRank64 {
  rank4_adapters: string[];
  rank64_adapter: string;
  streams: number;
  tokens: number;
  arena_idle_start_bytes: number;
  samples: RankSample[];
  before_tok_s: number;               // median over the before samples
  after_tok_s: number;                // median over the after samples
  speed_ratio: number;                // after / before
  control_tok_s: number;              // median over the control samples (NaN without a control server)
  control_ratio: number;              // after / control
  arena_rank4_before_bytes: number;   // largest during a rank-4 batch before any rank-64 request
  arena_rank64_bytes: number;         // largest during the rank-64 requests
  arena_rank4_after_bytes: number;    // largest during a rank-4 batch after one
  arena_idle_after_rank64_bytes: number; // once the last rank-64 request is done, before the next batch
  arena_ratio: number;                // rank4 after / rank4 before
}

// Rank-4 batches (streams × tokens, 16-token prompts, one rank-4 adapter a stream): `before` of them
// before any rank-64 request, then `after` rounds of [one rank-64 request, a rank-4 batch].
// `control`: the URL of a twin server with the same rank-4 adapters that never runs a rank-64
// request; each round then runs the rank-4 batch there too, in turn with the after batch (its
// order alternating between rounds), so both see the machine as it is at that minute.
export async function rankAfterRank64(o: { base: BaseOptions; rank4: string[]; rank64: string; tokens: number; before: number; after: number; control?: string }): Promise<RankAfterRank64> {
  const url = o.base.url;
  const samples: RankSample[] = [];
  // a round's after and control batches send the same prompts (one seed)
  const batch = async (phase: RankSample['phase'], seed: number): Promise<void> => {
    const adapters = phase === 'rank-64' ? [o.rank64] : o.rank4;
    const n = phase === 'rank-64' ? 1 : o.rank4.length;
    const on = phase === 'control' ? o.control! : url;
    const { result, maxBytes, endBytes } = await sampleArena(on, () => runServing({ ...o.base, url: on, inputLen: 16, outputLen: o.tokens, numPrompts: n, adapters, popularity: 'round-robin', seed, label: `rank probe ${phase}` }));
    const m = result.metrics;
    if (m.failed) throw new Error(`rank probe (${phase}) failed: ${m.errors.join('; ')}`);
    samples.push({
      phase, decode_tok_s: m.server?.decode_tok_s ?? m.output_throughput, out_tok_s: m.output_throughput,
      tpot_med_ms: m.median_tpot_ms, mean_decode_batch: m.server?.mean_decode_batch ?? NaN,
      arena_max_bytes: maxBytes, arena_end_bytes: endBytes,
    });
  };
  const idleStart = (await serverSnapshot(url))?.loraArenaBytes ?? NaN;
  // the rank-4 batch's first run (its shapes), not counted
  for (const on of o.control ? [url, o.control] : [url]) await runServing({ ...o.base, url: on, inputLen: 16, outputLen: 4, numPrompts: o.rank4.length, adapters: o.rank4, popularity: 'round-robin', seed: 9299, label: 'rank probe warm-up' });
  for (let k = 0; k < o.before; k++) await batch('before', 9300 + k);
  for (let k = 0; k < o.after; k++) {
    await batch('rank-64', 9350 + k);
    if (o.control && k % 2 === 1) await batch('control', 9400 + k);
    await batch('after', 9400 + k);
    if (o.control && k % 2 === 0) await batch('control', 9400 + k);
  }
  const of = (phase: RankSample['phase']): RankSample[] => samples.filter((s) => s.phase === phase);
  const maxOf = (xs: number[]): number => xs.reduce((a, b) => Math.max(a, b), -Infinity);
  const before = median(of('before').map((s) => s.decode_tok_s));
  const after = median(of('after').map((s) => s.decode_tok_s));
  const control = median(of('control').map((s) => s.decode_tok_s));
  const a4b = maxOf(of('before').map((s) => s.arena_max_bytes));
  const a4a = maxOf(of('after').map((s) => s.arena_max_bytes));
  return {
    rank4_adapters: o.rank4, rank64_adapter: o.rank64, streams: o.rank4.length, tokens: o.tokens,
    arena_idle_start_bytes: idleStart, samples,
    before_tok_s: before, after_tok_s: after, speed_ratio: after / before, control_tok_s: control, control_ratio: after / control,
    arena_rank4_before_bytes: a4b, arena_rank64_bytes: maxOf(of('rank-64').map((s) => s.arena_max_bytes)),
    arena_rank4_after_bytes: a4a, arena_idle_after_rank64_bytes: of('rank-64').at(-1)?.arena_end_bytes ?? NaN,
    arena_ratio: a4a / a4b,
  };
}
