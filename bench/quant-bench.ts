// npm run bench -- --only quant [--quick]
//
// Issue 18's speed figures, through the real server over HTTP on the synthetic 110M model, every
// ratio within this one run: for F32, int8, int4 and int4 with the LM head quantized too
// (--quantize-lm-head), served batch-1 decode (median inter-token gap of one stream, 16-token
// prompt), prefill (tokens / TTFT of one 512-token prompt), batch-32 decode over 32 distinct rank-16
// adapters (32 streams at once, 16 → 192: 512 prompt tokens in all against 6144 generated, so the
// clients' output tok/s is decode's; beside it the rate while all 32 were decoding, when the
// scheduler's admission left such a window: serving-bench.ts allRunningDecodeRate), and the server's
// RSS once loaded (process_resident_memory_bytes).
// The four servers run side by side, idle but for the one measured, and the measurements go round
// them in turn, each figure the median of its rounds: this VM's speed drifts by a third over minutes,
// and one server after another would fold that drift into the ratios.
// Targets (issue 18): batch-1 int8 ≥ 1.6× and int4 ≥ 2.2× F32; batch-32 decode ≥ 1.3× F32; prefill at
// int8 ≥ 0.9× F32. Saved in bench/results/latest.json; docs/quantization.md's block comes from it
// (bench/quant-report.ts).
import { startServer } from '../load-tests/harness.ts';
import type { Server } from '../load-tests/harness.ts';
import { printTable } from './stats.ts';
import { allRunningDecodeRate, randomPrompts, runServing, benchModel110m, streamRequest, uploadSyntheticAdapter, warmUp } from './serving-bench.ts';
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

export interface QuantRow { mode: string; flags: string; b1_step_ms: number; b1_tok_s: number; prefill_tok_s: number; b32_decode_tok_s: number; b32_out_tok_s: number; b32_ok: string; rss_mb: number }

const SHORT_TURNS = 3; // batch-1 and prefill samples per server per round

export interface ModeSamples { b1: number[]; prefill: number[]; decode: number[]; out: number[]; ok: string[] }
export type QuantSamples = Record<string, ModeSamples>;

// A mode against F32 as the median of paired ratios: sample k of each was taken in the same turn
// round the servers (seconds apart), so the VM's drift over minutes cancels within a pair.
// `faster`: larger is better (tok/s); else a time (ms a token), inverted.
export function pairedRatio(mode: number[], f32: number[], faster: boolean): number {
  return median(mode.map((v, k) => (faster ? v / f32[k] : f32[k] / v)));
}

// Issue 18's targets from the saved samples (the report recomputes them the same way).
export function quantChecks(s: QuantSamples, streams: number): Check[] {
  const f = s.f32;
  const r = (mode: string, key: 'b1' | 'prefill' | 'out'): number => pairedRatio(s[mode][key], f[key], key !== 'b1');
  const ms = (mode: string): string => median(s[mode].b1).toFixed(1);
  const tps = (mode: string, key: 'prefill' | 'out'): string => median(s[mode][key]).toFixed(key === 'out' ? 1 : 0);
  const pairs = (key: 'b1' | 'out'): string => `median of ${f[key].length} paired ratios`;
  return [
    check('quant_b1_int8', 'served batch-1 decode at int8 ≥ 1.6× F32', r('int8', 'b1'), '>=', 1.6, '×', `${ms('int8')} vs ${ms('f32')} ms a token (${pairs('b1')})`),
    check('quant_b1_int4', 'served batch-1 decode at int4 ≥ 2.2× F32', r('int4', 'b1'), '>=', 2.2, '×', `${ms('int4')} vs ${ms('f32')} ms a token (int4 with the LM head: ${r('int4+head', 'b1').toFixed(2)}×)`),
    check('quant_b32', `batch-${streams} decode over ${streams} distinct rank-16 adapters at int4 ≥ 1.3× F32`, r('int4', 'out'), '>=', 1.3, '×', `${tps('int4', 'out')} vs ${tps('f32', 'out')} output tok/s, 16 → 192, ${pairs('out')} (int8: ${r('int8', 'out').toFixed(2)}×, int4 with the LM head: ${r('int4+head', 'out').toFixed(2)}×)`),
    check('quant_prefill_int8', 'prefill at int8 ≥ 0.9× F32', r('int8', 'prefill'), '>=', 0.9, '×', `${tps('int8', 'prefill')} vs ${tps('f32', 'prefill')} tok/s`),
  ];
}

// The median of the finite samples (a batch-32 round whose window was empty gives NaN), NaN if none.
export const median = (xs: number[]): number => {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

export async function quantBench(o: { quick: boolean }): Promise<Record<string, unknown>> {
  const { dir, modelName, cfg, special } = benchModel110m();
  const streams = o.quick ? 8 : 32;
  const rounds = o.quick ? 1 : 3;
  const probe = await quantProbe();
  printTable('MatMulNBits vs float32 MatMul, one projection (median ms, 2 threads; block 32, symmetric)', probe.map((r) => ({ ...r })));
  const names = Array.from({ length: streams }, (_, i) => `a${i}`);
  const servers: Server[] = [];
  const rss: number[] = [];
  const m = QUANT_MODES.map(() => ({ b1: [] as number[], prefill: [] as number[], decode: [] as number[], out: [] as number[], ok: [] as string[] }));
  try {
    for (const mode of QUANT_MODES) {
      const server = await startServer(dir, ['--model-name', modelName, '--max-queue', '512', ...mode.flags]);
      servers.push(server);
      // the engine collects the loader's float32 weights before it reports ready (collect-garbage.ts)
      rss.push(Number(/^loraserve_process_resident_memory_bytes (\S+)/m.exec(await (await fetch(`${server.url}/metrics`)).text())?.[1] ?? NaN) / 1e6);
      for (const [i, name] of names.entries()) await uploadSyntheticAdapter(server.url, cfg, name, 16, 1300 + i);
      await warmUp(server.url, [modelName, ...names.slice(0, 4)], cfg.vocabSize, special);
      console.log(`quant bench: ${mode.name} (${mode.flags.join(' ') || 'float32'}) up, RSS ${rss.at(-1)!.toFixed(0)} MB`);
    }
    for (let round = 0; round < rounds; round++) {
      // batch-1 decode and prefill: short, so several turns round the servers each round
      for (let turn = 0; turn < SHORT_TURNS; turn++) {
        for (const [i, mode] of QUANT_MODES.entries()) {
          const url = servers[i].url;
          const seed = 40 + round * SHORT_TURNS + turn;
          // batch-1 decode: the median gap between one stream's tokens
          const [short] = randomPrompts(1, 16, cfg.vocabSize, special, seed);
          const r1 = await streamRequest(url, { model: modelName, prompt: short, max_tokens: o.quick ? 24 : 48, temperature: 0, ignore_eos: true, stream: true, logprobs: 0 }, { timeoutMs: 300_000 });
          if (!r1.ok) throw new Error(`${mode.name} batch-1: ${r1.status} ${r1.error}`);
          m[i].b1.push(median(r1.itlMs));
          // prefill: one 512-token prompt, tokens over TTFT
          const [long] = randomPrompts(1, 512, cfg.vocabSize, special, 100 + seed);
          const rp = await streamRequest(url, { model: modelName, prompt: long, max_tokens: 1, temperature: 0, ignore_eos: true, stream: true, logprobs: 0 }, { timeoutMs: 300_000 });
          if (!rp.ok) throw new Error(`${mode.name} prefill: ${rp.status} ${rp.error}`);
          m[i].prefill.push(rp.promptTokens / (rp.ttftMs / 1000));
        }
      }
      for (const [i, mode] of QUANT_MODES.entries()) {
        // batch-32 over distinct rank-16 adapters
        const { metrics, requests } = await runServing({ url: servers[i].url, model: modelName, adapters: names, popularity: 'round-robin', inputLen: 16, outputLen: o.quick ? 48 : 192, numPrompts: streams, requestRate: Infinity, maxConcurrency: null, seed: 77 + round, vocab: cfg.vocabSize, specialIds: special, logprobs: true, timeoutMs: 900_000, label: `${mode.name} ${streams}× distinct adapters` });
        const all = allRunningDecodeRate(requests);
        m[i].decode.push(all.tokS);
        m[i].out.push(metrics.output_throughput);
        m[i].ok.push(`${metrics.successful}/${metrics.num_prompts}`);
        console.log(`  round ${round + 1}/${rounds} ${mode.name}: batch-1 ${m[i].b1.slice(-SHORT_TURNS).map((x) => x.toFixed(1)).join(' ')} ms a token, prefill ${m[i].prefill.slice(-SHORT_TURNS).map((x) => x.toFixed(0)).join(' ')} tok/s, ${streams}× adapters: decode ${m[i].decode.at(-1)!.toFixed(1)} tok/s with all ${streams} running (${all.windowS.toFixed(1)} s), ${metrics.output_throughput.toFixed(1)} out tok/s overall`);
      }
    }
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
  }
  const samples: QuantSamples = Object.fromEntries(QUANT_MODES.map((mode, i) => [mode.name, m[i]]));
  const rows: QuantRow[] = QUANT_MODES.map((mode, i) => {
    const step = median(m[i].b1);
    return { mode: mode.name, flags: mode.flags.join(' '), b1_step_ms: step, b1_tok_s: 1000 / step, prefill_tok_s: median(m[i].prefill), b32_decode_tok_s: median(m[i].decode), b32_out_tok_s: median(m[i].out), b32_ok: m[i].ok.join(', '), rss_mb: rss[i] };
  });
  const checks = quantChecks(samples, streams);
  printTable('quantized W0, llama-110m (through the server)', rows.map((r) => ({ ...r })));
  printTable('quantization targets', checks.map((c) => ({ check: c.id, measured: checkFigure(c), target: checkTarget(c), met: c.met ? 'yes' : 'NO', detail: c.detail })));
  return { model: modelName, quick: o.quick, streams, rounds, probe, rows, checks, samples };
}
