// The memory benchmark's figures in docs/benchmarks.md (run by `npm run bench:report`): block
// `memory`, from the latest `npm run bench -- --only memory` (bench/results/latest.json when that
// run has it), else the copy kept in docs/figures/memory.json (to re-render); the run's JSON is
// kept there.
import { fileURLToPath } from 'node:url';
import { writeBlock } from './markers.ts';
import { figuresSource } from './figures-source.ts';

const here = (p: string): string => fileURLToPath(new URL(p, import.meta.url));
const DOCS = here('../docs/benchmarks.md');

interface Row { adapters: number; rss_mb: number; rss_over_model_mb: number; host_cache_mb: number; host_cache_entries: number }
interface Run { date: string; cores: number; cpus: string; node: string; quick?: boolean; memory?: { rssBeforeModelMb: number; rssAfterModelMb: number; weightMb: number; adapterFileBytes: number; rows: Row[] } }

const figures = figuresSource<Run>('memory', 'memory');

if (!figures) {
  console.log('no memory figures yet: run `npm run bench -- --only memory`');
} else {
  const { run, file: src } = figures;
  const m = run.memory!;
  const mb = (v: number): string => v.toFixed(0);
  const body = [
    `Figures of ${run.date.slice(0, 10)} (${run.cores}-core ${run.cpus}, Node ${run.node}; \`npm run bench -- --only memory${run.quick ? ' --quick' : ''}\`, written by \`npm run bench:report\` from docs/figures/memory.json). ` +
      `Process RSS with the engine in the benchmark's process (110M model, float32, context 512, \`--host-cache-mb 256\`), after a garbage collection and the C heap's trim (release-memory.ts): ` +
      `${mb(m.rssBeforeModelMb)} MB before the model, ${mb(m.rssAfterModelMb)} MB with it loaded (weights ${mb(m.weightMb)} MiB, resident once, in the session). ` +
      `Then small adapters of ${(m.adapterFileBytes / 1024 / 1024).toFixed(2)} MB (rank 8 on q_proj and v_proj) registered; the host cache holds what fits in 256 MB, the rest is read back from the store on demand.`,
    '',
    '| adapters registered | RSS MB | over the model MB | host cache MB | adapters in the host cache |',
    '|---|---|---|---|---|',
    ...m.rows.map((r) => `| ${r.adapters} | ${mb(r.rss_mb)} | ${r.rss_over_model_mb.toFixed(1)} | ${r.host_cache_mb.toFixed(0)} | ${r.host_cache_entries} |`),
  ];
  writeBlock(DOCS, 'memory', body.join('\n'), (text, block) => `${text.trimEnd()}\n\n${block}\n`);
  figures.keep();
  console.log(`docs/benchmarks.md: memory figures of ${run.date}${run.quick ? ' (quick run)' : ''} from ${src}`);
}
