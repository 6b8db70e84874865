// npm run bench:report [-- results.json]
//
// Writes the figures of one benchmark run into the docs, so that no number there is typed by hand:
//   - docs/benchmarks.md, between <!-- serving:begin --> and <!-- serving:end -->: the serving
//     targets' checks, the cases, the ideal for 8 concurrent, served vs plain decode, rank-4 after
//     rank-64 (bench/serving-suite.ts);
//   - README.md, between <!-- perf:begin --> and <!-- perf:end -->: the performance summary.
// It reads the given JSON, else bench/results/latest.json when that run has the serving suite, else
// the copy kept in docs/figures/serving.json (to re-render), and keeps the run's JSON in
// docs/figures/serving.json. Runtime and LoRA figures join the summary only when the same run
// measured them (`npm run bench` without --only).
import { copyFileSync, existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { before, writeBlock } from './markers.ts';
import { checkFigure, checkTarget } from './checks.ts';
import type { Check } from './checks.ts';
import type { ServingCase } from './serving-suite.ts';
import type { RankAfterRank64, ServedVsPlain } from './serving-probes.ts';
// runs saved before 2026-12-03 have no rounds: their served_vs_plain is best over best
type RoundFields = 'round_ratios' | 'ctx_ratios' | 'plain_ctx_prompt_samples' | 'ctx_ratio' | 'best_ratio' | 'lane_capacity';
type SavedServedVsPlain = Omit<ServedVsPlain, RoundFields> & Partial<Pick<ServedVsPlain, RoundFields>>;

const here = (p: string): string => fileURLToPath(new URL(p, import.meta.url));
const LATEST = here('./results/latest.json');
const KEPT = here('../docs/figures/serving.json');
const DOCS = here('../docs/benchmarks.md');
const README = here('../README.md');

interface Serving {
  model: string; quick: boolean; inputLen: number; outputLen: number;
  server: { itl_target_ms: number; scheduling: string; flags_accepted: boolean };
  duration_s: number;
  checks: Check[];
  cases: ServingCase[];
  ideal: { formula: string; prefill_tok_s: { base: number; adapter: number }; decode_probe_short_ctx?: unknown; by_case: Record<string, Record<string, string | number>> };
  served_vs_plain: SavedServedVsPlain;
  rank_after_rank64: RankAfterRank64;
}
interface Run {
  date: string; node: string; cpus: string; cores: number; quick?: boolean;
  serving?: Serving;
  runtime?: { models: { model: string; decode_vs_floor: number; decode_step_ms_ctx16: number }[] };
  lora?: { loadToFirstTokenMs?: number[]; ratios?: { metric: string; value: number }[] };
}

const read = (file: string): Run => JSON.parse(readFileSync(file, 'utf8')) as Run;
function pick(): string {
  if (process.argv[2]) return resolve(process.argv[2]);
  if (existsSync(LATEST) && read(LATEST).serving) return LATEST;
  if (existsSync(KEPT)) return KEPT;
  throw new Error('no serving figures: run `npm run bench -- --only serving` first (or pass a results JSON)');
}
const src = pick();
const run = read(src);
const s = run.serving;
if (!s || !Array.isArray(s.checks)) throw new Error(`${src} has no serving suite figures (checks); run \`npm run bench -- --only serving\``);

// ---- formatting
const num = (v: number, d: number): string => (Number.isFinite(v) ? v.toFixed(d) : '–');
const ms = (v: number): string => num(v, v >= 100 ? 0 : 1);
const tok = (v: number): string => num(v, v >= 100 ? 0 : 1);
const mb = (bytes: number): string => num(bytes / 1e6, 1);
const median = (xs: number[]): number => { const a = [...xs].sort((x, y) => x - y); const m = Math.floor(a.length / 2); return a.length ? (a.length % 2 ? a[m] : (a[m - 1] + a[m]) / 2) : NaN; };
const target = checkTarget;
const met = (c: Check): string => (c.met === null ? 'not measured' : c.met ? 'met' : '**not met**');
const byId = (id: string): Check | undefined => s.checks.find((c) => c.id === id);
const day = run.date.slice(0, 10);
const lens = `${s.inputLen} → ${s.outputLen}`;
const flags = `\`--itl-target-ms ${s.server.itl_target_ms} --scheduling ${s.server.scheduling}\`${s.server.flags_accepted ? '' : ' (refused by that build: it ran its defaults)'}`;
const machine = `${run.cores}-core ${run.cpus}, Node ${run.node}`;
const quickNote = s.quick ? ` **A \`--quick\` run: ${lens} tokens, not the targets' 512 → 128: a development run, not figures to quote.**` : '';

// ---- docs/benchmarks.md
const docs: string[] = [
  `Figures of ${day} (${s.model}, the synthetic 110M model; ${machine}; \`npm run bench -- --only serving${s.quick ? ' --quick' : ''}\`, ` +
    `server flags ${flags}; ${num(s.duration_s / 60, 1)} min), written by \`npm run bench:report\` from the JSON kept in ` +
    `docs/figures/serving.json. Every ratio compares figures measured within this one run.${quickNote}`,
  '',
  '| target | measured | bound | | from |',
  '|---|---|---|---|---|',
  ...s.checks.map((c) => `| ${c.claim} | ${checkFigure(c)} | ${target(c)} | ${met(c)} | ${c.detail} |`),
  '',
  `All requests of a case arrive at once (\`--request-rate inf\`), ${lens} tokens each, rank-16 adapters on all seven targets; ` +
    'TTFT, TPOT and ITL in ms (mean / median / p99); mean decode batch and merged-weight builds from the server\'s /metrics.',
  '',
  '| case | req/s | output tok/s | TTFT | TPOT | ITL | max ITL | mean decode batch | merged builds |',
  '|---|---|---|---|---|---|---|---|---|',
  ...s.cases.map((c) => `| ${c.label} | ${num(c.request_throughput, 3)} | ${tok(c.output_throughput)} | ${ms(c.mean_ttft_ms)} / ${ms(c.median_ttft_ms)} / ${ms(c.p99_ttft_ms)} | ` +
    `${ms(c.mean_tpot_ms)} / ${ms(c.median_tpot_ms)} / ${ms(c.p99_tpot_ms)} | ${ms(c.mean_itl_ms)} / ${ms(c.median_itl_ms)} / ${ms(c.p99_itl_ms)} | ${ms(c.max_itl_ms)} | ` +
    `${c.server ? num(c.server.mean_decode_batch, 2) : '–'} | ${c.server ? c.server.merged_builds : '–'} |` + (c.failed ? ` ${c.failed} failed` : '')),
  '',
  `The ideal for 8 concurrent requests = ${s.ideal.formula}: every prompt prefilled alone at the single-prompt rate ` +
    `(one ${s.inputLen}-token prompt with max_tokens 1: its tokens / TTFT, best of two), then ${s.outputLen} decode steps of batch 8 ` +
    (s.ideal.decode_probe_short_ctx
      ? `(the mean pure decode step of 8 streams with ${s.inputLen}-token prompts, from /metrics: at the cases' context a step reads every row's KV, ` +
        'on the 110M model about as many bytes as the weights at 8 rows × 640 positions). The columns "16-token context" put in its place the step of 8 streams ' +
        'with 16-token prompts, which leaves that KV out. '
      : '(the mean decode step of 8 streams with 16-token prompts, from /metrics). ') +
    'The columns "run\'s step" put the run\'s own mean decode step in its place ' +
    `(batch ≈ 8 at the workload's context, ${s.inputLen}–${s.inputLen + s.outputLen} tokens): what perfect scheduling would give with this engine's step as it ran.`,
  '',
  '| case | prefill tok/s | batch-8 step ms | ideal output tok/s | measured | measured / ideal | ITL p99 ms | 16-token context: step ms | measured / ideal at it | run\'s step ms | measured / ideal at it |',
  '|---|---|---|---|---|---|---|---|---|---|---|',
  ...Object.values(s.ideal.by_case).map((r) => `| ${r.case} | ${tok(r.prefill_tok_s as number)} | ${ms(r.batch8_step_ms as number)} | ${tok(r.ideal_out_tok_s as number)} | ` +
    `${tok(r.measured_out_tok_s as number)} | ${num(r.measured_over_ideal as number, 2)} | ${ms(r.itl_p99_ms as number)} | ` +
    `${r.short_ctx_step_ms === undefined ? '–' : ms(r.short_ctx_step_ms as number)} | ${r.measured_over_ideal_short_ctx === undefined ? '–' : num(r.measured_over_ideal_short_ctx as number, 2)} | ` +
    `${r.run_decode_step_ms === undefined ? '–' : ms(r.run_decode_step_ms as number)} | ${r.measured_over_ideal_at_run_step === undefined ? '–' : num(r.measured_over_ideal_at_run_step as number, 2)} |`),
  '',
];
const b1 = s.served_vs_plain;
const rounds = b1.round_ratios && b1.plain_ctx_prompt_samples && b1.ctx_ratio !== undefined && b1.best_ratio !== undefined
  ? { ratios: b1.round_ratios, ctxSamples: b1.plain_ctx_prompt_samples, ctxRatio: b1.ctx_ratio, best: b1.best_ratio, capacity: b1.lane_capacity }
  : null;
docs.push(rounds
  ? `Served batch-1 decode: one stream, a ${b1.prompt_tokens}-token prompt, ${b1.output_tokens} tokens, the median gap between its tokens ` +
    `over HTTP (${b1.served_itl_median_ms.map(ms).join(', ')} ms in ${b1.served_itl_median_ms.length} rounds; the server's mean decode step ` +
    `${b1.served_server_step_ms.map(ms).join(', ')} ms), against the plain graph (buildLlamaGraph's default, one StepRunner in the ` +
    `benchmark's process) at context 16 before and after each round: ${b1.plain_ctx16_ms.map(ms).join(', ')} ms. Each round's ratio divides ` +
    `the served gap by the mean of the two plain runs around it, so the VM's drift between minutes cancels: ${rounds.ratios.map((x) => num(x, 2)).join(', ')}; ` +
    `median ${num(b1.ratio, 2)}×. The plain graph at context ${b1.prompt_tokens} in the served stream's lane (capacity ${rounds.capacity}), in the same rounds: ` +
    `${rounds.ctxSamples.map(ms).join(', ')} ms, median ${num(rounds.ctxRatio, 2)}× its context-16 step: that much is the KV the step must read, ` +
    `the rest (${num(b1.ratio / rounds.ctxRatio, 2)}×) is the served graph, the engine worker and HTTP. Best served over best plain, the figure before ` +
    `2026-12-03: ${num(rounds.best, 2)}×.`
  : `Served batch-1 decode: one stream, a ${b1.prompt_tokens}-token prompt, ${b1.output_tokens} tokens, the median gap between its tokens ` +
    `over HTTP (${b1.served_itl_median_ms.map(ms).join(', ')} ms in ${b1.served_itl_median_ms.length} runs; the server's mean decode step ` +
    `${b1.served_server_step_ms.map(ms).join(', ')} ms), against the plain graph (buildLlamaGraph's default, one StepRunner in the ` +
    `benchmark's process, interleaved with the served runs) at context 16: ${b1.plain_ctx16_ms.map(ms).join(', ')} ms, and at context ` +
    `${b1.prompt_tokens}: ${ms(b1.plain_ctx_prompt_ms)} ms. Best of each: ${ms(b1.served_ms)} / ${ms(b1.plain_ms)} = ${num(b1.ratio, 2)}×.`,
  '',
);
const rk = s.rank_after_rank64;
docs.push(
  `Rank-4 batches (${rk.streams} streams on ${rk.rank4_adapters.length} rank-4 adapters, 16-token prompts, ${rk.tokens} tokens each) before ` +
    `any rank-64 request, then after each of ${rk.samples.filter((x) => x.phase === 'rank-64').length} requests on a rank-64 adapter ` +
    '(run alone); decode tok/s from the server\'s decode steps; LoRA arena = `loraserve_lora_arena_bytes`, the largest value read ' +
    `while the batch ran and the value once it was done (${mb(rk.arena_idle_start_bytes)} MB on the idle server before the first). ` +
    (rk.samples.some((x) => x.phase === 'control')
      ? 'Each after batch has a control: the same prompts on a twin server that never ran a rank-64 request, run just before or after it ' +
        `(alternating), so that both see the machine at the same minute; after / control = ${num(rk.control_ratio, 2)}×, after / before = ${num(rk.speed_ratio, 2)}×.`
      : ''),
  '',
  '| batch | decode tok/s | output tok/s | TPOT median ms | mean decode batch | arena MB (max / done) |',
  '|---|---|---|---|---|---|',
  ...rk.samples.map((x) => `| ${x.phase} | ${tok(x.decode_tok_s)} | ${tok(x.out_tok_s)} | ${ms(x.tpot_med_ms)} | ${num(x.mean_decode_batch, 2)} | ${mb(x.arena_max_bytes)} / ${mb(x.arena_end_bytes)} |`),
);
writeBlock(DOCS, 'serving', docs.join('\n'), before('## Runtime'));

// ---- README.md: the performance summary
const c = (id: string): Check => { const x = byId(id); if (!x) throw new Error(`check ${id} missing from ${src}`); return x; };
const d32 = s.cases.find((x) => x.concurrency === 32 && x.kind === 'distinct_adapters');
const d8 = s.cases.find((x) => x.concurrency === 8 && x.kind === 'distinct_adapters');
const metN = s.checks.filter((x) => x.met === true).length;
const missed = s.checks.filter((x) => x.met !== true);
const said = (x: Check): string => (x.met === null ? 'not measured' : x.met ? `target ${target(x)}: met` : `target ${target(x)}: **not met**`);
const readme: string[] = [
  `Figures of ${day}, through HTTP on the synthetic 110M Llama (${machine}; \`npm run bench -- --only serving${s.quick ? ' --quick' : ''}\`, ` +
    `then \`npm run bench:report\`, which writes this paragraph; ratios within one run).${quickNote} ` +
    `${d32 ? `32 concurrent ${lens}-token requests on 32 distinct rank-16 adapters produce ${tok(d32.output_throughput)} output tok/s, ` : ''}` +
    `${checkFigure(c('scale_32'))} one stream (measured just before and after it; ${said(c('scale_32'))}) and ${checkFigure(c('vs_base_32'))} the same load on the base model (${said(c('vs_base_32'))}). ` +
    `8 on 8 distinct adapters${d8 ? ` (${tok(d8.output_throughput)} tok/s)` : ''} reach ${checkFigure(c('ideal_8x8'))} the ideal of the prefill and batch-8 decode rates measured in the same run (${said(c('ideal_8x8'))}), ` +
    `with inter-token latency p99 ${checkFigure(c('itl_8x8'))} (${said(c('itl_8x8'))}). ` +
    `A served batch-1 decode step after a 512-token prompt takes ${ms(b1.served_ms)} ms, ${checkFigure(c('served_b1'))} the plain graph's ${ms(b1.plain_ms)} ms at context 16 (${rounds ? `median of ${rounds.ratios.length} rounds; ` : ''}${said(c('served_b1'))})${rounds ? `, of which the ${b1.prompt_tokens}-token context alone costs the plain graph ${num(rounds.ctxRatio, 2)}×` : ''}. ` +
    `Rank-4 batches after a rank-64 request decode at ${checkFigure(c('rank_after_64'))} their speed without it (a twin server's, measured in turn; ${said(c('rank_after_64'))}), ` +
    `and the LoRA arena holds ${mb(rk.arena_rank4_before_bytes)} MB for them before, ${mb(rk.arena_rank64_bytes)} MB with rank 64 and ${mb(rk.arena_rank4_after_bytes)} MB after (${said(c('arena_follows'))}).`,
];
const extra: string[] = [];
const r110 = run.runtime?.models.find((m) => /110/.test(m.model));
if (r110) extra.push(`batch-1 decode on the plain graph runs at ${num(r110.decode_vs_floor, 2)}× the memory-bandwidth floor (${ms(r110.decode_step_ms_ctx16)} ms a step)`);
const loads = run.lora?.loadToFirstTokenMs;
if (loads?.length) extra.push(`a rank-16 adapter loaded from a directory serves its first token ${ms(median(loads))} ms later (median of ${loads.length})`);
if (extra.length) readme.push('', `In the same run, ${extra.join('; ')}.`);
readme.push('', `${metN} of ${s.checks.length} checks met${missed.length ? `; not met: ${missed.map((x) => x.id).join(', ')}` : ''}. Every figure, with the cases' TTFT, TPOT and ITL, is in docs/benchmarks.md.`);
writeBlock(README, 'perf', readme.join('\n'), (text, block) => {
  const at = text.search(/^## Performance.*$/m);
  if (at === -1) throw new Error('README.md has no "## Performance" section to hold the summary');
  const eol = text.indexOf('\n', at);
  return `${text.slice(0, eol + 1)}\n${block}\n${text.slice(eol + 1)}`;
});

if (resolve(src) !== resolve(KEPT)) copyFileSync(src, KEPT);
console.log(`docs/benchmarks.md and README.md: serving figures of ${run.date}${s.quick ? ' (quick run)' : ''} from ${src}; ${metN} of ${s.checks.length} checks met`);
