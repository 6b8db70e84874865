// The spinning benchmark's figures in docs/benchmarks.md (run by `npm run bench:report`): block
// `spinning`, from the latest `npm run bench -- --only spinning` (bench/results/latest.json when
// that run has it), else the copy kept in docs/figures/spinning.json (to re-render); the run's JSON
// is kept there.
import { fileURLToPath } from 'node:url';
import { writeBlock } from './markers.ts';
import { figuresSource } from './figures-source.ts';

const here = (p: string): string => fileURLToPath(new URL(p, import.meta.url));
const DOCS = here('../docs/benchmarks.md');

interface Step { weights: string; case: string; off_ms: number; during_run_ms: number; always_ms: number; speedup_during_run: number }
interface Idle { weights: string; off_cpu_ms: number; during_run_cpu_ms: number; always_cpu_ms: number }
interface Run { date: string; cores: number; cpus: string; node: string; quick?: boolean; spinning?: { rounds: number; steps_per_round: number; steps: Step[]; idle_cpu: Idle[] } }

const figures = figuresSource<Run>('spinning', 'spinning');

if (!figures) {
  console.log('no spinning figures yet: run `npm run bench -- --only spinning`');
} else {
  const { run, file: src } = figures;
  const m = run.spinning!;
  const ms = (v: number): string => v.toFixed(2);
  const cases: Record<string, string> = { b1_ctx16: 'batch 1, context 16', b1_ctx512: 'batch 1, context 512 (lane 640)', b16_ctx16: 'batch 16, context 16' };
  const body = [
    `Figures of ${run.date.slice(0, 10)} (${run.cores}-core ${run.cpus}, Node ${run.node}; \`npm run bench -- --only spinning${run.quick ? ' --quick' : ''}\`, written by \`npm run bench:report\` from docs/figures/spinning.json). ` +
      `The 110M model's served graph (no adapter), one session per setting of the intra-op pool's spinning (session.ts \`Spinning\`), ` +
      `decode steps timed in ${m.rounds} rounds of ${m.steps_per_round} per setting, in turn; median ms. off: threads sleep between parallel ops; ` +
      `during-run (what loraserve runs): they spin while a run lasts and stop when it returns; always: onnxruntime's default, they keep spinning after a run.`,
    '',
    '| weights | decode | off ms | during-run ms | always ms | off / during-run |',
    '|---|---|---|---|---|---|',
    ...m.steps.map((r) => `| ${r.weights} | ${cases[r.case] ?? r.case} | ${ms(r.off_ms)} | ${ms(r.during_run_ms)} | ${ms(r.always_ms)} | ${r.speedup_during_run.toFixed(2)}× |`),
    '',
    'Idle cost: the process\'s CPU time over 10 rounds of 3 batch-1 decode steps and a 100 ms sleep (best of the passes). What `always` spends beyond the others is a core burning between steps.',
    '',
    '| weights | off CPU ms | during-run CPU ms | always CPU ms |',
    '|---|---|---|---|',
    ...m.idle_cpu.map((r) => `| ${r.weights} | ${r.off_cpu_ms.toFixed(0)} | ${r.during_run_cpu_ms.toFixed(0)} | ${r.always_cpu_ms.toFixed(0)} |`),
  ];
  writeBlock(DOCS, 'spinning', body.join('\n'), (text, block) => `${text.trimEnd()}\n\n## Intra-op spinning (\`--only spinning\`)\n\n${block}\n`);
  figures.keep();
  console.log(`docs/benchmarks.md: spinning figures of ${run.date}${run.quick ? ' (quick run)' : ''} from ${src}`);
}
