// Continuous-batching benchmark (issue: engine), through the engine worker on the synthetic 110M
// model: aggregate decode throughput with 1, 8 and 32 streams (base / one adapter / distinct
// adapters), TTFT and inter-token latency with and without long prompts arriving, and the event-loop
// lag of the main (HTTP) thread meanwhile.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { startEngine } from '../src/start-engine.ts';
import { AdapterRegistry } from '../src/adapters/registry.ts';
import { AdapterStore } from '../src/adapters/adapter-store.ts';
import { DEFAULT_SAMPLING } from '../src/runtime/sampler.ts';
import { loadModelFiles } from '../src/runtime/model-loader.ts';
import { encodeSafetensors } from '../src/runtime/safetensors.ts';
import type { GenerateRequest } from '../src/runtime/generate-request.ts';
import { buildAdapter } from '../scripts/make-test-adapters.ts';
import { llama110mDir } from './bench-models.ts';
import { percentile, printTable } from './stats.ts';

interface StreamResult { ttft: number; itl: number[] }

const LONG_PROMPT = 2040;
// monitorEventLoopDelay records the interval between its timer's runs (an idle loop reads the
// resolution itself), so the lag is what exceeds the resolution.
const LAG_RESOLUTION_MS = 1;

export async function batchingBench(opts: { quick: boolean }): Promise<Record<string, unknown>> {
  const dir = llama110mDir();
  const cfg = loadModelFiles(dir).config;
  const engine = await startEngine({ runtime: { modelDir: dir, maxContext: 2048 }, adapters: { loraMode: 'unmerged' }, scheduler: { maxRunning: 32 } });
  const registry = new AdapterRegistry(engine, cfg, 'llama-110m', 64, new AdapterStore(mkdtempSync(join(tmpdir(), 'loraserve-batch-'))));
  const nAdapters = 32;
  console.log(`\nuploading ${nAdapters} rank-16 adapters …`);
  for (let i = 0; i < nAdapters; i++) {
    const f = buildAdapter(cfg, { rank: 16, alpha: 32, seed: 500 + i });
    await registry.upload(`a${i}`, { config: new TextEncoder().encode(JSON.stringify(f.config)), weights: encodeSafetensors(f.tensors) }, { replace: false });
  }
  let decodeTokens = 0;
  let decodeMs = 0;
  engine.onStep = (s) => { if (s.kind === 'decode') { decodeTokens += s.batch; decodeMs += s.ms; } };

  const stream = async (adapter: string | null, prompt: number[], maxTokens: number): Promise<StreamResult> => {
    const ref = adapter ? registry.acquire(adapter) : null;
    const req: GenerateRequest = { promptTokens: prompt, maxTokens, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: null, adapter: ref };
    const t0 = performance.now();
    const times: number[] = [];
    for await (const ev of engine.generate(req)) if (ev.type === 'token') times.push(performance.now());
    if (ref) registry.release(ref);
    return { ttft: times[0] - t0, itl: times.slice(1).map((t, i) => t - times[i]) };
  };
  const prompt = (n: number, salt: number) => Array.from({ length: n }, (_, i) => (i * 131 + salt * 17) % cfg.vocabSize);

  // 1. throughput
  const tokens = opts.quick ? 24 : 64;
  const throughput: Record<string, string | number>[] = [];
  for (const streams of [1, 8, 32]) {
    const row: Record<string, string | number> = { streams };
    for (const kind of ['base', 'one_adapter', 'distinct_adapters'] as const) {
      decodeTokens = 0; decodeMs = 0;
      const t0 = performance.now();
      await Promise.all(Array.from({ length: streams }, (_, i) => stream(kind === 'base' ? null : kind === 'one_adapter' ? 'a0' : `a${i % nAdapters}`, prompt(16, i), tokens)));
      row[`${kind}_tok_s`] = (decodeTokens * 1000) / decodeMs;
      row[`${kind}_wall_tok_s`] = (streams * tokens * 1000) / (performance.now() - t0);
    }
    throughput.push(row);
  }
  const t32 = throughput.find((r) => r.streams === 32)!;
  printTable('aggregate decode tokens/s (decode steps only; wall includes prefill)', throughput);
  const ratio32 = (t32.distinct_adapters_tok_s as number) / (t32.base_tok_s as number);

  // 2. latency with and without 2040-token prompts arriving (prompt + 8 tokens = the 2048 context), and 3. event-loop lag meanwhile
  const latency: Record<string, string | number>[] = [];
  const lagRows: Record<string, number>[] = [];
  for (const longPrompts of [false, true]) {
    const lag = monitorEventLoopDelay({ resolution: LAG_RESOLUTION_MS });
    lag.enable();
    const n = opts.quick ? 48 : 128;
    const streams = Array.from({ length: 8 }, (_, i) => stream(`a${i}`, prompt(16, 100 + i), n));
    const longs: Promise<StreamResult>[] = [];
    if (longPrompts) {
      for (let k = 0; k < (opts.quick ? 2 : 3); k++) {
        await new Promise((r) => setTimeout(r, 400));
        longs.push(stream(k % 2 ? 'a9' : null, prompt(LONG_PROMPT, 200 + k), 8));
      }
    }
    const rs = await Promise.all(streams);
    const ls = await Promise.all(longs);
    lag.disable();
    const itl = rs.flatMap((r) => r.itl);
    latency.push({
      long_prompts: longPrompts ? 'arriving' : 'none',
      ttft_p50_ms: percentile(rs.map((r) => r.ttft), 50), ttft_p99_ms: percentile(rs.map((r) => r.ttft), 99),
      itl_p50_ms: percentile(itl, 50), itl_p99_ms: percentile(itl, 99), itl_p99_over_p50: percentile(itl, 99) / percentile(itl, 50),
      long_prompt_ttft_ms: ls.length ? percentile(ls.map((l) => l.ttft), 50) : 0,
    });
    const delay = (ns: number) => Math.max(0, ns / 1e6 - LAG_RESOLUTION_MS); // the histogram records whole timer intervals
    lagRows.push({ long_prompts: longPrompts ? 1 : 0, lag_p50_ms: delay(lag.percentile(50)), lag_p99_ms: delay(lag.percentile(99)), lag_max_ms: delay(lag.max) });
  }
  printTable(`latency of 8 adapter streams (targets: itl p99 ≤ 2× p50 while ${LONG_PROMPT}-token prompts arrive)`, latency);
  printTable('event-loop lag of the main (HTTP) thread meanwhile (target p99 ≤ 20 ms)', lagRows);
  printTable('targets', [{ metric: '32 distinct rank-16 adapters vs 32 base streams (decode tok/s)', value: ratio32, target: '≥ 0.75' }]);
  await engine.close();
  return { throughput, latency, eventLoopLag: lagRows, distinctVsBase32: ratio32 };
}
