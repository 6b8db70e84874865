// Continuous batching must not change what a request gets: many concurrent greedy requests, with
// different prompt lengths (chunked prefill, several KV lanes), output lengths and
// adapters (none, rank 4, rank 16, rank 64), arriving while others run, each produce exactly the
// tokens they produce alone.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EngineClient } from '../../src/runtime/engine-client.ts';
import { startEngine } from '../../src/start-engine.ts';
import { AdapterRegistry } from '../../src/adapters/registry.ts';
import { AdapterStore } from '../../src/adapters/adapter-store.ts';
import { DEFAULT_SAMPLING } from '../../src/runtime/sampler.ts';
import type { StepStats } from '../../src/runtime/scheduler.ts';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { buildAdapter } from '../../scripts/make-test-adapters.ts';
import type { AdapterSpec } from '../../scripts/make-test-adapters.ts';
import { encodeSafetensors } from '../../src/runtime/safetensors.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const model = loadModel(STORIES_DIR);
const cfg = model.config;
const files = (spec: AdapterSpec) => { const f = buildAdapter(cfg, spec, model.weights); return { config: new TextEncoder().encode(JSON.stringify(f.config)), weights: encodeSafetensors(f.tensors) }; };

interface Job { adapter: string | null; prompt: number[]; maxTokens: number; delayMs: number }
const ADAPTERS = [null, 'r4', 'r16', 'r64'] as const;
const JOBS: Job[] = Array.from({ length: 12 }, (_, i) => ({
  adapter: ADAPTERS[i % 4],
  prompt: [1, ...Array.from({ length: [3, 40, 150, 300, 9, 90][i % 6] }, (_, k) => 3 + ((k * 37 + i * 11) % 500))],
  maxTokens: [12, 60, 140, 25][i % 4],
  delayMs: (i % 3) * 15,
}));

describe('continuous batching', () => {
  let engine: EngineClient;
  let registry: AdapterRegistry;
  const steps: StepStats[] = [];
  beforeAll(async () => {
    engine = await startEngine({ runtime: { modelDir: STORIES_DIR, intraOpThreads: 1 }, adapters: { loraMode: 'unmerged' }, scheduler: { maxRunning: 8, prefillChunk: 64 } });
    engine.onStep = (s) => steps.push(s);
    registry = new AdapterRegistry(engine, cfg, 'stories260K', 64, new AdapterStore(mkdtempSync(join(tmpdir(), 'loraserve-batch-'))));
    await registry.upload('r4', files({ rank: 4, targets: ['q_proj', 'v_proj'], seed: 31, scaleB: 2 }), { replace: false });
    await registry.upload('r16', files({ rank: 16, seed: 32, scaleB: 1 }), { replace: false });
    await registry.upload('r64', files({ rank: 64, alpha: 64, seed: 33, scaleB: 1 }), { replace: false });
  });
  afterAll(async () => { await engine.close(); });

  const run = async (job: Job): Promise<number[]> => {
    const ref = job.adapter ? registry.acquire(job.adapter) : null;
    const ids: number[] = [];
    try {
      for await (const ev of engine.generate({ promptTokens: job.prompt, maxTokens: job.maxTokens, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: null, adapter: ref })) {
        if (ev.type === 'token') ids.push(ev.id);
        if (ev.type === 'error') throw new Error(ev.error.message);
      }
    } finally {
      if (ref) registry.release(ref);
    }
    return ids;
  };

  it('12 concurrent greedy requests (4 adapters or none, prompts of 4–301 tokens, 12–140 new tokens) each get the tokens they get alone', async () => {
    const alone: number[][] = [];
    for (const job of JOBS) alone.push(await run(job));
    // the adapters matter: the same prompt under another adapter gives other tokens
    expect(new Set(ADAPTERS.map((a) => JSON.stringify(alone[JOBS.findIndex((j) => j.adapter === a)]))).size).toBe(4);
    steps.length = 0;
    // 12 requests over 8 rows: some wait, and join a running batch later
    const together = await Promise.all(JOBS.map(async (job) => { await new Promise((r) => setTimeout(r, job.delayMs)); return run(job); }));
    together.forEach((ids, i) => expect(ids, `request ${i}`).toEqual(alone[i]));
    // and they really were batched: mixed-adapter decode steps, prompt chunks riding in decode steps
    expect(Math.max(...steps.map((s) => s.batch))).toBeGreaterThanOrEqual(6);
    expect(steps.some((s) => s.kind === 'decode' && new Set(s.adapters).size >= 3)).toBe(true);
    expect(steps.some((s) => s.kind === 'mixed')).toBe(true);
  });

  it('several prompts chunked in one step (different lengths and adapters, while others decode) each get the tokens they get alone', async () => {
    const jobs: Job[] = Array.from({ length: 7 }, (_, i) => ({
      adapter: ADAPTERS[(i + 1) % 4],
      prompt: [1, ...Array.from({ length: [2, 130, 11, 5, 70, 24, 3][i] }, (_, k) => 3 + ((k * 29 + i * 13) % 500))],
      maxTokens: i < 2 ? 50 : 8,
      delayMs: i < 2 ? 0 : 40, // two streams decode first; five prompts arrive together
    }));
    const alone: number[][] = [];
    for (const job of jobs) alone.push(await run(job));
    steps.length = 0;
    const together = await Promise.all(jobs.map(async (job) => { await new Promise((r) => setTimeout(r, job.delayMs)); return run(job); }));
    together.forEach((ids, i) => expect(ids, `request ${i}`).toEqual(alone[i]));
    expect(steps.some((s) => s.kind === 'mixed' && s.promptRows >= 2), 'a decode step carried chunks of two or more prompts').toBe(true);
  });

  it('a stream whose reader stops is paused; it gives up its row to waiting requests and, read again, recomputes its KV: the same tokens', async () => {
    const slowJob: Job = { adapter: 'r16', prompt: JOBS[2].prompt, maxTokens: 200, delayMs: 0 };
    const others = JOBS.slice(0, 9).map((j) => ({ ...j, maxTokens: 40, delayMs: 0 }));
    const slowAlone = await run(slowJob);
    const othersAlone: number[][] = [];
    for (const j of others) othersAlone.push(await run(j));
    const before = (await engine.stats()).preemptions;
    const ref = registry.acquire('r16');
    const it = engine.generate({ promptTokens: slowJob.prompt, maxTokens: slowJob.maxTokens, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: null, adapter: ref })[Symbol.asyncIterator]();
    const ids: number[] = [];
    for (let i = 0; i < 3; i++) { const r = await it.next(); if (!r.done && r.value.type === 'token') ids.push(r.value.id); }
    // not read: past the client's bound its sequence is paused, holding its row
    for (let i = 0; i < 400 && (await engine.stats()).paused === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect((await engine.stats()).paused).toBe(1);
    // 9 more requests for 8 rows: the paused one must give up its row, or one of them would wait for it
    const together = await Promise.all(others.map(run));
    expect((await engine.stats()).preemptions).toBeGreaterThan(before);
    together.forEach((t, i) => expect(t, `request ${i}`).toEqual(othersAlone[i]));
    for (;;) {
      const r = await it.next();
      if (r.done) break;
      if (r.value.type === 'token') ids.push(r.value.id);
      if (r.value.type === 'error') throw new Error(r.value.error.message);
    }
    registry.release(ref);
    expect(ids).toEqual(slowAlone);
  });
});

// A step runs all its tokens (prompt chunks and decode rows) through the rotary op at once; on a
// model whose context is as long as the prefill chunk, a full chunk plus decode rows is more tokens
// than the context. Such a step once failed every request in it (the op took the step's tokens for
// one sequence longer than its cos/sin caches).
describe('a step with more tokens than the context', () => {
  it('a 505-token prompt chunk riding with 10 decode rows (515 tokens, context 512): every request gets the tokens it gets alone', async () => {
    const engine = await startEngine({ runtime: { modelDir: STORIES_DIR, intraOpThreads: 1, maxContext: 512 }, adapters: { loraMode: 'unmerged' }, scheduler: { maxRunning: 16, prefillChunk: 512, itlTargetMs: 60_000 } });
    const steps: StepStats[] = [];
    engine.onStep = (s) => steps.push(s);
    try {
      const run = async (prompt: number[], maxTokens: number): Promise<number[]> => {
        const ids: number[] = [];
        for await (const ev of engine.generate({ promptTokens: prompt, maxTokens, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: null, adapter: null })) {
          if (ev.type === 'token') ids.push(ev.id);
          if (ev.type === 'error') throw new Error(ev.error.message);
        }
        return ids;
      };
      const short = Array.from({ length: 10 }, (_, i) => [1, 3 + i, 40 + i]);
      const long = Array.from({ length: 2 }, (_, i) => [1, ...Array.from({ length: 504 }, (_, k) => 3 + ((k * 7 + i) % 500))]);
      const alone = [...(await Promise.all(short.map((p) => run(p, 200)))), ...(await Promise.all(long.map((p) => run(p, 5))))];
      steps.length = 0;
      const decoding = short.map((p) => run(p, 200));
      while (!steps.some((s) => s.kind === 'decode' && s.batch === 10)) await new Promise((r) => setTimeout(r, 1));
      const together = await Promise.all([...decoding, ...long.map((p) => run(p, 5))]);
      together.forEach((ids, i) => expect(ids, `request ${i}`).toEqual(alone[i]));
      expect(Math.max(...steps.map((s) => s.tokens)), 'a step carried more tokens than the context').toBeGreaterThan(512);
    } finally {
      await engine.close();
    }
  }, 60_000);
});
