// One request must never take the engine down. With the test-only fault hooks (engine-worker.ts):
// a sequence that fails while sampling fails alone; a step that throws fails its sequences and
// the engine goes on; a worker that exits mid-step or dies of an uncaught error is restarted:
// requests in flight end at once with a 503 (in-band on streams), /health and /ready tell the
// truth throughout, a metric counts the restarts, and afterwards every model and adapter serves.
// Also: the requests that used to kill the worker (logprobs 0; chat logprobs without top_logprobs).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningServer } from '../../src/server/serve.ts';
import { adapterFiles, startTestServer, upload } from '../helpers/server.ts';
import type { EngineFault } from '../../src/runtime/engine-messages.ts';
import { sseData } from '../../load-tests/harness.ts';

const MODEL = 'stories260K';
let server: RunningServer;

beforeAll(async () => {
  server = await startTestServer({ testFaults: true });
  expect((await upload(server.url, 'tenant', adapterFiles({ rank: 4, seed: 3, scaleB: 2 }))).status).toBe(201);
});
afterAll(async () => { await server?.close(); });

// Every call here is bounded: a hang fails the test instead of stalling the suite.
async function post(path: string, body: unknown, ms = 60_000): Promise<Response> {
  return fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: AbortSignal.timeout(ms) });
}

interface StreamResult { status: number; texts: string[]; errors: { code: string; type: string }[]; done: boolean }

async function stream(body: Record<string, unknown>, onFirstToken?: () => void): Promise<StreamResult> {
  const r = await post('/v1/completions', { ...body, stream: true });
  const out: StreamResult = { status: r.status, texts: [], errors: [], done: false };
  if (r.status !== 200) { out.errors.push(((await r.json()) as { error: { code: string; type: string } }).error); return out; }
  for await (const data of sseData(r.body!)) {
    if (data === '[DONE]') { out.done = true; continue; }
    const j = JSON.parse(data);
    if (j.error) out.errors.push(j.error);
    else if (j.choices[0].text) { out.texts.push(j.choices[0].text); if (out.texts.length === 1) onFirstToken?.(); }
  }
  return out;
}

const plain = async (model = MODEL): Promise<number> => (await post('/v1/completions', { model, prompt: 'Once upon a time', max_tokens: 4, temperature: 0 })).status;
const health = async (path: '/health' | '/ready') => { const r = await fetch(`${server.url}${path}`, { signal: AbortSignal.timeout(10_000) }); return { status: r.status, body: await r.json() as { status: string } }; };
const long = { model: MODEL, prompt: 'Once upon a time', max_tokens: 400, ignore_eos: true, temperature: 0 };

async function restarts(): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('loraserve_engine_restarts_total '));
  return Number(line?.split(' ')[1]);
}

async function untilReady(): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if ((await health('/ready')).status === 200) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('the engine never became ready again');
}

describe('requests that used to kill the engine', () => {
  it('completions with logprobs 0, chat with logprobs and no top_logprobs (streamed too) all succeed', async () => {
    const c = await post('/v1/completions', { model: MODEL, prompt: 'Once upon a time', max_tokens: 5, logprobs: 0 });
    expect(c.status).toBe(200);
    const lp = (await c.json()).choices[0].logprobs;
    expect(lp.token_logprobs).toHaveLength(5);
    // logprobs 0: each position's top_logprobs holds just the chosen token (OpenAI: "up to logprobs+1")
    lp.top_logprobs.forEach((t: Record<string, number>, i: number) => expect(t).toEqual({ [lp.tokens[i]]: lp.token_logprobs[i] }));
    const chat = await post('/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 5, logprobs: true });
    expect(chat.status).toBe(200);
    expect((await chat.json()).choices[0].logprobs.content[0].top_logprobs).toEqual([]);
    const s = await post('/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 5, logprobs: true, stream: true });
    expect(s.status).toBe(200);
    expect(await s.text()).not.toMatch(/"error"/);
    expect(await plain()).toBe(200);
  });
});

describe('faults inside the engine', () => {
  it('a sequence that fails while sampling fails alone; its neighbours and the engine go on', async () => {
    const before = await restarts();
    // queued before the requests: the first decoding sequence to sample takes it, whatever the
    // machine's speed (injected on a first token instead, a busy machine could finish every stream
    // first: they start decoding together)
    server.engine.injectFault('sequence');
    const runs = [stream(long), stream({ ...long, model: 'tenant' }), stream({ ...long, max_tokens: 300 })];
    const results = await Promise.all(runs);
    const failed = results.filter((r) => r.errors.length > 0);
    expect(failed).toHaveLength(1);
    expect(failed[0].errors[0]).toMatchObject({ code: 'internal', type: 'server_error' });
    expect(failed[0].status).toBe(200);
    expect(failed[0].texts.length).toBeGreaterThanOrEqual(1); // it had streamed a token
    expect(failed[0].done).toBe(true); // in-band error, then [DONE]
    for (const r of results.filter((x) => x.errors.length === 0)) expect(r.texts.length).toBeGreaterThanOrEqual(300);
    expect(await plain()).toBe(200);
    expect(await restarts()).toBe(before);
  });

  it('a step that throws fails the sequences in that step only; later requests are served', async () => {
    const before = await restarts();
    let inject = (): void => undefined;
    const started = new Promise<void>((r) => { inject = r; });
    const run = stream(long, inject);
    await started;
    server.engine.injectFault('step');
    const r = await run;
    expect(r.errors).toHaveLength(1);
    expect(r.texts.length).toBeLessThan(400);
    expect(await plain()).toBe(200);
    expect(await plain('tenant')).toBe(200);
    expect((await health('/health')).status).toBe(200);
    expect(await restarts()).toBe(before);
  });

  for (const fault of ['exit', 'crash'] as EngineFault[]) {
    it(`a worker that ${fault === 'exit' ? 'exits mid-step' : 'dies of an uncaught error'} is restarted: 503s in flight, honest probes, then everything serves`, async () => {
      const before = await restarts();
      let inject = (): void => undefined;
      const started = new Promise<void>((r) => { inject = r; });
      const streamed = stream(long, inject);
      await started;
      const whole = post('/v1/completions', { ...long, max_tokens: 300 });
      await new Promise((r) => setTimeout(r, 20));
      server.engine.injectFault(fault);
      const s = await streamed;
      expect(s.status).toBe(200);
      expect(s.errors).toEqual([expect.objectContaining({ code: 'unavailable', type: 'server_error' })]);
      expect(s.done).toBe(true);
      const w = await whole;
      expect(w.status).toBe(503);
      expect(w.headers.get('retry-after')).toBe('2');
      expect((await w.json()).error.code).toBe('unavailable');
      // while it restarts (a new worker loads the model and builds its session: ~1 s or more),
      // new requests get a 503 at once and both probes say so
      expect((await post('/v1/completions', { model: MODEL, prompt: 'Once', max_tokens: 2 })).status).toBe(503);
      expect(await health('/health')).toMatchObject({ status: 503, body: { status: 'restarting' } });
      expect((await health('/ready')).status).toBe(503);
      expect((await (await fetch(`${server.url}/v1/models`)).json()).data[0]).toMatchObject({ id: MODEL, status: 'restarting' });
      await untilReady();
      expect(await restarts()).toBe(before + 1);
      expect(await plain()).toBe(200);
      expect(await plain('tenant')).toBe(200); // the adapter came back from the store
      expect((await health('/health')).body.status).toBe('ok');
    });
  }
});
