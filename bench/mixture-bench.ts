// npm run bench -- --only mixture [--quick]
//
// Issue 14's benchmark, through the real server over HTTP on the synthetic 110M model: 32 concurrent
// streams where every row is a 2-adapter mixture of rank-16 adapters ("aI*0.6+aJ*0.4", each stream
// its own pair, so 32 distinct blends of rank 32 share the batch), against 32 streams on single
// rank-16 adapters (32 distinct), the same prompts and lengths, in this one run. Target: the
// mixtures' output throughput ≥ 0.85× the single adapters'. Saved in bench/results/latest.json;
// `npm run bench:report` writes docs/benchmarks.md's block from it (mixture-report.ts).
import { startServer } from '../load-tests/harness.ts';
import { printTable } from './stats.ts';
import { runServing, benchModel110m, tableRow, uploadSyntheticAdapter, warmUp } from './serving-bench.ts';
import { check, checkFigure, checkTarget } from './checks.ts';

export async function mixtureBench(o: { quick: boolean }): Promise<Record<string, unknown>> {
  const { dir, modelName, cfg, special } = benchModel110m();
  const streams = 32;
  const inputLen = o.quick ? 128 : 512;
  const outputLen = o.quick ? 32 : 128;
  const server = await startServer(dir, ['--model-name', modelName, '--max-queue', '512']);
  try {
    console.log(`\nmixture bench (${inputLen} → ${outputLen}, ${streams} streams): uploading ${streams} rank-16 adapters …`);
    const names = Array.from({ length: streams }, (_, i) => `a${i}`);
    for (const [i, name] of names.entries()) await uploadSyntheticAdapter(server.url, cfg, name, 16, 900 + i);
    const mixtures = names.map((n, i) => `${n}*0.6+${names[(i + 1) % streams]}*0.4`);
    // logprobs on: every token is then a chunk (this synthetic model often samples tokens without text)
    const base = { url: server.url, model: modelName, requestRate: Infinity, maxConcurrency: null, vocab: cfg.vocabSize, specialIds: special, logprobs: true, timeoutMs: 900_000 };
    await warmUp(server.url, [modelName, ...names.slice(0, 4), ...mixtures.slice(0, 4)], cfg.vocabSize, special);
    // single first, then mixtures, then single again: the median of the two single runs is the baseline
    const single1 = (await runServing({ ...base, inputLen, outputLen, numPrompts: streams, adapters: names, popularity: 'round-robin', seed: 31, label: `${streams}× single rank-16` })).metrics;
    const mixed = (await runServing({ ...base, inputLen, outputLen, numPrompts: streams, adapters: mixtures, popularity: 'round-robin', seed: 31, label: `${streams}× 2-adapter mixtures` })).metrics;
    const single2 = (await runServing({ ...base, inputLen, outputLen, numPrompts: streams, adapters: names, popularity: 'round-robin', seed: 31, label: `${streams}× single rank-16 (again)` })).metrics;
    printTable(`mixtures vs single adapters, ${modelName} (${inputLen} → ${outputLen}, ${streams} streams at once)`, [single1, mixed, single2].map((m) => tableRow(m)));
    const singleTokS = (single1.output_throughput + single2.output_throughput) / 2;
    const ratio = mixed.output_throughput / singleTokS;
    const checks = [check('mixture_32', `${streams} streams of 2-adapter rank-16 mixtures: output tok/s ≥ 0.85× ${streams} streams on single rank-16 adapters`,
      ratio, '>=', 0.85, '×', `${mixed.output_throughput.toFixed(1)} vs ${singleTokS.toFixed(1)} tok/s (single runs: ${single1.output_throughput.toFixed(1)}, ${single2.output_throughput.toFixed(1)})`)];
    printTable('mixture target', checks.map((c) => ({ check: c.id, measured: checkFigure(c), target: checkTarget(c), met: c.met ? 'yes' : 'NO', detail: c.detail })));
    return { model: modelName, quick: o.quick, streams, inputLen, outputLen, single: [single1, single2], mixture: mixed, ratio, checks };
  } finally {
    await server.stop();
  }
}
