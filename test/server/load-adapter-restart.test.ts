// Adapters registered with vLLM's load_lora_adapter survive a restart, as uploads do: recorded in the
// store directory (src/adapters/path-registrations.ts), registered again at start-up, forgotten on
// unload. A moved directory is listed as failed (and logged); changed content is served with its new
// version (and logged); a corrupt record file, or a recorded path outside the allowed directories,
// does not stop the server and is never read from. Preloaded adapters are not recorded.
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, realpathSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startTestServer, upload, adapterFiles } from '../helpers/server.ts';
import { writeAdapter, buildAdapter } from '../../scripts/make-test-adapters.ts';
import { loadModelFiles } from '../../src/runtime/model-loader.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';
import { REGISTRATIONS_FILE } from '../../src/adapters/path-registrations.ts';

const cfg = loadModelFiles(STORIES_DIR).config;
const BIN = fileURLToPath(new URL('../../bin/loraserve.js', import.meta.url));

const post = (url: string, path: string, body: unknown) => fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
const complete = (url: string, model: string) => post(url, '/v1/completions', { model, prompt: 'Once upon a time', max_tokens: 16, temperature: 0 });
const text = async (r: Response) => {
  expect(r.status).toBe(200);
  return ((await r.json()) as { choices: { text: string }[] }).choices[0].text;
};
type Card = { id: string; status?: string; version?: string };
const models = async (url: string): Promise<Card[]> => ((await (await fetch(`${url}/v1/models`)).json()) as { data: Card[] }).data;
const adapterInfo = async (url: string, name: string) => (await (await fetch(`${url}/v1/adapters/${name}`)).json()) as { status: string; version: string; error: string | null; dir: string };
const recorded = (store: string) => (JSON.parse(readFileSync(join(store, REGISTRATIONS_FILE), 'utf8')) as { adapters: Record<string, { path: string; version: string }> }).adapters;

// `loraserve serve` in a child process (its pino log is what we read): resolves once it listens.
async function startCli(args: string[]): Promise<{ url: string; log: () => { level: number; msg: string; [k: string]: unknown }[]; stop: () => Promise<number | null> }> {
  const child = spawn(process.execPath, [BIN, 'serve', '--model', STORIES_DIR, '--port', '0', '--threads', '1', '--max-context', '512', '--enable-local-admin', '--log-level', 'warn', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`server did not start: ${stderr}`)); }, 60_000);
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      const m = /ready on (http:\/\/[\d.]+:\d+)/.exec(stderr);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    void exited.then((code) => { clearTimeout(timer); reject(new Error(`server exited (${code}): ${stderr}`)); });
  });
  const log = () => stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { level: number; msg: string });
  return { url, log, stop: async () => { child.kill('SIGTERM'); return exited; } };
}

describe('load_lora_adapter registrations survive a restart', () => {
  it('served again after a restart, same version and output; unloaded (or deleted): gone after a restart; preloaded: not recorded', async () => {
    const store = mkdtempSync(join(tmpdir(), 'loraserve-reg-store-'));
    const allowed = mkdtempSync(join(tmpdir(), 'loraserve-reg-allowed-'));
    const preload = mkdtempSync(join(tmpdir(), 'loraserve-reg-preload-'));
    writeAdapter(join(allowed, 'tenant-p'), buildAdapter(cfg, { rank: 4, seed: 11, scaleB: 2 }));
    writeAdapter(join(allowed, 'tenant-q'), buildAdapter(cfg, { rank: 4, seed: 12, scaleB: 2 }));
    writeAdapter(join(preload, 'demo'), buildAdapter(cfg, { rank: 4, seed: 13, scaleB: 2 }));
    let server = await startTestServer({ adapters: store, allowAdapterDirs: [allowed], preloadAdapters: preload });
    try {
      expect((await post(server.url, '/v1/load_lora_adapter', { lora_name: 'tenant-p', lora_path: join(allowed, 'tenant-p') })).status).toBe(200);
      expect((await post(server.url, '/v1/load_lora_adapter', { lora_name: 'tenant-q', lora_path: join(allowed, 'tenant-q') })).status).toBe(200);
      expect((await models(server.url)).map((m) => m.id)).toContain('demo');
      const p = await text(await complete(server.url, 'tenant-p'));
      const q = await text(await complete(server.url, 'tenant-q'));
      const version = (await adapterInfo(server.url, 'tenant-p')).version;
      expect(recorded(store)).toEqual({
        'tenant-p': { path: realpathSync(join(allowed, 'tenant-p')), version },
        'tenant-q': { path: realpathSync(join(allowed, 'tenant-q')), version: (await adapterInfo(server.url, 'tenant-q')).version },
      });

      // restart on the same store, without the preloaded directory: both registrations are back
      await server.close();
      server = await startTestServer({ adapters: store, allowAdapterDirs: [allowed] });
      const listed = await models(server.url);
      expect(listed.map((m) => m.id).sort()).toEqual(['stories260K', 'tenant-p', 'tenant-q']); // 'demo' was never recorded
      expect(listed.find((m) => m.id === 'tenant-p')).toMatchObject({ status: 'ready', version });
      expect(await text(await complete(server.url, 'tenant-p'))).toBe(p);
      expect(await text(await complete(server.url, 'tenant-q'))).toBe(q);

      // unload one, DELETE the other: both forgotten; their files stay where they were
      expect((await post(server.url, '/v1/unload_lora_adapter', { lora_name: 'tenant-p' })).status).toBe(200);
      expect((await fetch(`${server.url}/v1/adapters/tenant-q`, { method: 'DELETE' })).status).toBe(200);
      expect(recorded(store)).toEqual({});
      await server.close();
      server = await startTestServer({ adapters: store, allowAdapterDirs: [allowed] });
      expect((await models(server.url)).map((m) => m.id)).toEqual(['stories260K']);
      expect((await complete(server.url, 'tenant-p')).status).toBe(404);
      expect(readdirSync(allowed).sort()).toEqual(['tenant-p', 'tenant-q']);
    } finally {
      await server.close();
    }
  });

  it('moved directory: start-up works, listed as failed and logged; changed content: new version served and logged', async () => {
    const store = mkdtempSync(join(tmpdir(), 'loraserve-reg-store-'));
    const allowed = mkdtempSync(join(tmpdir(), 'loraserve-reg-allowed-'));
    writeAdapter(join(allowed, 'moved'), buildAdapter(cfg, { rank: 4, seed: 21, scaleB: 2 }));
    writeAdapter(join(allowed, 'changed'), buildAdapter(cfg, { rank: 4, seed: 22, scaleB: 2 }));
    writeAdapter(join(allowed, 'same'), buildAdapter(cfg, { rank: 4, seed: 23, scaleB: 2 }));
    const first = await startTestServer({ adapters: store, allowAdapterDirs: [allowed] });
    const before: Record<string, { out: string; version: string }> = {};
    try {
      for (const name of ['moved', 'changed', 'same']) {
        expect((await post(first.url, '/v1/load_lora_adapter', { lora_name: name, lora_path: join(allowed, name) })).status).toBe(200);
        before[name] = { out: await text(await complete(first.url, name)), version: (await adapterInfo(first.url, name)).version };
      }
    } finally {
      await first.close();
    }
    renameSync(join(allowed, 'moved'), join(allowed, 'moved-elsewhere'));
    writeAdapter(join(allowed, 'changed'), buildAdapter(cfg, { rank: 8, seed: 24, scaleB: 2 }));

    const server = await startCli(['--adapters', store, '--allow-adapter-dir', allowed]);
    try {
      // pino writes asynchronously: wait until both start-up warnings are out
      for (let i = 0; i < 100 && server.log().filter((l) => l.level === 40 && (l.adapter === 'moved' || l.adapter === 'changed')).length < 2; i++) await new Promise((r) => setTimeout(r, 50));
      const warnings = server.log().filter((l) => l.level === 40);
      const movedPath = realpathSync(allowed) + '/moved';
      const moved = warnings.find((l) => l.adapter === 'moved');
      expect(moved).toMatchObject({ path: movedPath });
      expect(moved!.msg).toContain(`registered adapter 'moved' at ${movedPath} is not served`);
      expect(moved!.msg).toMatch(/No adapter found/);
      const changed = warnings.find((l) => l.adapter === 'changed');
      expect(changed).toMatchObject({ path: realpathSync(allowed) + '/changed', previousVersion: before.changed.version });
      expect(changed!.version).not.toBe(before.changed.version);
      expect(changed!.msg).toMatch(/content changed .* serving the new content/);
      expect(warnings.find((l) => l.adapter === 'same')).toBeUndefined();

      // the moved one is listed as failed, with its path, and answers 503
      const listed = await models(server.url);
      expect(listed.find((m) => m.id === 'moved')).toMatchObject({ status: 'failed', version: before.moved.version });
      const info = await adapterInfo(server.url, 'moved');
      expect(info.error).toContain(movedPath);
      expect((await complete(server.url, 'moved')).status).toBe(503);
      // the changed one: served with its new version and content (the same output as a fresh load of it)
      expect(listed.find((m) => m.id === 'changed')).toMatchObject({ status: 'ready', version: changed!.version });
      expect(recorded(store).changed.version).toBe(changed!.version);
      const now = await text(await complete(server.url, 'changed'));
      expect(now).not.toBe(before.changed.out);
      expect((await post(server.url, '/v1/load_lora_adapter', { lora_name: 'changed-fresh', lora_path: join(allowed, 'changed') })).status).toBe(200);
      expect(await text(await complete(server.url, 'changed-fresh'))).toBe(now);
      // the unchanged one: as before
      expect(await text(await complete(server.url, 'same'))).toBe(before.same.out);
      // the directory comes back: a reload serves it again
      renameSync(join(allowed, 'moved-elsewhere'), join(allowed, 'moved'));
      expect((await post(server.url, '/v1/adapters/moved/reload', {})).status).toBe(200);
      expect(await text(await complete(server.url, 'moved'))).toBe(before.moved.out);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });

  it('a corrupt record file, or a recorded path outside the allowed directories, does not stop the server and is never read', async () => {
    const store = mkdtempSync(join(tmpdir(), 'loraserve-reg-store-'));
    const allowed = mkdtempSync(join(tmpdir(), 'loraserve-reg-allowed-'));
    const outside = mkdtempSync(join(tmpdir(), 'loraserve-reg-outside-'));
    writeAdapter(join(allowed, 'ok'), buildAdapter(cfg, { rank: 4, seed: 31, scaleB: 2 }));
    writeAdapter(join(outside, 'evil'), buildAdapter(cfg, { rank: 4, seed: 32, scaleB: 2 }));
    const corrupt = '{"format":1,"adapters":{"ok":{"path":';
    writeFileSync(join(store, REGISTRATIONS_FILE), corrupt);
    let server = await startTestServer({ adapters: store, allowAdapterDirs: [allowed] });
    try {
      expect((await models(server.url)).map((m) => m.id)).toEqual(['stories260K']);
      const aside = readdirSync(store).filter((e) => e.startsWith('.path-adapters.corrupt-'));
      expect(aside).toHaveLength(1);
      expect(readFileSync(join(store, aside[0]), 'utf8')).toBe(corrupt); // kept for a person to look at
      expect(recorded(store)).toEqual({});
      // uploads and new registrations work as ever, and are recorded again
      expect((await upload(server.url, 'uploaded', adapterFiles({ rank: 4, seed: 33, scaleB: 2 }))).status).toBe(201);
      expect((await post(server.url, '/v1/load_lora_adapter', { lora_name: 'ok', lora_path: join(allowed, 'ok') })).status).toBe(200);
      const ok = await text(await complete(server.url, 'ok'));
      await server.close();

      // a hand-edited record: a path outside the allowed directories and a bad name beside a good entry
      const file = JSON.parse(readFileSync(join(store, REGISTRATIONS_FILE), 'utf8')) as { adapters: Record<string, unknown> };
      file.adapters.evil = { path: realpathSync(join(outside, 'evil')), version: '0123456789abcdef' };
      file.adapters['../up'] = { path: realpathSync(join(allowed, 'ok')), version: '0123456789abcdef' };
      writeFileSync(join(store, REGISTRATIONS_FILE), JSON.stringify(file));
      server = await startTestServer({ adapters: store, allowAdapterDirs: [allowed] });
      const listed = await models(server.url);
      expect(listed.map((m) => m.id).sort()).toEqual(['evil', 'ok', 'stories260K', 'uploaded']);
      expect(await text(await complete(server.url, 'ok'))).toBe(ok);
      const evil = await adapterInfo(server.url, 'evil');
      expect(evil.status).toBe('failed');
      expect(evil.error).toMatch(/outside the adapter store/);
      expect((await complete(server.url, 'evil')).status).toBe(503);
      expect((await post(server.url, '/v1/adapters/evil/reload', {})).status).toBe(403); // checked again, still refused
      expect(Object.keys(recorded(store)).sort()).toEqual(['evil', 'ok']); // the bad name is dropped (a copy is kept aside)
      expect(readdirSync(store).filter((e) => e.startsWith('.path-adapters.corrupt-'))).toHaveLength(2);
      expect((await post(server.url, '/v1/unload_lora_adapter', { lora_name: 'evil' })).status).toBe(200);
      expect(Object.keys(recorded(store))).toEqual(['ok']);
      expect(existsSync(join(outside, 'evil'))).toBe(true);
    } finally {
      await server.close();
    }
  });
});
