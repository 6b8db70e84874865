// The sampling benchmark's figures in docs/benchmarks.md (run by `npm run bench:report`): block
// `sampling`, from the latest `npm run bench -- --only sampling` (bench/results/latest.json when
// that run has it), else the copy kept in docs/figures/sampling.json (to re-render); the run's JSON
// is kept there.
import { fileURLToPath } from 'node:url';
import { writeBlock } from './markers.ts';
import { figuresSource } from './figures-source.ts';

const here = (p: string): string => fileURLToPath(new URL(p, import.meta.url));
const DOCS = here('../docs/benchmarks.md');

interface Row { vocab: number; case: string; general_path_us: number; served_path_us: number }
interface Run { date: string; cores: number; cpus: string; node: string; quick?: boolean; sampling?: { rounds: number; rows: Row[] } }

const figures = figuresSource<Run>('sampling', 'sampling');

if (!figures) {
  console.log('no sampling figures yet: run `npm run bench -- --only sampling`');
} else {
  const { run, file: src } = figures;
  const m = run.sampling!;
  const us = (v: number): string => (v >= 100 ? v.toFixed(0) : v.toFixed(1));
  const body = [
    `Figures of ${run.date.slice(0, 10)} (${run.cores}-core ${run.cpus}, Node ${run.node}; \`npm run bench -- --only sampling${run.quick ? ' --quick' : ''}\`, written by \`npm run bench:report\` from docs/figures/sampling.json). ` +
      `The engine thread's time to choose one token from a row of logits shaped like a language model's (a broad tail and 20 strong candidates), ` +
      `µs per token, median of ${m.rounds} rounds that time the two paths in turn. Served: what a sequence runs (a reused working copy of the row, then sampleToken, with the fast paths of ` +
      `src/runtime/sampling-fast-paths.ts where they apply). General: what ran before them (a fresh copy, then candidateDistribution and a sort), which draws the same tokens for the same coin; for min-p alone, a sort of the whole row, as candidateDistribution did before it kept only the tokens at or above min-p's floor. ` +
      `A logprob's log Σ exp now comes from the graph (\`logits_lse\`); its JS cost is what each logprob request paid per token before. At a batch of 32 the engine thread pays a row's figure 32 times a step.`,
    '',
    '| vocabulary | sampling | general path µs | served path µs | speed-up |',
    '|---|---|---|---|---|',
    ...m.rows.map((r) => `| ${r.vocab} | ${r.case} | ${us(r.general_path_us)} | ${r.served_path_us > 0 ? us(r.served_path_us) : '0 (from the graph)'} | ${r.served_path_us > 0 ? `${(r.general_path_us / r.served_path_us).toFixed(1)}×` : '–'} |`),
  ];
  writeBlock(DOCS, 'sampling', body.join('\n'), (text, block) => `${text.trimEnd()}\n\n## Sampling (\`--only sampling\`)\n\n${block}\n`);
  figures.keep();
  console.log(`docs/benchmarks.md: sampling figures of ${run.date}${run.quick ? ' (quick run)' : ''} from ${src}`);
}
