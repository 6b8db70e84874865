// node --import tsx load-tests/fine-tune-report.ts [results.json]
// Writes the fine-tuning scenario's figures (load-tests/fine-tune.ts: `npm run load-test -- --only
// finetune`) into docs/benchmarks.md and docs/fine-tuning.md between <!-- finetune:begin --> and <!-- finetune:end -->
// (bench/markers.ts), and keeps the JSON they came from in docs/figures/fine-tune.json, so the
// numbers in the docs are never typed by hand.
import { copyFileSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { writeBlock } from '../bench/markers.ts';

const src = process.argv[2] ?? fileURLToPath(new URL('./results/fine-tune.json', import.meta.url));
const docs = fileURLToPath(new URL('../docs/benchmarks.md', import.meta.url));
const kept = fileURLToPath(new URL('../docs/figures/fine-tune.json', import.meta.url));
const r = JSON.parse(readFileSync(src, 'utf8')) as {
  date: string; model: string; cores: number; cpu: string; node: string; seconds: number; concurrency: number;
  rows: Record<string, string | number>[]; training: Record<string, string | number>[]; failures: string[];
};
const n = (v: string | number | undefined, digits = 0): string => (typeof v === 'number' ? v.toFixed(digits) : (v ?? '-'));
const base = r.rows[0];
const ratio = (row: Record<string, string | number>, k: string): string => (typeof row[k] === 'number' && typeof base[k] === 'number' && (base[k] as number) > 0 ? `${((row[k] as number) / (base[k] as number)).toFixed(2)}×` : '-');
const lines = [
  `Figures of ${r.date.slice(0, 10)} (${r.model}, ${r.cores}-core ${r.cpu.trim()}, Node ${r.node}; \`npm run load-test -- --only finetune --seconds ${r.seconds}\`, then \`node --import tsx load-tests/fine-tune-report.ts\`; JSON kept in docs/figures/fine-tune.json). ` +
    `${r.concurrency} clients stream 64-token completions from one adapter for ${r.seconds} s per phase; in the job phases a fine-tuning job (rank 8, batch 8 × 128 tokens, --fine-tune-threads 1) trains throughout.`,
  '',
  '| phase | requests | errors | serving tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | ITL p50 vs no job | ITL p99 vs no job |',
  '|---|---|---|---|---|---|---|---|---|---|',
  ...r.rows.map((row) => `| ${row.scenario} | ${n(row.requests)} | ${n(row.errors)} | ${n(row.tok_s)} | ${n(row.ttft_p50_ms, 1)} | ${n(row.ttft_p99_ms, 1)} | ${n(row.itl_p50_ms, 1)} | ${n(row.itl_p99_ms, 1)} | ${ratio(row, 'itl_p50_ms')} | ${ratio(row, 'itl_p99_ms')} |`),
  '',
  '| job phase | training nice | optimizer steps during the phase | steps/s | training tok/s (mean of its steps) |',
  '|---|---|---|---|---|',
  ...r.training.map((t) => `| ${t.phase} | ${n(t.nice)} | ${n(t.steps_during_phase)} | ${n(t.steps_per_s, 1)} | ${n(t.train_tok_s_mean)} |`),
  '',
  r.failures.length ? `${r.failures.length} failure(s): ${r.failures.slice(0, 5).map((f) => f.slice(0, 160)).join('; ')}.` : 'No stream failed in any phase.',
];
writeBlock(docs, 'finetune', lines.join('\n'), (md, block) => `${md.trimEnd()}\n\n## Fine-tuning while serving (\`npm run load-test -- --only finetune\`)\n\n${block}\n`);
// the same figures in docs/fine-tuning.md ("The measured effect")
const guide = fileURLToPath(new URL('../docs/fine-tuning.md', import.meta.url));
writeBlock(guide, 'finetune', lines.join('\n'), (md, block) => `${md.trimEnd()}\n\n## The measured effect\n\n${block}\n`);
if (src !== kept) copyFileSync(src, kept);
console.log(`docs/benchmarks.md: fine-tuning figures of ${r.date}`);
