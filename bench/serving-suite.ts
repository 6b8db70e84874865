// npm run bench -- --only serving [--quick] [--itl-target-ms N] [--scheduling goodput|strict]
//
// Issue 10's serving figures, through the real server over HTTP on the synthetic 110M model, every
// ratio measured within this one run (this VM's timings drift ±10–30% between runs):
//   - cases: 1, 8 and 32 concurrent requests of input-len → output-len tokens (512 → 128; --quick:
//     128 → 32), all at once, on the base model, on one rank-16 adapter and on as many distinct
//     rank-16 adapters as requests: request and output-token throughput, mean / median / p99 of
//     TTFT, TPOT and ITL (serving-bench.ts, in vLLM's form).
//   - the "ideal" for 8 concurrent: every prompt token at the single-prompt prefill rate, then
//     output-len decode steps of batch 8, both measured through the server in this run.
//   - served batch-1 decode after a 512-token prompt against the plain graph's step at context 16
//     (serving-probes.ts).
//   - rank-4 batches before and after rank-64 requests, and the LoRA arena's bytes meanwhile.
// It prints tables and a list of checks (measured, target, met or not) and returns the JSON that
// run.ts saves in bench/results/latest.json; `npm run bench:report` writes the docs from it.
// A benchmark: nothing here asserts or fails the run on a missed target.
import { startServer } from '../load-tests/harness.ts';
import type { Server } from '../load-tests/harness.ts';
import { median, printTable } from './stats.ts';
import { randomPrompts, runServing, benchModel110m, streamRequest, tableRow, uploadSyntheticAdapter, warmUp } from './serving-bench.ts';
import type { ServingMetrics } from './serving-bench.ts';
import { rankAfterRank64, servedVsPlain } from './serving-probes.ts';
import type { BaseOptions } from './serving-probes.ts';
import { check, checkFigure, checkTarget } from './checks.ts';
import type { Check } from './checks.ts';

export type Scheduling = 'goodput' | 'strict';

export interface ServingSuiteOptions {
  quick: boolean;
  itlTargetMs: number;    // passed to the server as --itl-target-ms, and the ITL check's bound
  scheduling: Scheduling; // passed to the server as --scheduling
}

export type CaseKind = 'base' | 'one_adapter' | 'distinct_adapters';
export type ServingCase = ServingMetrics & { concurrency: number; kind: CaseKind };

const fmt = (v: number, d = 2): string => (Number.isFinite(v) ? v.toFixed(d) : String(v));

// The server with the scheduling flags; a server that refuses them (a build from before they
// existed) is started without them, and the run records that.
async function startWithFlags(dir: string, common: string[], o: ServingSuiteOptions): Promise<{ server: Server; flagsAccepted: boolean }> {
  const flags = ['--itl-target-ms', String(o.itlTargetMs), '--scheduling', o.scheduling];
  try {
    return { server: await startServer(dir, [...common, ...flags]), flagsAccepted: true };
  } catch (e) {
    console.log(`\nWARNING: the server did not start with ${flags.join(' ')} (${(e as Error).message}); starting it without them. ` +
      'The figures below are of its default scheduling, and the ITL check compares with the value asked for.');
    return { server: await startServer(dir, common), flagsAccepted: false };
  }
}

export async function servingBench(o: ServingSuiteOptions): Promise<Record<string, unknown>> {
  const t0 = performance.now();
  const phases: Record<string, number> = {};
  let tPhase = performance.now();
  const phase = (name: string): void => { const now = performance.now(); phases[name] = (now - tPhase) / 1000; tPhase = now; };

  const { dir, modelName, cfg, special } = benchModel110m();
  const inputLen = o.quick ? 128 : 512;
  const outputLen = o.quick ? 32 : 128;
  const concurrencies = [1, 8, 32];
  const nAdapters = Math.max(...concurrencies);
  const rank4 = ['r4_0', 'r4_1', 'r4_2', 'r4_3'];
  const { server, flagsAccepted } = await startWithFlags(dir, ['--model-name', modelName, '--max-queue', '512'], o);
  phase('start_server');
  try {
    console.log(`\nserving bench (${o.quick ? 'quick' : 'full'}: ${inputLen} → ${outputLen}; --itl-target-ms ${o.itlTargetMs} --scheduling ${o.scheduling}${flagsAccepted ? '' : ' NOT ACCEPTED by the server'}): uploading ${nAdapters} rank-16 adapters, 4 rank-4 and 1 rank-64 (all seven targets) …`);
    for (let i = 0; i < nAdapters; i++) await uploadSyntheticAdapter(server.url, cfg, `a${i}`, 16, 500 + i);
    for (let i = 0; i < rank4.length; i++) await uploadSyntheticAdapter(server.url, cfg, rank4[i], 4, 600 + i);
    await uploadSyntheticAdapter(server.url, cfg, 'r64', 64, 700);
    const adapterNames = Array.from({ length: nAdapters }, (_, i) => `a${i}`);
    const base: BaseOptions = {
      url: server.url, model: modelName, requestRate: Infinity, maxConcurrency: null,
      vocab: cfg.vocabSize, specialIds: special, logprobs: true, timeoutMs: 600_000,
    };
    phase('upload');

    // 1. rank-4 batches before and after rank-64 requests: first, while no rank-16 or rank-64
    // adapter has run yet, so that "before" is the arena as a fresh server has it
    await warmUp(server.url, [modelName, ...rank4], cfg.vocabSize, special);
    // the control: a twin server with the rank-4 adapters only, its batches run in turn with the
    // after batches (serving-probes.ts), then stopped
    const { server: twin } = await startWithFlags(dir, ['--model-name', modelName, '--max-queue', '512'], o);
    let rank;
    try {
      for (let i = 0; i < rank4.length; i++) await uploadSyntheticAdapter(twin.url, cfg, rank4[i], 4, 600 + i);
      await warmUp(twin.url, [modelName, ...rank4], cfg.vocabSize, special);
      rank = await rankAfterRank64({ base, rank4, rank64: 'r64', tokens: o.quick ? 32 : 64, before: 2, after: o.quick ? 2 : 4, control: twin.url });
    } finally {
      await twin.stop();
    }
    printTable(`rank-4 batches (${rank.streams} streams × ${rank.tokens} tokens, 16-token prompts) before and after rank-64 requests; arena = loraserve_lora_arena_bytes (max while it ran / once done)`,
      rank.samples.map((s) => ({ phase: s.phase, decode_tok_s: s.decode_tok_s, out_tok_s: s.out_tok_s, tpot_med_ms: s.tpot_med_ms, mean_batch: s.mean_decode_batch, arena_max_mb: s.arena_max_bytes / 1e6, arena_end_mb: s.arena_end_bytes / 1e6 })));
    phase('rank_probe');

    // 2. served batch-1 decode after a 512-token prompt vs the plain graph at context 16
    await warmUp(server.url, [modelName, ...adapterNames], cfg.vocabSize, special);
    const b1 = await servedVsPlain({ base, modelDir: dir, promptLen: 512, outputLen: o.quick ? 24 : 64, plainSteps: o.quick ? 16 : 40, reps: o.quick ? 2 : 7 });
    printTable(`served batch-1 decode after a 512-token prompt (median gap between its tokens, over HTTP) vs the plain graph (one StepRunner, this process), in ${b1.round_ratios.length} rounds: medians, and each round's ratio to the context-16 runs either side of it`, [{
      plain_ctx16_ms: b1.plain_ms, [`plain_ctx${b1.prompt_tokens}_cap${b1.lane_capacity}_ms`]: b1.plain_ctx_prompt_ms, served_itl_med_ms: b1.served_ms,
      server_step_ms: median(b1.served_server_step_ms), served_over_plain16: b1.ratio, plain_ctx_over_plain16: b1.ctx_ratio, best_over_best: b1.best_ratio,
      round_ratios: b1.round_ratios.map((x) => x.toFixed(2)).join(' '), samples_plain16: b1.plain_ctx16_ms.map((x) => x.toFixed(1)).join(' '), samples_served: b1.served_itl_median_ms.map((x) => x.toFixed(1)).join(' '),
    }]);
    phase('served_vs_plain');

    // 3. the single-prompt prefill rate: one input-len request with max_tokens 1, prompt tokens /
    // TTFT (best of two, so that a first run of a shape or a noisy neighbour does not count)
    const prefillRate = async (model: string, seed: number): Promise<number> => {
      let best = 0;
      for (let k = 0; k < 2; k++) {
        const [prompt] = randomPrompts(1, inputLen, cfg.vocabSize, special, seed + k);
        const r = await streamRequest(server.url, { model, prompt, max_tokens: 1, temperature: 0, ignore_eos: true, stream: true, logprobs: 0 }, { timeoutMs: 120_000 });
        if (!r.ok) throw new Error(`prefill probe failed: ${r.status} ${r.error}`);
        best = Math.max(best, r.promptTokens / (r.ttftMs / 1000));
      }
      return best;
    };
    const prefill = { base: await prefillRate(modelName, 7001), adapter: await prefillRate('a0', 7003) };
    // the batch-8 decode step: 8 requests all at once, their prompts as long as the cases' (a decode
    // step reads each row's KV: 8 rows at context 512–640 read ~380 MB of it on the 110M model, as
    // much as the weights, so a step at a 16-token context is no ideal for them); the server's pure
    // decode steps (/metrics) once they all decode. The short-prompt step is kept for comparison.
    const probeTokens = Math.min(outputLen, 64);
    const decodeProbe: Record<string, ServingMetrics['server']> = {};
    const shortProbe: Record<string, ServingMetrics['server']> = {};
    for (const kind of ['base', 'one_adapter', 'distinct_adapters'] as const) {
      const adapters = kind === 'base' ? [] : kind === 'one_adapter' ? ['a0'] : adapterNames.slice(0, 8);
      const { metrics } = await runServing({ ...base, inputLen, outputLen: probeTokens, numPrompts: 8, adapters, popularity: 'round-robin', seed: 8000, label: `decode probe ${kind}` });
      decodeProbe[kind] = metrics.server;
      shortProbe[kind] = (await runServing({ ...base, inputLen: 16, outputLen: probeTokens, numPrompts: 8, adapters, popularity: 'round-robin', seed: 8100, label: `decode probe ${kind}, 16-token prompts` })).metrics.server;
    }
    phase('prefill_and_decode_probes');

    // 4. the cases
    const cases: ServingCase[] = [];
    let seed = 1000;
    const singleAround: ServingMetrics[] = [];
    const singleStream = async (when: string): Promise<ServingMetrics> =>
      (await runServing({ ...base, inputLen, outputLen, numPrompts: 1, adapters: ['a0'], popularity: 'round-robin', seed: 1900 + singleAround.length, label: `1× 1 adapter, ${when} the ${nAdapters}-adapter case` })).metrics;
    for (const conc of concurrencies) {
      for (const kind of ['base', 'one_adapter', 'distinct_adapters'] as const) {
        if (kind === 'distinct_adapters' && conc === 1) continue; // the same as one adapter
        const adapters = kind === 'base' ? [] : kind === 'one_adapter' ? ['a0'] : adapterNames.slice(0, conc);
        const label = `${conc}× ${kind === 'base' ? 'base' : kind === 'one_adapter' ? '1 adapter' : `${conc} adapters`}`;
        // the scale check's single stream again just before and after the 32-adapter case, so that
        // its denominator is measured at the same minutes (the VM drifts 10-30% between minutes)
        const scaleCase = conc === nAdapters && kind === 'distinct_adapters';
        if (scaleCase) singleAround.push(await singleStream('before'));
        const { metrics } = await runServing({ ...base, inputLen, outputLen, numPrompts: conc, adapters, popularity: 'round-robin', seed: seed++, label });
        console.log(`  ${label}: ${metrics.output_throughput.toFixed(1)} out tok/s, TTFT median ${metrics.median_ttft_ms.toFixed(0)} ms, TPOT median ${metrics.median_tpot_ms.toFixed(1)} ms, ITL p99 ${metrics.p99_itl_ms.toFixed(0)} ms, mean decode batch ${metrics.server?.mean_decode_batch.toFixed(2) ?? '-'}`);
        cases.push({ ...metrics, concurrency: conc, kind });
        if (scaleCase) singleAround.push(await singleStream('after'));
      }
    }
    printTable(`serving benchmark, ${modelName} (${inputLen} → ${outputLen} tokens, all requests at once; ms, tok/s)`, cases.map((c) => tableRow(c)));
    phase('cases');

    // 5. the ideal for 8 concurrent: the prompts prefilled one after another at the single-prompt
    // rate, then output-len decode steps of batch 8 (the step time from the probe at the cases'
    // context; the one at a 16-token context, shown beside it, leaves out the KV the cases must read)
    const formula = `8·${outputLen} / (8·${inputLen}/prefill_tok_s + ${outputLen}·batch8_step)`;
    const ideal: Record<string, string | number>[] = [];
    for (const c of cases.filter((x) => x.concurrency === 8)) {
      const rate = c.kind === 'base' ? prefill.base : prefill.adapter;
      const probe = decodeProbe[c.kind];
      const stepS = probe ? probe.mean_decode_step_ms / 1000 : c.median_tpot_ms / 1000; // no /metrics: TPOT
      const idealTokS = (8 * outputLen) / ((8 * inputLen) / rate + outputLen * stepS);
      // the same with the run's own decode step (batch ≈ 8 at the workload's context, 512–640 here):
      // what perfect scheduling would give with this engine's step at that context
      const runStepS = c.server ? c.server.mean_decode_step_ms / 1000 : NaN;
      const idealAtRunStep = (8 * outputLen) / ((8 * inputLen) / rate + outputLen * runStepS);
      const shortS = (shortProbe[c.kind]?.mean_decode_step_ms ?? NaN) / 1000;
      const idealShort = (8 * outputLen) / ((8 * inputLen) / rate + outputLen * shortS);
      ideal.push({
        case: c.label, prefill_tok_s: rate, batch8_step_ms: stepS * 1000, step_from: probe ? '/metrics' : 'TPOT',
        probe_batch: probe?.mean_decode_batch ?? NaN, ideal_out_tok_s: idealTokS, measured_out_tok_s: c.output_throughput,
        measured_over_ideal: c.output_throughput / idealTokS, itl_p99_ms: c.p99_itl_ms,
        run_decode_batch: c.server?.mean_decode_batch ?? NaN, run_decode_steps: c.server?.decode_steps ?? NaN, run_mixed_steps: c.server?.mixed_steps ?? NaN,
        run_decode_step_ms: runStepS * 1000, ideal_at_run_step_tok_s: idealAtRunStep, measured_over_ideal_at_run_step: c.output_throughput / idealAtRunStep,
        short_ctx_step_ms: shortS * 1000, measured_over_ideal_short_ctx: c.output_throughput / idealShort,
      });
    }
    printTable(`8 concurrent vs ideal = ${formula}; batch8_step from a probe of 8 streams with ${inputLen}-token prompts (probe_batch: its mean decode batch); short_ctx: the same with 16-token prompts`, ideal);

    // 6. the checks
    const find = (conc: number, kind: CaseKind): ServingCase | undefined => cases.find((c) => c.concurrency === conc && c.kind === kind);
    const d8 = find(8, 'distinct_adapters')!;
    const i8 = ideal.find((r) => r.case === d8.label)!;
    const d32 = find(32, 'distinct_adapters')!;
    const b32 = find(32, 'base')!;
    const one1 = find(1, 'one_adapter')!;
    const singleTokS = singleAround.reduce((a, m) => a + m.output_throughput, 0) / singleAround.length;
    const lens = `${inputLen} → ${outputLen}`;
    // output tok/s if the wall time were only the engine's steps: what a faster step would buy,
    // apart from scheduling and the time between steps
    const atSteps = (c: ServingCase): number => c.total_output_tokens / (c.server?.step_s ?? NaN);
    const ceiling = scaleCeiling({ single: singleTokS, adapters: d32, base: b32, prefillTokS: prefill.adapter, inputLen, outputLen, factor: 3 });
    const checks: Check[] = [
      check('ideal_8x8', `8 concurrent × ${lens} on 8 distinct adapters: output tok/s ≥ 0.8× the ideal`,
        i8.measured_over_ideal as number, '>=', 0.8, '×',
        `${fmt(d8.output_throughput, 1)} tok/s vs ideal ${fmt(i8.ideal_out_tok_s as number, 1)} (prefill ${fmt(prefill.adapter, 0)} tok/s, batch-8 step ${fmt(i8.batch8_step_ms as number, 1)} ms at the cases' context; with the step at a 16-token context, ${fmt(i8.short_ctx_step_ms as number, 1)} ms: ${fmt(i8.measured_over_ideal_short_ctx as number)}×)`),
      check('itl_8x8', `8 concurrent × ${lens} on 8 distinct adapters: ITL p99 ≤ --itl-target-ms (${o.itlTargetMs})`,
        d8.p99_itl_ms, '<=', o.itlTargetMs, 'ms',
        `ITL median ${fmt(d8.median_itl_ms, 1)} ms, max ${fmt(d8.max_itl_ms, 0)} ms${flagsAccepted ? '' : '; the server did not take --itl-target-ms'}`),
      check('scale_32', `32 concurrent × ${lens} on 32 distinct rank-16 adapters: output tok/s ≥ 3× one stream's (the mean of one stream just before and just after it)`,
        d32.output_throughput / singleTokS, '>=', 3, '×',
        `${fmt(d32.output_throughput, 1)} vs ${fmt(singleTokS, 1)} tok/s (1 stream on 1 adapter, just before and after: ${singleAround.map((m) => fmt(m.output_throughput, 1)).join(' and ')}; the 1× case minutes earlier: ${fmt(one1.output_throughput, 1)}, ${fmt(d32.output_throughput / one1.output_throughput)}×); ${fmt(atSteps(d32) / atSteps(one1), 2)}× at the engine's own step time, nothing between steps (steps ${fmt(d32.server?.step_s ?? NaN, 1)} of ${fmt(d32.duration_s, 1)} s and ${fmt(one1.server?.step_s ?? NaN, 2)} of ${fmt(one1.duration_s, 2)} s). ` +
        `Ceiling: 3× is ${fmt(ceiling.target_wall_s, 1)} s for the case; its ${ceiling.prompts} prompts prefilled at the single-prompt rate (${fmt(ceiling.prefill_tok_s, 0)} tok/s) take ${fmt(ceiling.prefill_s, 1)} s of it, leaving ${fmt(ceiling.step_budget_ms, 0)} ms${ceiling.step_budget_ms < 0 ? ' (below 0: the prefill alone takes longer)' : ''} per batch-${ceiling.prompts} decode step against ${fmt(ceiling.step_ms, 0)} ms measured (base model: ${fmt(ceiling.base_step_ms, 0)} ms); the base model under the same load, with no LoRA work, reaches ${fmt(ceiling.base_over_single)}× the same stream`),
      check('vs_base_32', `32 concurrent × ${lens} on 32 distinct rank-16 adapters: output tok/s ≥ 0.8× the same load on the base model`,
        d32.output_throughput / b32.output_throughput, '>=', 0.8, '×',
        `${fmt(d32.output_throughput, 1)} vs ${fmt(b32.output_throughput, 1)} tok/s`),
      check('served_b1', 'served batch-1 decode after a 512-token prompt (HTTP): step ≤ 1.15× the plain graph\'s step at context 16 (median of rounds, each against the plain runs either side)',
        b1.ratio, '<=', 1.15, '×',
        `median of ${b1.round_ratios.length} rounds, each the served stream's median ITL over the plain context-16 runs either side of it (${b1.round_ratios.map((x) => fmt(x)).join(', ')}); medians ${fmt(b1.served_ms, 1)} vs ${fmt(b1.plain_ms, 1)} ms; the plain graph at context ${b1.prompt_tokens} in the served lane (${b1.lane_capacity}): ${fmt(b1.ctx_ratio)}×, so the context alone costs that much; best over best ${fmt(b1.best_ratio)}×`),
      check('rank_after_64', 'after a rank-64 request, rank-4 batches decode within 5% of their speed without it (the same batches on a twin server that never ran one, in turn with them)',
        rank.control_ratio, '>=', 0.95, '×',
        `${fmt(rank.after_tok_s, 1)} vs ${fmt(rank.control_tok_s, 1)} decode tok/s (medians of ${rank.samples.filter((s) => s.phase === 'after').length} batches each); against the same server's batches before any rank-64 request, minutes earlier: ${fmt(rank.after_tok_s, 1)} vs ${fmt(rank.before_tok_s, 1)} = ${fmt(rank.speed_ratio)}×`),
      check('arena_follows', 'LoRA arena bytes follow the ranks in use: a rank-4 batch after a rank-64 request holds no more than before it',
        rank.arena_ratio, '<=', 1, '×',
        `rank-4 ${fmt(rank.arena_rank4_before_bytes / 1e6, 1)} MB before, ${fmt(rank.arena_rank64_bytes / 1e6, 1)} MB with rank 64, ${fmt(rank.arena_idle_after_rank64_bytes / 1e6, 1)} MB idle after it, ${fmt(rank.arena_rank4_after_bytes / 1e6, 1)} MB rank-4 after`),
    ];
    printTable(`serving targets (${o.quick ? 'QUICK run: shorter lengths than the targets\' 512 → 128' : 'full run'}; every figure measured within this run)`,
      checks.map((c) => ({ check: c.id, measured: checkFigure(c), target: checkTarget(c), met: c.met === null ? 'n/a' : c.met ? 'yes' : 'NO', detail: c.detail })));
    phase('report');
    const totalS = (performance.now() - t0) / 1000;
    console.log(`serving suite: ${totalS.toFixed(0)} s (${Object.entries(phases).map(([k, v]) => `${k} ${v.toFixed(0)} s`).join(', ')})`);

    return {
      model: modelName, quick: o.quick, inputLen, outputLen,
      server: { itl_target_ms: o.itlTargetMs, scheduling: o.scheduling, flags_accepted: flagsAccepted },
      duration_s: totalS, phases_s: phases,
      checks,
      cases,
      ideal: { formula, prefill_tok_s: prefill, decode_probe: decodeProbe, decode_probe_short_ctx: shortProbe, by_case: Object.fromEntries(ideal.map((r) => [r.case, r])) },
      served_vs_plain: b1,
      scale_single_around_tok_s: singleAround.map((m) => m.output_throughput), // scale_32's denominator: one stream just before and after the 32-adapter case
      scale_ceiling: ceiling,
      rank_after_rank64: rank,
    };
  } finally {
    await server.stop();
  }
}

// What scale_32's bound leaves for the batched decode steps, from the run's own figures: the case's
// wall time at `factor` × the single stream's output tok/s, less its prompts prefilled one after
// another at the measured single-prompt rate (prefill is compute-bound here: batching prompts does
// not make it cheaper), spread over the output-len − 1 decode steps; beside it the batch steps the
// case measured (/metrics), and where the base model under the same load lands.
export interface ScaleCeiling {
  factor: number;
  prompts: number;
  target_wall_s: number;     // output tokens / (factor × single tok/s)
  prefill_tok_s: number;     // the single-prompt adapter prefill rate (prompt tokens / TTFT)
  prefill_s: number;         // prompts × input-len / that rate
  step_budget_ms: number;    // (target_wall_s − prefill_s) / (output-len − 1): a stream's first token comes with its prefill
  step_ms: number;           // the case's mean decode step (/metrics)
  base_step_ms: number;      // the base model's under the same load
  base_over_single: number;  // the base model's output tok/s under the same load / the single stream's
}

export function scaleCeiling(o: { single: number; adapters: ServingCase; base: ServingCase; prefillTokS: number; inputLen: number; outputLen: number; factor: number }): ScaleCeiling {
  const prompts = o.adapters.num_prompts;
  const targetWallS = o.adapters.total_output_tokens / (o.factor * o.single);
  const prefillS = (prompts * o.inputLen) / o.prefillTokS;
  return {
    factor: o.factor, prompts, target_wall_s: targetWallS, prefill_tok_s: o.prefillTokS, prefill_s: prefillS,
    step_budget_ms: ((targetWallS - prefillS) / (o.outputLen - 1)) * 1000,
    step_ms: o.adapters.server?.mean_decode_step_ms ?? NaN,
    base_step_ms: o.base.server?.mean_decode_step_ms ?? NaN,
    base_over_single: o.base.output_throughput / o.single,
  };
}
