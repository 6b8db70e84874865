// npm run bench -- --only quant [--quick]
//
// Issue 18's speed figures, through the real server over HTTP on the synthetic 110M model, every
// ratio within this one run: for F32, int8, int4 and int4 with the LM head quantized too
// (--quantize-lm-head), served batch-1 decode (median inter-token gap of one stream, 16-token
// prompt), prefill (tokens / TTFT of one 512-token prompt, best of two), batch-32 decode over 32
// distinct rank-16 adapters (output tok/s of 32 streams at once, 128 → 32), and the server's RSS
// once loaded (process_resident_memory_bytes from /metrics). Targets (issue 18): batch-1 int8 ≥ 1.6×
// and int4 ≥ 2.2× F32; batch-32 ≥ 1.3× F32; prefill at int8 ≥ 0.9× F32. Saved in
// bench/results/latest.json; docs/quantization.md's block comes from it (bench/quant-report.ts).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseModelConfig } from '../src/runtime/model-config.ts';
import { startServer } from '../load-tests/harness.ts';
import { llama110mDir } from './bench-models.ts';
import { printTable } from './stats.ts';
import { randomPrompts, runServing, specialIdsOf, streamRequest, uploadSyntheticAdapter, warmUp } from './serving-bench.ts';
import { check, checkFigure, checkTarget } from './checks.ts';
import type { Check } from './checks.ts';
import { quantProbe } from './quant-probe.ts';

export interface QuantMode { name: string; flags: string[] }
export const QUANT_MODES: QuantMode[] = [
  { name: 'f32', flags: [] },
  { name: 'int8', flags: ['--quantize', 'int8'] },
  { name: 'int4', flags: ['--quantize', 'int4'] },
  { name: 'int4+head', flags: ['--quantize', 'int4', '--quantize-lm-head'] },
];

export interface QuantRow { mode: string; flags: string; b1_step_ms: number; b1_tok_s: number; prefill_tok_s: number; b32_out_tok_s: number; b32_ok: string; rss_mb: number }

const median = (xs: number[]): number => { const s = [...xs].sort((a, b) => a - b); return s[s.length >> 1]; };

export async function quantBench(o: { quick: boolean }): Promise<Record<string, unknown>> {
  const dir = llama110mDir();
  const modelName = 'llama-110m';
  const cfg = parseModelConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>);
  const special = specialIdsOf(dir);
  const streams = o.quick ? 8 : 32;
  const probe = await quantProbe();
  printTable('MatMulNBits vs float32 MatMul, one projection (median ms, 2 threads; block 32, symmetric)', probe.map((r) => ({ ...r })));
  const rows: QuantRow[] = [];
  for (const mode of QUANT_MODES) {
    const server = await startServer(dir, ['--model-name', modelName, '--max-queue', '512', ...mode.flags]);
    try {
      console.log(`\nquant bench: ${mode.name} (${mode.flags.join(' ') || 'float32'})`);
      const rss = Number(/^loraserve_process_resident_memory_bytes (\S+)/m.exec(await (await fetch(`${server.url}/metrics`)).text())?.[1] ?? NaN) / 1e6;
      await warmUp(server.url, [modelName], cfg.vocabSize, special);
      // batch-1 decode
      const gaps: number[] = [];
      for (let k = 0; k < 2; k++) {
        const [prompt] = randomPrompts(1, 16, cfg.vocabSize, special, 40 + k);
        const r = await streamRequest(server.url, { model: modelName, prompt, max_tokens: o.quick ? 24 : 64, temperature: 0, ignore_eos: true, stream: true, logprobs: 0 }, { timeoutMs: 300_000 });
        if (!r.ok) throw new Error(`${mode.name} batch-1: ${r.status} ${r.error}`);
        gaps.push(median(r.itlMs));
      }
      const step = Math.min(...gaps);
      // prefill
      let prefill = 0;
      for (let k = 0; k < 2; k++) {
        const [prompt] = randomPrompts(1, 512, cfg.vocabSize, special, 60 + k);
        const r = await streamRequest(server.url, { model: modelName, prompt, max_tokens: 1, temperature: 0, ignore_eos: true, stream: true, logprobs: 0 }, { timeoutMs: 300_000 });
        if (!r.ok) throw new Error(`${mode.name} prefill: ${r.status} ${r.error}`);
        prefill = Math.max(prefill, r.promptTokens / (r.ttftMs / 1000));
      }
      // batch-32 over distinct rank-16 adapters
      const names = Array.from({ length: streams }, (_, i) => `a${i}`);
      for (const [i, name] of names.entries()) await uploadSyntheticAdapter(server.url, cfg, name, 16, 1300 + i);
      await warmUp(server.url, names.slice(0, 4), cfg.vocabSize, special);
      const { metrics } = await runServing({ url: server.url, model: modelName, adapters: names, popularity: 'round-robin', inputLen: 128, outputLen: 32, numPrompts: streams, requestRate: Infinity, maxConcurrency: null, seed: 77, vocab: cfg.vocabSize, specialIds: special, logprobs: true, timeoutMs: 900_000, label: `${mode.name} ${streams}× distinct adapters` });
      rows.push({ mode: mode.name, flags: mode.flags.join(' '), b1_step_ms: step, b1_tok_s: 1000 / step, prefill_tok_s: prefill, b32_out_tok_s: metrics.output_throughput, b32_ok: `${metrics.successful}/${metrics.num_prompts}`, rss_mb: rss });
      console.log(`  ${mode.name}: batch-1 step ${step.toFixed(1)} ms, prefill ${prefill.toFixed(0)} tok/s, ${streams}× adapters ${metrics.output_throughput.toFixed(1)} out tok/s, RSS ${rss.toFixed(0)} MB`);
    } finally {
      await server.stop();
    }
  }
  const f32 = rows[0];
  const by = (name: string) => rows.find((r) => r.mode === name)!;
  const checks: Check[] = [
    check('quant_b1_int8', 'served batch-1 decode at int8 ≥ 1.6× F32', by('int8').b1_tok_s / f32.b1_tok_s, '>=', 1.6, '×', `${by('int8').b1_step_ms.toFixed(1)} vs ${f32.b1_step_ms.toFixed(1)} ms a token`),
    check('quant_b1_int4', 'served batch-1 decode at int4 ≥ 2.2× F32', by('int4').b1_tok_s / f32.b1_tok_s, '>=', 2.2, '×', `${by('int4').b1_step_ms.toFixed(1)} vs ${f32.b1_step_ms.toFixed(1)} ms a token (int4 with the LM head: ${(by('int4+head').b1_tok_s / f32.b1_tok_s).toFixed(2)}×)`),
    check('quant_b32', `batch-${streams} decode over ${streams} distinct rank-16 adapters at int4 ≥ 1.3× F32`, by('int4').b32_out_tok_s / f32.b32_out_tok_s, '>=', 1.3, '×', `${by('int4').b32_out_tok_s.toFixed(1)} vs ${f32.b32_out_tok_s.toFixed(1)} out tok/s (int8: ${(by('int8').b32_out_tok_s / f32.b32_out_tok_s).toFixed(2)}×)`),
    check('quant_prefill_int8', 'prefill at int8 ≥ 0.9× F32', by('int8').prefill_tok_s / f32.prefill_tok_s, '>=', 0.9, '×', `${by('int8').prefill_tok_s.toFixed(0)} vs ${f32.prefill_tok_s.toFixed(0)} tok/s`),
  ];
  printTable('quantized W0, llama-110m (through the server)', rows.map((r) => ({ ...r })));
  printTable('quantization targets', checks.map((c) => ({ check: c.id, measured: checkFigure(c), target: checkTarget(c), met: c.met ? 'yes' : 'NO', detail: c.detail })));
  return { model: modelName, quick: o.quick, streams, probe, rows, checks };
}
