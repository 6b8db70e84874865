// Issue 18's figures in docs/quantization.md (run by `npm run bench:report`), so that none is typed
// by hand: block `quant`, from the latest `npm run bench -- --only quant` (bench/results/latest.json
// when that run has it, else docs/figures/quant.json, where the run's JSON is kept).
import { copyFileSync, existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { before, writeBlock } from './markers.ts';
import type { QuantRow, QuantSamples } from './quant-bench.ts';
import { pairedRatio, quantChecks } from './quant-bench.ts';
import type { ProbeRow } from './quant-probe.ts';
import type { Check } from './checks.ts';
import { checkFigure, checkTarget } from './checks.ts';

const here = (p: string): string => fileURLToPath(new URL(p, import.meta.url));
const QUALITY = here('../docs/figures/quant-quality.json');

if (existsSync(QUALITY)) {
  const q = JSON.parse(readFileSync(QUALITY, 'utf8')) as {
    date: string;
    stories260K: Record<string, { perplexity: number; top1_agreement: number }>;
    llama110m: Record<string, { top5_mean_abs_dlogprob: number; adapter_effect: number; adapter_effect_rel_change: number }>;
  };
  writeBlock(here('../docs/quantization.md'), 'quant-quality', [
    `Figures of ${q.date.slice(0, 10)} (\`npm run quant-quality\`, scripts/quant-quality.ts; JSON in docs/figures/quant-quality.json; the served schemes: block 32, asymmetric, accuracy level 4).`,
    '',
    '| mode | stories260K perplexity (held-out stories) | top-1 agreement with F32 (greedy continuations, teacher-forced) | 110M synthetic: mean \\|Δ log-prob\\| of F32\'s top-5 | an adapter\'s effect: relative change from over F32 |',
    '|---|---|---|---|---|',
    ...Object.keys(q.stories260K).map((m) => `| ${m} | ${q.stories260K[m].perplexity.toFixed(3)} | ${q.stories260K[m].top1_agreement.toFixed(3)} | ${q.llama110m[m].top5_mean_abs_dlogprob.toFixed(3)} | ${q.llama110m[m].adapter_effect_rel_change.toFixed(3)} |`),
    '',
    'The 110M model has random (synthetic) weights, whose activations are far from a trained model\'s: its figures show the kernels at work, not the quality a real 110M model would keep. The adapter effect is the change an adapter (rank 16, all targets) makes to the log-probs of the same positions; over an int4 base it differs from over F32 by the relative amount shown.',
  ].join('\n'), before('## '));
  console.log('docs/quantization.md: quant-quality block written');
}
const LATEST = here('./results/latest.json');
const KEPT = here('../docs/figures/quant.json');

interface Run { date: string; cores: number; cpus: string; node: string; quant?: { model: string; quick: boolean; streams: number; rounds?: number; probe?: ProbeRow[]; rows: QuantRow[]; checks: Check[]; samples?: QuantSamples } }
const read = (file: string): Run => JSON.parse(readFileSync(file, 'utf8')) as Run;
const src = existsSync(LATEST) && read(LATEST).quant ? LATEST : existsSync(KEPT) ? KEPT : null;
if (!src) console.log('no quant figures yet: run `npm run bench -- --only quant`');
else {
  const run = read(src);
  const q = run.quant!;
  if (src === LATEST) copyFileSync(LATEST, KEPT);
  const f32 = q.rows[0];
  // a mode against F32: the median of paired ratios when the run kept its samples, else of medians
  const ratio = (r: QuantRow, key: 'b1' | 'prefill' | 'out', v: number, base: number): string =>
    `${(q.samples ? pairedRatio(q.samples[r.mode][key], q.samples.f32[key], key !== 'b1') : v / base).toFixed(2)}×`;
  const checks = q.samples ? quantChecks(q.samples, q.streams) : q.checks;
  const lines = [
    `Figures of ${run.date.slice(0, 10)} (${q.model}, ${run.cores}-core ${run.cpus}, Node ${run.node}; \`npm run bench -- --only quant${q.quick ? ' --quick' : ''}\`, written by \`npm run bench:report\`; JSON kept in docs/figures/quant.json). ` +
      `Through the server over HTTP, the four servers up side by side and measured in turn, ${q.rounds ?? 1} round(s) (batch-1 and prefill: three turns a round); each figure the median of its samples, each ratio to f32 the median of the ratios of samples taken in the same turn (seconds apart, so the VM's drift over minutes cancels): batch-1 decode (median gap between one stream's tokens, 16-token prompt), prefill (one 512-token prompt, tokens / TTFT), ${q.streams} streams at once on ${q.streams} distinct rank-16 adapters (16 → ${q.quick ? 48 : 192}: 512 prompt tokens against ${q.streams * (q.quick ? 48 : 192)} generated, so the clients' output tok/s is decode's; beside it the rate while all of them were decoding, where the scheduler's admission left such a window, else n/a), and the server's RSS once loaded (after the engine collects the loader's float32 copy and trims the C heap).`,
    '',
    '| mode | flags | batch-1 ms/token | batch-1 vs f32 | prefill tok/s | vs f32 | ' + `${q.streams}× adapters output tok/s | vs f32 | while all ${q.streams} decode | RSS MB | vs f32 |`,
    '|---|---|---|---|---|---|---|---|---|---|---|',
    ...q.rows.map((r) => `| ${r.mode} | \`${r.flags || '(none)'}\` | ${r.b1_step_ms.toFixed(1)} | ${ratio(r, 'b1', r.b1_tok_s, f32.b1_tok_s)} | ${r.prefill_tok_s.toFixed(0)} | ${ratio(r, 'prefill', r.prefill_tok_s, f32.prefill_tok_s)} | ${r.b32_out_tok_s.toFixed(1)} (${r.b32_ok}) | ${ratio(r, 'out', r.b32_out_tok_s, f32.b32_out_tok_s)} | ${Number.isFinite(r.b32_decode_tok_s) ? r.b32_decode_tok_s.toFixed(1) : 'n/a'} | ${r.rss_mb.toFixed(0)} | ${(r.rss_mb / f32.rss_mb).toFixed(2)}× |`),
    '',
    '| target | measured | bound | met |',
    '|---|---|---|---|',
    ...checks.map((c) => `| ${c.claim} | ${checkFigure(c)} | ${checkTarget(c)} | ${c.met ? 'yes' : '**no**'} |`),
  ];
  if (q.probe) {
    lines.push('', 'The kernels alone (bench/quant-probe.ts: one projection, W as an initializer, 2 threads, median ms of 20 runs; block 32, symmetric):', '',
      '| K→N | M | float32 MatMul | 4-bit, acc 0 | 4-bit, acc 4 | 8-bit, acc 0 | 8-bit, acc 4 |', '|---|---|---|---|---|---|---|',
      ...q.probe.map((r) => `| ${r.shape} | ${r.M} | ${r.f32.toFixed(3)} | ${r.q4_acc0.toFixed(3)} | ${r.q4_acc4.toFixed(3)} | ${r.q8_acc0.toFixed(3)} | ${r.q8_acc4.toFixed(3)} |`));
  }
  writeBlock(here('../docs/quantization.md'), 'quant', lines.join('\n'), before('## '));
  console.log('docs/quantization.md: quant block written');
}
