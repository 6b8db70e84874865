// Two replicas on one shared adapter store (issue 16): two servers in this process, on two ports,
// with the same --adapters directory and the default --store-sync-ms. What one replica uploads,
// replaces, deletes or registers is served (or gone) on the other within 5 s, with the same
// version; a request in flight on the other replica keeps the old version to its end; a replica
// that starts while another is mid-upload leaves that upload alone.
import { describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { adapterFiles, startTestServer, upload } from '../helpers/server.ts';
import type { RunningServer } from '../../src/server/serve.ts';
import { buildAdapter, writeAdapter } from '../../scripts/make-test-adapters.ts';
import { loadModelFiles } from '../../src/runtime/model-loader.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';
import { DEFAULT_CONFIG } from '../../src/server/config.ts';

const BOUND_MS = 5_000;
const cfg = loadModelFiles(STORIES_DIR).config;
// long enough that the engine pauses a stream that is not read (past 64 unread tokens)
const REQUEST = { prompt: 'Once upon a time', max_tokens: 300, temperature: 0, ignore_eos: true };

async function complete(url: string, model: string): Promise<Response> {
  return fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, ...REQUEST }) });
}
const text = async (r: Response) => {
  expect(r.status).toBe(200);
  return ((await r.json()) as { choices: { text: string }[] }).choices[0].text;
};
const models = async (url: string) => ((await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] }).data.map((m) => m.id);
const adapterInfo = async (url: string, name: string) => (await fetch(`${url}/v1/adapters/${name}`)).json() as Promise<{ version: string; inFlight: number }>;

// Polls `check` until it holds; returns how long that took (fails past the bound).
async function within(ms: number, check: () => Promise<boolean>): Promise<number> {
  const t0 = Date.now();
  while (!(await check())) {
    if (Date.now() - t0 > ms) throw new Error(`not within ${ms} ms: ${check.toString().slice(0, 160)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return Date.now() - t0;
}

// Holds the engine stream of the next request for `name` on `server` after its first event until
// the returned release() is called: the engine pauses the sequence (its stream is not read), so the
// rest of it is generated after whatever the test does meanwhile.
function holdAfterFirstToken(server: RunningServer, name: string): () => void {
  let release!: () => void;
  const gate = new Promise<void>((r) => { release = r; });
  const orig = server.engine.generate.bind(server.engine);
  let armed = true;
  server.engine.generate = async function* (req, signal) {
    const hold = armed && req.adapter?.name === name;
    if (hold) armed = false;
    let first = true;
    for await (const ev of orig(req, signal)) {
      yield ev;
      if (hold && first) { first = false; await gate; }
    }
  } as typeof server.engine.generate;
  return release;
}

// A streamed completion's text, read to its end.
async function streamText(r: Response): Promise<string> {
  const reader = r.body!.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let out = '';
  let done = false;
  for (;;) {
    const { value, done: end } = await reader.read();
    if (end) break;
    buf += decoder.decode(value, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, i).trim();
      buf = buf.slice(i + 2);
      if (!event.startsWith('data: ')) continue;
      const data = event.slice(6);
      if (data === '[DONE]') { done = true; continue; }
      const chunk = JSON.parse(data) as { choices?: { text: string }[]; error?: unknown };
      expect(chunk.error).toBeUndefined();
      out += chunk.choices?.[0]?.text ?? '';
    }
  }
  expect(done).toBe(true);
  return out;
}

describe('shared adapter store across replicas', () => {
  it('upload, replace (in-flight keeps the old version), load_lora_adapter and delete through A reach B within 5 s', async () => {
    expect(DEFAULT_CONFIG.storeSyncMs).toBeGreaterThan(0);
    expect(DEFAULT_CONFIG.storeSyncMs).toBeLessThanOrEqual(2_000);
    const adapters = mkdtempSync(join(tmpdir(), 'loraserve-shared-'));
    const allowed = mkdtempSync(join(tmpdir(), 'loraserve-shared-allowed-'));
    const a = await startTestServer({ adapters, allowAdapterDirs: [allowed] });
    const b = await startTestServer({ adapters, allowAdapterDirs: [allowed] });
    let release = () => {};
    const abort = new AbortController();
    try {
      // upload to A: B serves it, same version, same output
      const up = await upload(a.url, 'tenant-x', adapterFiles({ rank: 4, seed: 11, scaleB: 2 }));
      expect(up.status).toBe(201);
      const v1 = ((await up.json()) as { version: string }).version;
      await within(BOUND_MS, async () => (await models(b.url)).includes('tenant-x'));
      expect((await adapterInfo(b.url, 'tenant-x')).version).toBe(v1);
      const ref1 = await text(await complete(a.url, 'tenant-x'));
      expect(await text(await complete(b.url, 'tenant-x'))).toBe(ref1);

      // a streaming request on B starts on v1 and is held after its first token
      release = holdAfterFirstToken(b, 'tenant-x');
      const stream = await fetch(`${b.url}/v1/completions`, { method: 'POST', signal: abort.signal, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tenant-x', ...REQUEST, stream: true }) });
      expect(stream.status).toBe(200);
      await within(BOUND_MS, async () => (await adapterInfo(b.url, 'tenant-x')).inFlight === 1);
      // the engine has paused it (unread), so the rest of it is generated after the replace
      await within(BOUND_MS, async () => ((await (await fetch(`${b.url}/health`)).json()) as { paused: number }).paused === 1);

      // replace through A: B serves the new version (the same hash as A's) within the bound
      const up2 = await upload(a.url, 'tenant-x', adapterFiles({ rank: 4, seed: 12, scaleB: 2 }), { replace: true });
      expect(up2.status).toBe(201);
      const v2 = ((await up2.json()) as { version: string }).version;
      expect(v2).not.toBe(v1);
      await within(BOUND_MS, async () => (await adapterInfo(b.url, 'tenant-x')).version === v2);
      expect((await adapterInfo(a.url, 'tenant-x')).version).toBe(v2);
      // A had no request on v1, but keeps its files for the other replicas' requests
      expect(existsSync(join(adapters, `.retired-tenant-x-${v1}`))).toBe(true);
      const ref2 = await text(await complete(a.url, 'tenant-x'));
      expect(ref2).not.toBe(ref1);

      // B's held request resumes after the replace and ends with v1's output
      expect((await adapterInfo(b.url, 'tenant-x')).inFlight).toBe(1);
      release();
      expect(await streamText(stream)).toBe(ref1);
      await within(BOUND_MS, async () => (await adapterInfo(b.url, 'tenant-x')).inFlight === 0);
      // (new requests on B resolve v2 already while it was held; asked only now, since with
      // --lora-mode auto a merged batch may make a request for v2 wait for the held v1 sequence)
      expect(await text(await complete(b.url, 'tenant-x'))).toBe(ref2);

      // load_lora_adapter through A (recorded in the shared .path-adapters.json): B serves it too;
      // unload_lora_adapter through A: gone on B
      writeAdapter(join(allowed, 'by-path'), buildAdapter(cfg, { rank: 4, seed: 13, scaleB: 2 }));
      const post = (url: string, path: string, body: unknown) => fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      expect((await post(a.url, '/v1/load_lora_adapter', { lora_name: 'by-path', lora_path: join(allowed, 'by-path') })).status).toBe(200);
      await within(BOUND_MS, async () => (await models(b.url)).includes('by-path'));
      expect((await adapterInfo(b.url, 'by-path')).version).toBe((await adapterInfo(a.url, 'by-path')).version);
      expect(await text(await complete(b.url, 'by-path'))).toBe(await text(await complete(a.url, 'by-path')));
      expect((await post(a.url, '/v1/unload_lora_adapter', { lora_name: 'by-path' })).status).toBe(200);
      await within(BOUND_MS, async () => !(await models(b.url)).includes('by-path'));
      expect((await complete(b.url, 'by-path')).status).toBe(404);

      // delete through A: B stops serving it within the bound
      expect((await fetch(`${a.url}/v1/adapters/tenant-x`, { method: 'DELETE' })).status).toBe(200);
      await within(BOUND_MS, async () => !(await models(b.url)).includes('tenant-x'));
      expect((await complete(b.url, 'tenant-x')).status).toBe(404);

      // an upload through B reaches A the same way (either direction)
      expect((await upload(b.url, 'tenant-y', adapterFiles({ rank: 4, seed: 14, scaleB: 2 }))).status).toBe(201);
      await within(BOUND_MS, async () => (await models(a.url)).includes('tenant-y'));
      expect((await adapterInfo(a.url, 'tenant-y')).version).toBe((await adapterInfo(b.url, 'tenant-y')).version);
    } finally {
      release(); // a failure above must not leave B's request held (close would wait for it)
      abort.abort();
      await Promise.all([a.close(), b.close()]);
    }
  }, 60_000);

  it('a replica that starts while another is mid-upload leaves that upload alone', async () => {
    const adapters = mkdtempSync(join(tmpdir(), 'loraserve-shared-late-'));
    const a = await startTestServer({ adapters });
    let c: RunningServer | null = null;
    try {
      // A's upload is staged (files written, not yet committed) when replica C starts
      const staged = await a.registry.store.stage('mid-upload', adapterFiles({ rank: 4, seed: 21, scaleB: 2 }));
      expect(readdirSync(join(adapters, '.staging'))).toHaveLength(1);
      c = await startTestServer({ adapters });
      expect(readdirSync(join(adapters, '.staging'))).toHaveLength(1); // C's start-up clean-up kept it
      await staged.commit();
      // committed: both replicas serve it
      for (const s of [a, c]) await within(BOUND_MS, async () => (await models(s.url)).includes('mid-upload'));
      expect((await adapterInfo(c.url, 'mid-upload')).version).toBe((await adapterInfo(a.url, 'mid-upload')).version);
      expect(await text(await complete(c.url, 'mid-upload'))).toBe(await text(await complete(a.url, 'mid-upload')));
    } finally {
      await Promise.all([a.close(), c?.close()]);
    }
  }, 60_000);
});
