// The KV-dtype probe's figures in docs/benchmarks.md (run by `npm run bench:report`): block `kv`,
// from the latest `npm run bench -- --only kv` (bench/results/latest.json when that run has it),
// else the copy kept in docs/figures/kv.json (to re-render); the run's JSON is kept there.
import { fileURLToPath } from 'node:url';
import { writeBlock } from './markers.ts';
import { figuresSource } from './figures-source.ts';
import type { KvProbeRow } from './kv-dtype-probe.ts';

const here = (p: string): string => fileURLToPath(new URL(p, import.meta.url));
const DOCS = here('../docs/benchmarks.md');

interface Run { date: string; cores: number; cpus: string; node: string; quick?: boolean; kv?: { rows: KvProbeRow[] } }

const figures = figuresSource<Run>('kv', 'kv');

if (!figures) {
  console.log('no KV probe figures yet: run `npm run bench -- --only kv`');
} else {
  const { run, file: src } = figures;
  const body = [
    `Figures of ${run.date.slice(0, 10)} (${run.cores}-core ${run.cpus}, Node ${run.node}; \`npm run bench -- --only kv${run.quick ? ' --quick' : ''}\`, written by \`npm run bench:report\` from docs/figures/kv.json). ` +
      'A batched decode step\'s attention ops alone (bench/kv-dtype-probe.ts), for the 110M model\'s 12 layers of 12 heads of 64, one new token a row over a past of P positions fed in place: ' +
      'over the float32 KV cache loraserve serves (keys and values [B, H, P, d], scores through FusedMatMul transB), and over an 8-bit cache it does not serve ' +
      '(int8 + 128 with a scale per row, head and position; MatMulInteger for both products). The difference column is the largest |uint8 − float32| over the outputs, beside the largest |float32| output: the 8-bit cache is lossy. Median ms.',
    '',
    '| rows | positions | float32 KV MB read | float32 ms | uint8 ms | uint8 / float32 | max difference | max output |',
    '|---|---|---|---|---|---|---|---|',
    ...run.kv!.rows.map((r) => `| ${r.rows} | ${r.positions} | ${r.kv_mb_f32.toFixed(0)} | ${r.f32_ms.toFixed(2)} | ${r.u8_ms.toFixed(2)} | ${r.u8_over_f32.toFixed(2)}× | ${r.max_abs_diff.toFixed(3)} | ${(r.max_abs_f32 ?? NaN).toFixed(2)} |`),
  ];
  writeBlock(DOCS, 'kv', body.join('\n'), (text, block) => `${text.trimEnd()}\n\n## Attention over the KV cache (\`--only kv\`)\n\n${block}\n`);
  figures.keep();
  console.log(`docs/benchmarks.md: KV probe figures of ${run.date}${run.quick ? ' (quick run)' : ''} from ${src}`);
}
