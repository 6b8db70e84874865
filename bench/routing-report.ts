// Issue 14's figures in the docs, so that none is typed by hand (run by `npm run bench:report`):
//   docs/routing.md      block `routing`, from docs/figures/routing.json (`npm run make-routing-set`)
//   docs/benchmarks.md   block `mixture`, from the latest `npm run bench -- --only mixture`
//                        (bench/results/latest.json when that run has it, else docs/figures/mixture.json,
//                        where the run's JSON is kept)
import { copyFileSync, existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { before, writeBlock } from './markers.ts';
import type { RoutingFigures } from '../scripts/make-routing-set.ts';
import { DEFAULT_CONFIG } from '../src/server/config.ts';

const here = (p: string): string => fileURLToPath(new URL(p, import.meta.url));
const ROUTING = here('../docs/figures/routing.json');
const LATEST = here('./results/latest.json');
const KEPT = here('../docs/figures/mixture.json');
const f = (x: number, d = 3): string => x.toFixed(d);

if (existsSync(ROUTING)) {
  const r = JSON.parse(readFileSync(ROUTING, 'utf8')) as RoutingFigures;
  const rows = Object.entries(r.perStyle).map(([style, acc]) => `| \`${style}\` | ${f(acc)} |`);
  writeBlock(here('../docs/routing.md'), 'routing', [
    `Written by \`npm run bench:report\` from docs/figures/routing.json, which \`npm run make-routing-set\` measures: the committed examples (${r.examplesPerAdapter} per demo adapter) and ` +
      `held-out prompts (${r.evalPerStyle} per style, plus ${r.evalPerStyle} plain ones) embedded by the engine, routed by src/adapters/semantic-router.ts.`,
    '',
    `**Accuracy over the styled prompts: ${f(r.accuracy)}** (routed to their own adapter, the threshold aside).`,
    '',
    '| adapter | held-out prompts routed to it |',
    '|---|---|',
    ...rows,
    '',
    `Best scores: styled prompts min ${f(r.styledScores.min)}, median ${f(r.styledScores.median)}; plain (base) prompts median ${f(r.plainScores.median)}, max ${f(r.plainScores.max)}. ` +
      `Plain stories look like the styled ones but for a few words, so no threshold separates them well: the best one on this set (${f(r.suggestedThreshold)}) routes ${f(r.accuracyAtThreshold)} of all prompts ` +
      `(styled and plain) right. The default \`--route-threshold\` (${DEFAULT_CONFIG.routeThreshold}) is ${DEFAULT_CONFIG.routeThreshold < r.styledScores.min ? 'under the styled minimum, so no styled prompt here goes to base; it sends only prompts unlike every adapter there' : 'above the styled minimum: some styled prompts here go to base'}.`,
  ].join('\n'), before('## '));
  console.log('docs/routing.md: routing block written');
}

interface Run { date: string; cores: number; cpus: string; node: string; mixture?: { model: string; quick: boolean; streams: number; inputLen: number; outputLen: number; ratio: number; single: { output_throughput: number; median_tpot_ms: number; median_ttft_ms: number }[]; mixture: { output_throughput: number; median_tpot_ms: number; median_ttft_ms: number } } }
const read = (file: string): Run => JSON.parse(readFileSync(file, 'utf8')) as Run;
const src = existsSync(LATEST) && read(LATEST).mixture ? LATEST : existsSync(KEPT) ? KEPT : null;
if (!src) console.log('no mixture figures yet: run `npm run bench -- --only mixture`');
else {
  const run = read(src);
  const m = run.mixture!;
  if (src === LATEST) copyFileSync(LATEST, KEPT);
  const row = (label: string, x: { output_throughput: number; median_tpot_ms: number; median_ttft_ms: number }) => `| ${label} | ${f(x.output_throughput, 1)} | ${f(x.median_tpot_ms, 1)} | ${f(x.median_ttft_ms, 0)} |`;
  writeBlock(here('../docs/benchmarks.md'), 'mixture', [
    `Figures of ${run.date.slice(0, 10)} (${m.model}, ${run.cores}-core ${run.cpus}, Node ${run.node}; \`npm run bench -- --only mixture${m.quick ? ' --quick' : ''}\`, written by \`npm run bench:report\`; JSON kept in docs/figures/mixture.json). ` +
      `${m.streams} streams at once over HTTP, ${m.inputLen} → ${m.outputLen} tokens each: every row a 2-adapter mixture of rank-16 adapters (32 distinct blends, rank 32 each), against every row on its own single rank-16 adapter (run before and after the mixtures).`,
    '',
    '| case | output tok/s | TPOT median ms | TTFT median ms |',
    '|---|---|---|---|',
    row('single rank-16 adapters (first run)', m.single[0]),
    row('2-adapter mixtures', m.mixture),
    row('single rank-16 adapters (second run)', m.single[1]),
    '',
    `**Mixtures / single: ${f(m.ratio, 2)}×** (target ≥ 0.85×; single = the mean of its two runs).`,
  ].join('\n'), (text, block) => `${text.trimEnd()}\n\n## Per-request mixtures (\`npm run bench -- --only mixture\`)\n\n${block}\n`);
  console.log('docs/benchmarks.md: mixture block written');
}
