// Adapter management over HTTP: upload, list, generate, replace, delete; restart; malformed
// uploads; size limit; keys; vLLM's load/unload endpoints and the path rules.
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readdirSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { adapterFiles, startTestServer, upload } from '../helpers/server.ts';
import { writeAdapter, buildAdapter } from '../../scripts/make-test-adapters.ts';
import { loadModelFiles } from '../../src/runtime/model-loader.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const cfg = loadModelFiles(STORIES_DIR).config;

async function complete(url: string, model: string, key?: string): Promise<Response> {
  return fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) },
    body: JSON.stringify({ model, prompt: 'Once upon a time', max_tokens: 16, temperature: 0 }),
  });
}
const text = async (r: Response) => ((await r.json()) as { choices: { text: string }[] }).choices[0].text;

describe('adapter lifecycle over HTTP', () => {
  it('upload, list, generate, replace, delete, then 404; the upload survives a restart', async () => {
    const adapters = mkdtempSync(join(tmpdir(), 'loraserve-life-'));
    let server = await startTestServer({ adapters });
    try {
      const base = await text(await complete(server.url, 'stories260K'));
      const up = await upload(server.url, 'tenant-a', adapterFiles({ rank: 8, seed: 1, scaleB: 2 }));
      expect(up.status).toBe(201);
      const info = await up.json();
      expect(info).toMatchObject({ name: 'tenant-a', rank: 8, status: 'ready', targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] });
      const list = await (await fetch(`${server.url}/v1/adapters`)).json();
      expect(list.data[0]).toMatchObject({ name: 'tenant-a', version: info.version, merged: false, requestsServed: 0 });
      expect(list.data[0].fileBytes).toBeGreaterThan(0);
      const v1 = await text(await complete(server.url, 'tenant-a'));
      expect(v1).not.toBe(base);
      expect((await (await fetch(`${server.url}/v1/adapters/tenant-a`)).json()).requestsServed).toBe(1);
      // same name without replace: 409; with replace: new version
      expect((await upload(server.url, 'tenant-a', adapterFiles({ rank: 4, seed: 2, scaleB: 2 }))).status).toBe(409);
      const up2 = await upload(server.url, 'tenant-a', adapterFiles({ rank: 4, seed: 2, scaleB: 2 }), { replace: true });
      expect(up2.status).toBe(201);
      expect((await up2.json()).version).not.toBe(info.version);
      const v2 = await text(await complete(server.url, 'tenant-a'));
      expect(v2).not.toBe(v1);
      // restart: the stored adapter is served again, same version and output
      await server.close();
      server = await startTestServer({ adapters });
      expect(await text(await complete(server.url, 'tenant-a'))).toBe(v2);
      // delete: gone from the API and from the store
      const del = await fetch(`${server.url}/v1/adapters/tenant-a`, { method: 'DELETE' });
      expect(del.status).toBe(200);
      expect((await complete(server.url, 'tenant-a')).status).toBe(404);
      expect((await fetch(`${server.url}/v1/adapters/tenant-a`, { method: 'DELETE' })).status).toBe(404);
      expect(readdirSync(adapters).filter((e) => !e.startsWith('.'))).toEqual([]);
    } finally {
      await server.close();
    }
  });

  it('a malformed upload gets a 422 listing its problems and changes nothing', async () => {
    const server = await startTestServer();
    try {
      await upload(server.url, 'good', adapterFiles({ rank: 4, seed: 3, scaleB: 2 }));
      const before = await text(await complete(server.url, 'good'));
      const bad = buildAdapter(cfg, { rank: 4, seed: 4 });
      bad.config.bias = 'all';
      const files = adapterFiles({ rank: 4, seed: 4 });
      files.weights = files.weights.subarray(0, files.weights.length - 7); // truncated
      const r = await upload(server.url, 'good', { config: new TextEncoder().encode(JSON.stringify(bad.config)), weights: files.weights }, { replace: true });
      expect(r.status).toBe(422);
      const body = await r.json();
      expect(body.error.code).toBe('invalid_adapter');
      expect(body.error.problems).toHaveLength(2);
      expect(body.error.problems.join(' ')).toMatch(/bias.*truncated/);
      expect(await text(await complete(server.url, 'good'))).toBe(before);
      expect((await (await fetch(`${server.url}/v1/adapters`)).json()).data).toHaveLength(1);
      // missing file, pickle, bad name
      const form = new FormData();
      form.append('name', 'x');
      form.append('adapter_model.bin', new Blob([new Uint8Array(4)]), 'adapter_model.bin');
      const pickle = await fetch(`${server.url}/v1/adapters`, { method: 'POST', body: form });
      expect(pickle.status).toBe(422);
      expect((await pickle.json()).error.message).toMatch(/pickle/);
      expect((await upload(server.url, '../../etc', adapterFiles({ rank: 4 }))).status).toBe(400);
    } finally {
      await server.close();
    }
  });

  it('uploads above the size limit get a 413', async () => {
    const server = await startTestServer({ maxUploadBytes: 1024 });
    try {
      const r = await upload(server.url, 'big', adapterFiles({ rank: 16, seed: 5 }));
      expect(r.status).toBe(413);
      expect((await r.json()).error.code).toBe('payload_too_large');
    } finally {
      await server.close();
    }
  });

  it('keys: --api-key guards inference (401), --admin-key guards management; none at all is refused (403)', async () => {
    const server = await startTestServer({ apiKey: 'sk-user', adminKey: 'sk-admin', enableLocalAdmin: false });
    try {
      expect((await complete(server.url, 'stories260K')).status).toBe(401);
      expect((await complete(server.url, 'stories260K', 'wrong')).status).toBe(401);
      expect((await complete(server.url, 'stories260K', 'sk-user')).status).toBe(200);
      expect((await upload(server.url, 'a', adapterFiles({ rank: 4 }))).status).toBe(401);
      expect((await upload(server.url, 'a', adapterFiles({ rank: 4 }), { key: 'sk-user' })).status).toBe(401);
      expect((await upload(server.url, 'a', adapterFiles({ rank: 4 }), { key: 'sk-admin' })).status).toBe(201);
    } finally {
      await server.close();
    }
    const closed = await startTestServer({ enableLocalAdmin: false });
    try {
      const r = await upload(closed.url, 'a', adapterFiles({ rank: 4 }));
      expect(r.status).toBe(403);
      expect((await r.json()).error.message).toMatch(/--admin-key/);
    } finally {
      await closed.close();
    }
  });

  it("vLLM's load_lora_adapter / unload_lora_adapter, only inside the store or --allow-adapter-dir", async () => {
    const allowed = mkdtempSync(join(tmpdir(), 'loraserve-allowed-'));
    const outside = mkdtempSync(join(tmpdir(), 'loraserve-outside-'));
    writeAdapter(join(allowed, 'ok'), buildAdapter(cfg, { rank: 4, seed: 6, scaleB: 2 }));
    writeAdapter(join(outside, 'no'), buildAdapter(cfg, { rank: 4, seed: 7 }));
    symlinkSync(join(outside, 'no'), join(allowed, 'sneaky'));
    const server = await startTestServer({ allowAdapterDirs: [allowed] });
    const post = (path: string, body: unknown) => fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    try {
      const ok = await post('/v1/load_lora_adapter', { lora_name: 'ok', lora_path: join(allowed, 'ok') });
      expect(ok.status).toBe(200);
      expect(await ok.text()).toBe("Success: LoRA adapter 'ok' added successfully.");
      expect((await complete(server.url, 'ok')).status).toBe(200);
      const again = await post('/v1/load_lora_adapter', { lora_name: 'ok', lora_path: join(allowed, 'ok') });
      expect(again.status).toBe(400); // as vLLM answers a name already loaded (an upload's is 409)
      expect((await again.json()).error).toMatchObject({ param: 'lora_name', message: expect.stringMatching(/has already been loaded/) });
      expect((await post('/v1/load_lora_adapter', { lora_name: 'ok', lora_path: join(allowed, 'ok'), load_inplace: true })).status).toBe(200);
      expect((await post('/v1/load_lora_adapter', { lora_name: 'no', lora_path: join(outside, 'no') })).status).toBe(403);
      expect((await post('/v1/load_lora_adapter', { lora_name: 'sneaky', lora_path: join(allowed, 'sneaky') })).status).toBe(403);
      expect((await post('/v1/load_lora_adapter', { lora_name: 'x', lora_path: join(allowed, 'missing') })).status).toBe(404);
      expect((await post('/v1/load_lora_adapter', { lora_name: 'x' })).status).toBe(400);
      const un = await post('/v1/unload_lora_adapter', { lora_name: 'ok' });
      expect(await un.text()).toBe("Success: LoRA adapter 'ok' removed successfully.");
      expect((await post('/v1/unload_lora_adapter', { lora_name: 'ok' })).status).toBe(404);
      expect((await complete(server.url, 'ok')).status).toBe(404);
    } finally {
      await server.close();
    }
  });
});
