// node --import tsx load-tests/attack-report.ts [results.json]
// Writes the attack scenario's figures (load-tests/attack.ts) and, when it has run, the memory
// churn figures (load-tests/memory-churn.ts) into docs/benchmarks.md, between the markers
// <!-- attack:begin --> and <!-- attack:end --> (bench/markers.ts), and keeps the JSON they came from in
// docs/figures/, so the numbers in the docs are never typed by hand.
import { existsSync, readFileSync, copyFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { writeBlock } from '../bench/markers.ts';

const src = process.argv[2] ?? fileURLToPath(new URL('./results/attack.json', import.meta.url));
const docs = fileURLToPath(new URL('../docs/benchmarks.md', import.meta.url));
const kept = fileURLToPath(new URL('../docs/figures/attack.json', import.meta.url));
const r = JSON.parse(readFileSync(src, 'utf8')) as {
  date: string; model: string; peakRssMb: number; peakRssBoundMb: number; eventLoopLagP99MaxMs: number;
  rows: Record<string, string | number>[]; failures: string[]; details?: { phase: string; notes?: string }[];
};
const n = (v: string | number, digits = 0): string => (typeof v === 'number' ? v.toFixed(digits) : v);
const cols: [string, string, number?][] = [
  ['phase', 'phase'], ['attack_statuses', 'attack requests (status×count)'], ['5xx', '5xx'], ['hangs', 'hangs'],
  ['victim_ttft_max_ms', 'victims: max TTFT ms'], ['victim_gap_max_ms', 'victims: max gap ms'],
  ['server_itl_over_100ms', 'server: ITL > 100 ms'], ['loop_lag_p99_ms', 'event-loop lag p99 ms', 1], ['rss_peak_mb', 'peak RSS MB'],
];
const lines = [
  `Figures of ${r.date.slice(0, 10)} (${r.model}; \`npm run load-test -- --only attack\`, then \`node --import tsx load-tests/attack-report.ts\`; JSON kept in docs/figures/attack.json).`,
  '',
  `| ${cols.map((c) => c[1]).join(' | ')} |`,
  `|${cols.map(() => '---').join('|')}|`,
  ...r.rows.map((row) => `| ${cols.map(([k, , d]) => n(row[k], d ?? 0)).join(' | ')} |`),
  '',
  `Across phases: event-loop lag p99 at most ${r.eventLoopLagP99MaxMs.toFixed(1)} ms, peak RSS ${r.peakRssMb.toFixed(0)} MB (bound ${r.peakRssBoundMb} MB), ` +
    `${r.failures.length ? `${r.failures.length} failure(s): ${r.failures.map((f) => f.slice(0, 160)).join('; ')}` : 'no failure'}.`,
];
const churnSrc = fileURLToPath(new URL('./results/memory-churn.json', import.meta.url));
const churnKept = fileURLToPath(new URL('../docs/figures/memory-churn.json', import.meta.url));
const churnFile = existsSync(churnSrc) ? churnSrc : existsSync(churnKept) ? churnKept : null;
if (churnFile) {
  const c = JSON.parse(readFileSync(churnFile, 'utf8')) as { date: string; model: string; results: Record<string, number | string>[] };
  lines.push('', `Memory under adapter reload churn (${c.date.slice(0, 10)}, ${String(c.model).split('/').at(-1)}, \`--host-cache-mb 1\`, rank-64 adapter on all seven targets; ` +
    '`node --import tsx load-tests/memory-churn.ts --seconds 60`): the server\'s RSS once warm, its peak, and the stated bound.', '',
  '| scenario | seconds | adapter MB | warm RSS MB | peak RSS MB | bound MB | reloads | requests | replace/delete ops | errors |', '|---|---|---|---|---|---|---|---|---|---|',
  ...c.results.map((r) => `| ${r.scenario} | ${n(r.seconds)} | ${n(r.adapter_mb, 1)} | ${n(r.warm_rss_mb)} | ${n(r.peak_rss_mb)} | ${n(r.bound_mb)} | ${n(r.reloads)} | ${n(r.requests)} | ${n(r.ops)} | ${n(r.errors)} |`));
  if (churnFile !== churnKept) copyFileSync(churnFile, churnKept);
}
writeBlock(docs, 'attack', lines.join('\n'), (md, block) => `${md.trimEnd()}\n\n## Attack scenario (\`npm run load-test -- --only attack\`)\n\n${block}\n`);
if (src !== kept) copyFileSync(src, kept);
console.log(`docs/benchmarks.md: attack figures of ${r.date}`);
