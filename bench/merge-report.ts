// The merge benchmark's figures in docs/benchmarks.md (run by `npm run bench:report`, after
// bench/train-report.ts), so that no number there is typed by hand: block `merge`, from the latest
// `npm run bench -- --only merge` (bench/results/latest.json when that run has it), else the copy
// kept in docs/figures/merge.json (to re-render); the run's JSON is kept there.
import { fileURLToPath } from 'node:url';
import { writeBlock } from './markers.ts';
import { figuresSource } from './figures-source.ts';
import type { MergeBench } from './merge-bench.ts';

const here = (p: string): string => fileURLToPath(new URL(p, import.meta.url));
const DOCS = here('../docs/benchmarks.md');

interface Run { date: string; cores: number; cpus: string; node: string; merge?: MergeBench & { loadavg_1min?: { start: number; end: number } } }

const figures = figuresSource<Run>('merge', 'merge');

if (!figures) {
  console.log('no merge figures yet: run `npm run bench -- --only merge`');
} else {
  const { run, file: src } = figures;
  const m = run.merge!;
  const day = run.date.slice(0, 10);
  const machine = `${run.cores}-core ${run.cpus}, Node ${run.node}`;
  const s = (ms: number): string => (ms >= 10_000 ? (ms / 1000).toFixed(0) : ms >= 1000 ? (ms / 1000).toFixed(1) : (ms / 1000).toFixed(2));
  const msf = (ms: number): string => (ms >= 100 ? ms.toFixed(0) : ms.toFixed(1));
  const slow = m.types.filter((t) => t.extrapolated);
  const body = [
    `Figures of ${day} (${m.model}, ${machine}; \`npm run bench -- --only merge${m.quick ? ' --quick' : ''}\`, written by \`npm run bench:report\` from docs/figures/merge.json). ` +
      `The merge math alone (\`mergeAdapters\` of src/merge, one thread; the HTTP endpoint and \`loraserve merge\` add only reading and writing files): ` +
      `${m.adapters} rank-${m.rank} adapters on all seven targets of all ${m.layers} layers (${m.targets} targets), weights ${m.weights.join(' / ')}, density ${m.density}, seed ${m.seed}, ` +
      `majority sign "total", svd_rank ${m.svd_rank} for the \`*_svd\` and \`*_delta\` types (the delta types factored back to rank ${m.svd_rank}).` +
      `${m.quick ? ' **A `--quick` run: one run per type, not the median of three.**' : ''}` +
      `${m.loadavg_1min ? ` The machine's 1-minute load average was ${m.loadavg_1min.start.toFixed(1)} when the run started and ${m.loadavg_1min.end.toFixed(1)} when it ended${Math.max(m.loadavg_1min.start, m.loadavg_1min.end) > 1.5 ? ` (the benchmark's own thread counts 1): other work shared the ${run.cores} cores, so these times are upper bounds` : ''}.` : ''}`,
    '',
    `Types marked * prune each adapter's full ΔW and then take a dense SVD of the merged ΔW for every target (seconds per target): they are measured once on ${m.subset}, ` +
      `and their whole-model time is **extrapolated** as that × ${m.layers} (every layer has the same shapes). The others are measured on the whole model` +
      `${m.quick ? '' : ' (median of three runs)'}: \`cat\` and the A/B-space family never form ΔW, \`svd\` and \`linear_delta\` factor the stacked thin factors without it.`,
    '',
    '| combination_type | measured on | ms measured | ms / target | whole model, s | result r | max relative error |',
    '|---|---|---|---|---|---|---|',
    ...m.types.map((t) => `| \`${t.combination_type}\`${t.extrapolated ? ' *' : ''} | ${t.extrapolated ? `${t.targets_measured} targets (one layer)` : `${t.targets_measured} targets`} | ` +
      `${msf(t.ms)} | ${msf(t.per_target_ms)} | ${s(t.whole_model_ms)}${t.extrapolated ? ' (extrapolated)' : ''} | ${t.result_rank} | ${t.max_rel_error === null ? '–' : t.max_rel_error.toExponential(2)} |`),
    '',
    `"max relative error" is the largest ‖ΔW − B'A'‖_F / ‖ΔW‖_F over the targets measured, where an SVD truncation made the result (rank ${m.svd_rank} from ${m.adapters} × ${m.rank}: the benchmark's adapters are independent random ones, so their sum has a flat spectrum and rank ${m.svd_rank} keeps little of it; the figure describes these inputs, not merging in general).` +
      (slow.length ? ` The starred types cost ${msf(Math.min(...slow.map((t) => t.per_target_ms)))}–${msf(Math.max(...slow.map((t) => t.per_target_ms)))} ms a target: three full ΔW_i formed and pruned, then a dense float64 SVD of the merged ΔW.` : ''),
  ];
  writeBlock(DOCS, 'merge', body.join('\n'), (text, block) => `${text.trimEnd()}\n\n## Merging adapters (\`--only merge\`)\n\n${block}\n`);
  figures.keep();
  console.log(`docs/benchmarks.md: merge figures of ${run.date}${m.quick ? ' (quick run)' : ''} from ${src}`);
}
