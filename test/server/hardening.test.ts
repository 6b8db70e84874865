// Regression tests for the attack pass (issue 9): who may call (Host, Origin, loopback-only local
// admin, the metrics key), a failed delete that must not take an adapter offline, an adapter whose
// files change in place, slow readers (SSE and WebSocket), huge prompts, and clear messages.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'node:http';
import { connect } from 'node:net';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import type { FastifyRequest } from 'fastify';
import type { RunningServer } from '../../src/server/serve.ts';
import { adapterFiles, startTestServer, upload, uploadForm } from '../helpers/server.ts';
import { checkAdminKey } from '../../src/server/auth.ts';
import { hostAllowed } from '../../src/server/request-guard.ts';
import { collectResponse } from '../../src/server/completions.ts';
import type { GenerationJob } from '../../src/server/openai-request.ts';

const MODEL = 'stories260K';

interface Raw { status: number; headers: Record<string, string | string[] | undefined>; body: string }

// node:http, so Host and Origin can be anything.
function raw(url: string, opts: { method?: string; path: string; headers?: Record<string, string>; body?: string | Buffer }): Promise<Raw> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, method: opts.method ?? 'GET', path: opts.path, headers: opts.headers, timeout: 20_000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => { body += d.toString(); });
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.end(opts.body);
  });
}

const json = (body: unknown): { body: string; headers: Record<string, string> } => ({ body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
const post = (url: string, path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body), signal: AbortSignal.timeout(30_000) });

describe('who may call', () => {
  let server: RunningServer;
  beforeAll(async () => { server = await startTestServer({ metricsKey: 'metrics-secret', corsOrigins: ['https://app.example'] }); });
  afterAll(async () => { await server?.close(); });

  it('a Host that does not name this server is refused (DNS rebinding); loopback names pass', async () => {
    const port = new URL(server.url).port;
    const bad = await raw(server.url, { path: '/v1/models', headers: { host: 'rebind.evil.example' } });
    expect(bad.status).toBe(403);
    expect(JSON.parse(bad.body).error).toMatchObject({ code: 'forbidden', param: 'host' });
    expect((await raw(server.url, { path: '/v1/models', headers: { host: `localhost:${port}` } })).status).toBe(200);
    expect((await raw(server.url, { path: '/no/such/route', headers: { host: 'rebind.evil.example' } })).status).toBe(403);
    expect(hostAllowed('app.internal:8080', { host: '0.0.0.0', allowedHosts: [], corsOrigins: [] })).toBe(true);
    expect(hostAllowed('evil.example', { host: '0.0.0.0', allowedHosts: ['app.internal'], corsOrigins: [] })).toBe(false);
    expect(hostAllowed('app.internal', { host: '0.0.0.0', allowedHosts: ['app.internal'], corsOrigins: [] })).toBe(true);
    // a probe or a scraper that dials the pod's IP passes; a name that is not allowed does not
    expect(hostAllowed('10.244.1.7:8000', { host: '0.0.0.0', allowedHosts: ['app.internal'], corsOrigins: [] })).toBe(true);
    expect(hostAllowed('[fd00::7]:8000', { host: '::', allowedHosts: ['app.internal'], corsOrigins: [] })).toBe(true);
    expect(hostAllowed('10.244.1.7.nip.io', { host: '0.0.0.0', allowedHosts: ['app.internal'], corsOrigins: [] })).toBe(false);
  });

  it('a cross-origin upload is refused even with local admin; an allowed origin gets CORS headers', async () => {
    const form = uploadForm('cross', adapterFiles({ rank: 2, seed: 1 }));
    const r = await fetch(`${server.url}/v1/adapters`, { method: 'POST', body: form, headers: { origin: 'https://evil.example' } });
    expect(r.status).toBe(403);
    expect((await r.json()).error.param).toBe('origin');
    expect((await fetch(`${server.url}/v1/adapters/cross`)).status).toBe(404);
    const evilPost = await raw(server.url, { method: 'POST', path: '/v1/completions', ...json({ model: MODEL, prompt: 'x', max_tokens: 1 }), headers: { 'content-type': 'application/json', origin: 'https://evil.example' } });
    expect(evilPost.status).toBe(403);
    const ok = await raw(server.url, { method: 'POST', path: '/v1/completions', body: JSON.stringify({ model: MODEL, prompt: 'x', max_tokens: 1 }), headers: { 'content-type': 'application/json', origin: 'https://app.example' } });
    expect(ok.status).toBe(200);
    expect(ok.headers['access-control-allow-origin']).toBe('https://app.example');
    const preflight = await raw(server.url, { method: 'OPTIONS', path: '/v1/completions', headers: { origin: 'https://app.example', 'access-control-request-method': 'POST' } });
    expect(preflight.status).toBeLessThan(300);
    const port = new URL(server.url).port;
    const same = await raw(server.url, { method: 'POST', path: '/v1/completions', body: JSON.stringify({ model: MODEL, prompt: 'x', max_tokens: 1 }), headers: { 'content-type': 'application/json', origin: `http://127.0.0.1:${port}`, host: `127.0.0.1:${port}` } });
    expect(same.status).toBe(200);
  });

  it('a cross-origin WebSocket is refused before it opens', async () => {
    const ws = new WebSocket(`${server.url.replace('http', 'ws')}/v1/stream`, { headers: { origin: 'https://evil.example' } });
    const status = await new Promise<number>((resolve) => {
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode!));
      ws.on('open', () => resolve(101));
      ws.on('error', () => resolve(-1));
    });
    ws.terminate();
    expect(status).toBe(403);
  });

  it('local admin is for loopback clients only', () => {
    const req = (addr: string) => ({ headers: {}, socket: { remoteAddress: addr } }) as unknown as FastifyRequest;
    expect(() => checkAdminKey(req('127.0.0.1'), null, true)).not.toThrow();
    expect(() => checkAdminKey(req('::ffff:127.0.0.1'), null, true)).not.toThrow();
    expect(() => checkAdminKey(req('::1'), null, true)).not.toThrow();
    expect(() => checkAdminKey(req('10.0.0.5'), null, true)).toThrow(/loopback/);
    expect(() => checkAdminKey(req('::ffff:192.168.1.9'), null, true)).toThrow(/loopback/);
  });

  it('/metrics needs the metrics key', async () => {
    expect((await fetch(`${server.url}/metrics`)).status).toBe(401);
    expect((await fetch(`${server.url}/metrics`, { headers: { authorization: 'Bearer wrong' } })).status).toBe(401);
    const r = await fetch(`${server.url}/metrics`, { headers: { authorization: 'Bearer metrics-secret' } });
    expect(r.status).toBe(200);
    const text = await r.text();
    expect(text).toMatch(/loraserve_engine_restarts_total 0/);
    // every buffer pool's bound and size is exported
    expect(text).toMatch(/^loraserve_adapter_host_cache_limit_bytes 1073741824$/m);
    expect(text).toMatch(/^loraserve_adapter_host_cache_pinned_outside_bytes 0$/m);
    expect(text).toMatch(/^loraserve_adapter_warm_buffer_limit_bytes 134217728$/m);
    expect(text).toMatch(/^loraserve_adapter_warm_buffer_bytes\{thread="engine",kind="spare"\} \d+$/m);
    expect(text).toMatch(/^loraserve_kv_cache_allocated_bytes \d+$/m);
  });
});

describe('adapter state under failure', () => {
  let server: RunningServer;
  // a host cache of 1 byte holds nothing: every request reads its adapter back from the store. The
  // store is this process's alone (--store-sync-ms 0): a shared store's poll would take a hand edit
  // of the files as another replica's replace within a second, and serve it
  beforeAll(async () => { server = await startTestServer({ hostCacheBytes: 1, unloadWaitMs: 5000, storeSyncMs: 0 }); });
  afterAll(async () => { await server?.close(); });

  it('a DELETE that gives up leaves the adapter served at once; meanwhile new requests get 503, not 404', async () => {
    expect((await upload(server.url, 'busy', adapterFiles({ rank: 4, seed: 2 }))).status).toBe(201);
    const running = post(server.url, '/v1/completions', { model: 'busy', prompt: 'Once upon a time', max_tokens: 450, ignore_eos: true });
    await new Promise((r) => setTimeout(r, 100));
    const refusedAtOnce = await fetch(`${server.url}/v1/adapters/busy?wait_ms=0`, { method: 'DELETE' });
    expect(refusedAtOnce.status).toBe(409);
    expect((await post(server.url, '/v1/completions', { model: 'busy', prompt: 'x', max_tokens: 1 })).status).toBe(200);
    const del = fetch(`${server.url}/v1/adapters/busy?wait_ms=300`, { method: 'DELETE' });
    await new Promise((r) => setTimeout(r, 50));
    const during = await post(server.url, '/v1/completions', { model: 'busy', prompt: 'x', max_tokens: 1 });
    expect(during.status).toBe(503);
    expect((await during.json()).error.message).toMatch(/being unloaded/);
    const gaveUp = await del;
    expect(gaveUp.status).toBe(409);
    expect((await post(server.url, '/v1/completions', { model: 'busy', prompt: 'x', max_tokens: 1 })).status).toBe(200);
    expect((await (await fetch(`${server.url}/v1/adapters/busy`)).json()).status).toBe('ready');
    expect((await fetch(`${server.url}/v1/adapters/busy?wait_ms=99999999`, { method: 'DELETE' })).status).toBe(400);
    expect((await running).status).toBe(200);
  });

  it('a refused upload writes nothing: the store is as it was, no staging left behind', async () => {
    const root = server.registry.store.root;
    const before = readdirSync(root).sort();
    const store = server.registry.store;
    const stage = store.stage.bind(store);
    let staged = 0;
    store.stage = (...args) => { staged++; return stage(...args); }; // validation comes before any write
    const good = adapterFiles({ rank: 4, seed: 9 });
    const badConfig = new TextEncoder().encode(JSON.stringify({ peft_type: 'LORA', r: 4, lora_alpha: 1e30, target_modules: ['q_proj'] }));
    const r = await upload(server.url, 'refused', { config: badConfig, weights: good.weights });
    expect(r.status).toBe(422);
    expect((await r.json()).error.problems.join(' ')).toMatch(/lora_alpha/);
    const nan = new Uint8Array(good.weights);
    const notJson = await upload(server.url, 'refused', { config: new TextEncoder().encode('{"r":'), weights: nan });
    expect(notJson.status).toBe(422);
    expect(staged).toBe(0);
    expect(readdirSync(root).sort()).toEqual(before);
    expect((await fetch(`${server.url}/v1/adapters/refused`)).status).toBe(404);
    expect((await upload(server.url, 'accepted', good)).status).toBe(201);
    expect(staged).toBe(1);
    store.stage = stage;
  });

  it('files changed in place: the adapter is marked failed with a clear status, and a reload fixes it', async () => {
    const files = adapterFiles({ rank: 4, seed: 5 });
    expect((await upload(server.url, 'edited', files)).status).toBe(201);
    expect((await post(server.url, '/v1/completions', { model: 'edited', prompt: 'Once', max_tokens: 3 })).status).toBe(200);
    const dir = (await (await fetch(`${server.url}/v1/adapters/edited`)).json()).dir as string;
    writeFileSync(join(dir, 'adapter_model.safetensors'), adapterFiles({ rank: 4, seed: 6 }).weights); // edited by hand
    const first = await post(server.url, '/v1/completions', { model: 'edited', prompt: 'Once', max_tokens: 3 });
    expect(first.status).toBe(503);
    expect((await first.json()).error.message).toMatch(/changed.*Reload/);
    const info = await (await fetch(`${server.url}/v1/adapters/edited`)).json();
    expect(info.status).toBe('failed');
    expect(info.error).toMatch(/changed/);
    const models = await (await fetch(`${server.url}/v1/models`)).json();
    expect(models.data.find((m: { id: string }) => m.id === 'edited').status).toBe('failed');
    const next = await post(server.url, '/v1/completions', { model: 'edited', prompt: 'Once', max_tokens: 3 });
    expect(next.status).toBe(503);
    expect((await next.json()).error.message).toMatch(/reload/i);
    const reload = await fetch(`${server.url}/v1/adapters/edited/reload`, { method: 'POST' });
    expect(reload.status).toBe(200);
    expect((await reload.json()).version).not.toBe(info.version);
    expect((await post(server.url, '/v1/completions', { model: 'edited', prompt: 'Once', max_tokens: 3 })).status).toBe(200);
  });
});

describe('slow readers and huge prompts', () => {
  let server: RunningServer;
  beforeAll(async () => { server = await startTestServer({ clientStallTimeoutMs: 3000 }); });
  afterAll(async () => { await server?.close(); });
  const health = async () => (await (await fetch(`${server.url}/health`)).json()) as { running: number; waiting: number; paused: number };

  it('an SSE client that never reads is paused, then dropped after the stall timeout: its KV is freed', async () => {
    const port = Number(new URL(server.url).port);
    const body = JSON.stringify({ model: MODEL, prompt: 'Once upon a time', max_tokens: 500, ignore_eos: true, n: 64, logprobs: 20, stream: true });
    const sock = connect(port, '127.0.0.1');
    sock.pause(); // never reads
    sock.write(`POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    let pausedSeen = 0;
    let freed = false;
    for (let i = 0; i < 400 && !freed; i++) {
      await new Promise((r) => setTimeout(r, 50));
      const h = await health();
      pausedSeen = Math.max(pausedSeen, h.paused);
      freed = pausedSeen > 0 && h.running + h.waiting === 0;
    }
    expect(pausedSeen).toBeGreaterThan(0);
    expect(freed).toBe(true); // the socket is still open on our side: the server dropped the stream
    sock.destroy();
    expect((await post(server.url, '/v1/completions', { model: MODEL, prompt: 'x', max_tokens: 2 })).status).toBe(200);
  });

  it('a WebSocket client that never reads is dropped after the stall timeout', async () => {
    const ws = new WebSocket(`${server.url.replace('http', 'ws')}/v1/stream`);
    await new Promise((r) => ws.once('open', r));
    ws.send(JSON.stringify({ type: 'response.create', response_id: 'r', model: MODEL, prompt: 'Once upon a time', max_tokens: 450, ignore_eos: true, n: 64, logprobs: 20 }));
    (ws as unknown as { _socket: { pause(): void } })._socket.pause(); // stop reading
    const closed = new Promise<void>((r) => ws.once('close', () => r()));
    let freed = false;
    for (let i = 0; i < 400 && !freed; i++) {
      await new Promise((r) => setTimeout(r, 50));
      const h = await health();
      freed = i > 10 && h.running + h.waiting === 0;
    }
    expect(freed).toBe(true);
    (ws as unknown as { _socket: { resume(): void } })._socket.resume();
    await closed;
  });

  // The timing half ("no other stream sees a gap over 100 ms") is measured by the attack scenario
  // of the load tests (npm run load-test -- --only attack), on a server in its own process: a
  // time is not asserted in this suite. Here: refused by its size, never tokenized on any thread;
  // a prompt under the size bound is tokenized in the prompt worker, not on the HTTP thread.
  it('a 2 MB prompt is refused by its size before any tokenizing (413: over the largest servable body), a 900 KB one by its byte bound (400); a smaller one is tokenized in the prompt worker', async () => {
    const prompts = server.prompts;
    const before = prompts.jobs;
    const huge = await post(server.url, '/v1/completions', { model: MODEL, prompt: 'Once upon a time '.repeat(2 * 1024 * 1024 / 17), max_tokens: 4 });
    expect(huge.status).toBe(413);
    expect((await huge.json()).error).toMatchObject({ param: 'body', message: expect.stringMatching(/limit of \d+ bytes \(the largest request this model can serve\)/) });
    const big = await post(server.url, '/v1/completions', { model: MODEL, prompt: 'Once upon a time '.repeat(900 * 1024 / 17), max_tokens: 4 });
    expect(big.status).toBe(400);
    const bigError = (await big.json()).error;
    expect(bigError).toMatchObject({ param: 'prompt', message: expect.stringMatching(/is 921\d+ bytes; no text over \d+ bytes fits/) });
    const chat = await post(server.url, '/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'x'.repeat(900 * 1024) }] });
    expect(chat.status).toBe(400);
    expect((await chat.json()).error.param).toBe('messages');
    const many = await post(server.url, '/v1/completions', { model: MODEL, prompt: ['Once', 'x'.repeat(512 * 1024)] });
    expect((await many.json()).error.param).toBe('prompt[1]');
    expect(prompts.jobs).toBe(before); // nothing was tokenized
    const bound = Number(/no text over (\d+) bytes/.exec(bigError.message)?.[1]);
    expect(bound).toBeGreaterThan(512);
    const near = await post(server.url, '/v1/completions', { model: MODEL, prompt: 'Once upon a time '.repeat(Math.floor(bound / 17)) });
    expect(near.status).toBe(400);
    expect((await near.json()).error.message).toMatch(/tokens, more than the context/);
    expect(prompts.jobs).toBe(before + 1);
  });
});

describe('clear refusals', () => {
  let server: RunningServer;
  beforeAll(async () => { server = await startTestServer(); });
  afterAll(async () => { await server?.close(); });
  const err = async (r: Response | Promise<Response>) => { const x = await r; return { status: x.status, error: (await x.json()).error as { message: string; param: string | null; code: string } }; };

  it('each names the field and the limit', async () => {
    const u = server.url;
    const form = uploadForm('many', adapterFiles({ rank: 2, seed: 1 }));
    for (let i = 0; i < 20; i++) form.append(`f${i}`, 'x');
    const tooMany = await err(fetch(`${u}/v1/adapters`, { method: 'POST', body: form }));
    expect(tooMany).toMatchObject({ status: 413, error: { param: 'body', message: expect.stringMatching(/text fields/) } });
    const octet = await err(fetch(`${u}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: 'abc' }));
    expect(octet.status).toBe(415);
    const proto = await err(fetch(`${u}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"model":"stories260K","prompt":"x","__proto__":{"a":1}}' }));
    expect(proto).toMatchObject({ status: 400, error: { param: '__proto__', message: expect.stringMatching(/__proto__/) } });
    const notJson = await err(fetch(`${u}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"model":' }));
    expect(notJson).toMatchObject({ status: 400, error: { param: 'body', message: expect.stringMatching(/not valid JSON/) } });
    const inf = await err(fetch(`${u}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"model":"stories260K","prompt":"x","max_tokens":1e400}' }));
    expect(inf).toMatchObject({ status: 400, error: { param: 'max_tokens', message: expect.stringMatching(/finite.*Infinity/) } });
    const rf = await err(post(u, '/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'hi' }], response_format: 'x' }));
    expect(rf).toMatchObject({ status: 400, error: { param: 'response_format', message: expect.stringMatching(/must be an object.*"x"/) } });
    for (const lora_path of ['', 'a\u0000b']) {
      const p = await err(post(u, '/v1/load_lora_adapter', { lora_name: 'p', lora_path }));
      expect(p).toMatchObject({ status: 400, error: { param: 'lora_path' } });
    }
    const tokens = await err(post(u, '/v1/completions', { model: MODEL, prompt: [1, 99999] }));
    expect(tokens.error.message).toMatch(/prompt\[1\]/);
    // an unknown route is not_found; an unknown model stays model_not_found
    expect(await err(fetch(`${u}/v1/nothing-here`))).toMatchObject({ status: 404, error: { code: 'not_found', message: expect.stringMatching(/no route GET \/v1\/nothing-here/) } });
    expect(await err(post(u, '/v1/completions', { model: 'nobody', prompt: 'x' }))).toMatchObject({ status: 404, error: { code: 'model_not_found', param: 'model' } });
  });

  it('n > 10 prints no MaxListenersExceededWarning', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error): void => { warnings.push(w.name); };
    process.on('warning', onWarning);
    try {
      const r = await post(server.url, '/v1/completions', { model: MODEL, prompt: 'Once', max_tokens: 3, n: 24 });
      expect(r.status).toBe(200);
      await new Promise((res) => setTimeout(res, 50));
    } finally {
      process.off('warning', onWarning);
    }
    expect(warnings).not.toContain('MaxListenersExceededWarning');
  });

  it('the WebSocket sends response.created only for an admitted request: a 404 is an error event alone', async () => {
    const ws = new WebSocket(`${server.url.replace('http', 'ws')}/v1/stream`);
    await new Promise((r) => ws.once('open', r));
    const events: { type: string; status?: number }[] = [];
    ws.on('message', (d) => events.push(JSON.parse(String(d))));
    ws.send(JSON.stringify({ type: 'response.create', response_id: 'a', model: 'nope', prompt: 'x' }));
    ws.send(JSON.stringify({ type: 'response.create', response_id: 'b', model: MODEL, prompt: 'x', max_tokens: 2 }));
    for (let i = 0; i < 200 && !events.some((e) => e.type === 'response.completed'); i++) await new Promise((r) => setTimeout(r, 20));
    ws.close();
    const forA = events.filter((e) => (e as { response_id?: string }).response_id === 'a');
    expect(forA).toEqual([expect.objectContaining({ type: 'error', status: 404 })]);
    expect(events.filter((e) => (e as { response_id?: string }).response_id === 'b').map((e) => e.type)[0]).toBe('response.created');
  });

  it('an aborted non-streamed request ends as client_closed (499), not a 500', async () => {
    const job = { kind: 'completion', prompts: [[1]], n: 1 } as unknown as GenerationJob;
    const ac = new AbortController();
    ac.abort();
    await expect(collectResponse(job, (async function* () { /* every choice cancelled: no events */ })(), ac.signal)).rejects.toMatchObject({ code: 'client_closed', status: 499 });
  });
});
