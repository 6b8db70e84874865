// WebSocket streaming with the `ws` client: concurrent responses on one socket, cancel, close.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { RunningServer } from '../../src/server/serve.ts';
import { startTestServer } from '../helpers/server.ts';
import { storiesExpected } from '../helpers/fixtures.ts';

const E = storiesExpected();
let server: RunningServer;
beforeAll(async () => { server = await startTestServer(); });
afterAll(async () => { await server?.close(); });

type Ev = Record<string, any>;
function connect(): Promise<{ ws: WebSocket; events: Ev[]; until: (pred: (e: Ev) => boolean) => Promise<Ev> }> {
  const ws = new WebSocket(`${server.url.replace('http', 'ws')}/v1/stream`);
  const events: Ev[] = [];
  const waiters: { pred: (e: Ev) => boolean; resolve: (e: Ev) => void }[] = [];
  ws.on('message', (d) => {
    const e = JSON.parse(String(d));
    events.push(e);
    for (const w of waiters.splice(0)) { if (w.pred(e)) w.resolve(e); else waiters.push(w); }
  });
  const until = (pred: (e: Ev) => boolean) => new Promise<Ev>((resolve) => {
    const hit = events.find(pred);
    if (hit) resolve(hit); else waiters.push({ pred, resolve });
  });
  return new Promise((resolve, reject) => { ws.on('open', () => resolve({ ws, events, until })); ws.on('error', reject); });
}

const idle = async () => {
  for (let i = 0; i < 100; i++) {
    const h = await (await fetch(`${server.url}/health`)).json();
    if (h.running === 0 && h.waiting === 0) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
};

describe('WebSocket /v1/stream', () => {
  it('runs several responses at once on one socket, each with its own events and usage', async () => {
    const { ws, events, until } = await connect();
    const cases = E.generation_cases.slice(0, 3);
    cases.forEach((c, i) => ws.send(JSON.stringify({ type: 'response.create', response_id: `r${i}`, model: 'stories260K', prompt: c.prompt, max_tokens: 40, temperature: 0 })));
    const done = await Promise.all(cases.map((_, i) => until((e) => e.type === 'response.completed' && e.response_id === `r${i}`)));
    cases.forEach((c, i) => {
      const deltas = events.filter((e) => e.type === 'response.output_text.delta' && e.response_id === `r${i}`).map((e) => e.delta).join('');
      expect(deltas).toBe(c.greedy_text);
      expect(done[i].response.usage).toEqual({ prompt_tokens: c.prompt_ids.length, completion_tokens: 40, total_tokens: c.prompt_ids.length + 40 });
      expect(done[i].response.output[0]).toMatchObject({ finish_reason: 'length', text: c.greedy_text });
    });
    // interleaved, and sequence numbers strictly increase
    const firstDone = events.findIndex((e) => e.type === 'response.completed');
    expect(new Set(events.slice(0, firstDone).filter((e) => e.type === 'response.output_text.delta').map((e) => e.response_id)).size).toBe(3);
    events.forEach((e, i) => expect(e.sequence_number).toBe(i));
    ws.close();
  });

  it('a cancel message stops one response; the other finishes', async () => {
    const { ws, events, until } = await connect();
    ws.send(JSON.stringify({ type: 'response.create', response_id: 'long', model: 'stories260K', prompt: 'Once', max_tokens: 400, ignore_eos: true }));
    ws.send(JSON.stringify({ type: 'response.create', response_id: 'short', model: 'stories260K', prompt: 'Once', max_tokens: 30, temperature: 0 }));
    await until((e) => e.type === 'response.output_text.delta' && e.response_id === 'long');
    ws.send(JSON.stringify({ type: 'response.cancel', response_id: 'long' }));
    const inc = await until((e) => e.response_id === 'long' && e.type === 'response.incomplete');
    expect(inc.reason).toBe('cancelled');
    await until((e) => e.type === 'response.completed' && e.response_id === 'short');
    expect(events.some((e) => e.type === 'response.completed' && e.response_id === 'long')).toBe(false);
    expect(events.filter((e) => e.type === 'response.output_text.delta' && e.response_id === 'long').length).toBeLessThan(400);
    ws.close();
    expect(await idle()).toBe(true);
  });

  it('a cancel sent right behind its create (while the prompt is prepared) stops it before it runs', async () => {
    const { ws, events, until } = await connect();
    ws.send(JSON.stringify({ type: 'response.create', response_id: 'gone', model: 'stories260K', prompt: 'Once', max_tokens: 450, ignore_eos: true }));
    ws.send(JSON.stringify({ type: 'response.cancel', response_id: 'gone' }));
    ws.send(JSON.stringify({ type: 'response.create', response_id: 'next', model: 'stories260K', prompt: 'Once', max_tokens: 5, temperature: 0 }));
    expect((await until((e) => e.response_id === 'gone' && e.type === 'response.incomplete')).reason).toBe('cancelled');
    await until((e) => e.type === 'response.completed' && e.response_id === 'next');
    expect(events.filter((e) => e.response_id === 'gone').map((e) => e.type)).toEqual(['response.incomplete']);
    ws.close();
    expect(await idle()).toBe(true);
  });

  it('echo: the prompt comes first, as its own delta with its logprobs, and the done text is what HTTP returns', async () => {
    const body = { model: 'stories260K', prompt: 'Once upon a time', max_tokens: 6, temperature: 0, echo: true, logprobs: 1 };
    const http = await (await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })).json();
    const { ws, events, until } = await connect();
    ws.send(JSON.stringify({ type: 'response.create', response_id: 'e', ...body }));
    const done = await until((e) => e.type === 'response.output_text.done' && e.response_id === 'e');
    expect(done.text).toBe(http.choices[0].text);
    const deltas = events.filter((e) => e.type === 'response.output_text.delta' && e.response_id === 'e');
    expect(deltas[0].delta).toBe('Once upon a time');
    const promptTokens = http.usage.prompt_tokens;
    expect(deltas[0].logprobs).toHaveLength(promptTokens);
    expect(deltas[0].logprobs[0].logprob).toBeNull();
    // the prompt's logprobs are those HTTP gives (its token_logprobs, prompt part)
    expect(deltas[0].logprobs.map((t: Ev) => t.logprob)).toEqual(http.choices[0].logprobs.token_logprobs.slice(0, promptTokens));
    expect(deltas.slice(1).map((d) => d.delta).join('')).toBe(http.choices[0].text.slice('Once upon a time'.length));
    ws.close();
  });

  it('closing the socket cancels all of its responses and frees the batch', async () => {
    const { ws, until } = await connect();
    for (let i = 0; i < 3; i++) ws.send(JSON.stringify({ type: 'response.create', response_id: `c${i}`, model: 'stories260K', prompt: 'Once', max_tokens: 450, ignore_eos: true }));
    await until((e) => e.type === 'response.output_text.delta' && e.response_id === 'c2');
    const h = await (await fetch(`${server.url}/health`)).json();
    expect(h.running + h.waiting).toBeGreaterThan(0);
    ws.close();
    expect(await idle()).toBe(true);
  });

  it('bad messages get error events naming the field; the socket stays usable', async () => {
    const { ws, until } = await connect();
    ws.send('not json');
    expect((await until((e) => e.type === 'error')).error.param).toBe('message');
    ws.send(JSON.stringify({ type: 'response.create', response_id: 'e1', model: 'nope', prompt: 'x' }));
    expect(await until((e) => e.type === 'error' && e.response_id === 'e1')).toMatchObject({ status: 404, error: { code: 'model_not_found' } });
    ws.send(JSON.stringify({ type: 'response.create', response_id: 'e2', model: 'stories260K', prompt: 'x', temperature: -1 }));
    expect(await until((e) => e.type === 'error' && e.response_id === 'e2')).toMatchObject({ status: 400, error: { param: 'temperature' } });
    ws.send(JSON.stringify({ type: 'response.create', response_id: 'ok', model: 'stories260K', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 }));
    expect((await until((e) => e.type === 'response.completed' && e.response_id === 'ok')).response.usage.completion_tokens).toBe(3);
    ws.close();
  });
});
