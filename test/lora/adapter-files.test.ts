// Reading adapter files from disk never leaves the directory, never echoes file content, never
// hangs: links, FIFOs, devices, directories and oversized files are refused (422 naming the file),
// a hung read times out and still closes its file; lora_path is authorised before it is looked up.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { buildAdapter, writeAdapter } from '../../scripts/make-test-adapters.ts';
import { loadModelFiles } from '../../src/runtime/model-loader.ts';
import { LoraserveError } from '../../src/runtime/errors.ts';
import { CONFIG_FILE, WEIGHTS_FILE, decodeAdapter, readAdapterDir } from '../../src/adapters/lora-adapter.ts';
import type { AdapterFiles } from '../../src/adapters/lora-adapter.ts';
import { readWhole } from '../../src/adapters/read-file.ts';
import { AdapterStore } from '../../src/adapters/adapter-store.ts';
import { resolveAdapterPath } from '../../src/server/adapter-path.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

// node:fs/promises as it is, except that a test can hold an open or the reads of the next file
// opened (a hung network mount), and see whether that file was closed.
const gate = vi.hoisted(() => {
  const g = { mode: null as null | 'open' | 'read', released: Promise.resolve(), release: () => undefined as void, closed: false };
  return Object.assign(g, {
    arm(mode: 'open' | 'read') {
      g.mode = mode;
      g.closed = false;
      g.released = new Promise<void>((r) => { g.release = r; });
    },
  });
});
vi.mock('node:fs/promises', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs/promises')>();
  const open = async (...args: Parameters<typeof real.open>) => {
    const mode = gate.mode;
    gate.mode = null;
    if (mode === 'open') await gate.released;
    const fh = await real.open(...args);
    if (mode) {
      const read = fh.read.bind(fh) as (...a: unknown[]) => Promise<unknown>;
      const close = fh.close.bind(fh);
      Object.assign(fh, {
        read: async (...a: unknown[]) => { if (mode === 'read') await gate.released; return read(...a); },
        close: async () => { await close(); gate.closed = true; },
      });
    }
    return fh;
  };
  return { ...real, open, default: { ...real, open } };
});

const cfg = loadModelFiles(STORIES_DIR).config;
const limits = { maxRank: 64, modelName: 'stories260K' };
const tmp = (tag: string) => mkdtempSync(join(tmpdir(), `loraserve-af-${tag}-`));
const SECRET = 'root:$6$S3CR3T-HASH-do-not-echo:19000:0:99999:7:::';

function goodDir(tag: string, seed = 1): string {
  const dir = join(tmp(tag), 'adapter');
  writeAdapter(dir, buildAdapter(cfg, { rank: 4, targets: ['q_proj', 'v_proj'], seed }));
  return dir;
}

async function refused(p: Promise<unknown>): Promise<LoraserveError> {
  const err = await p.then(() => { throw new Error('accepted'); }, (e: unknown) => e);
  expect(err).toBeInstanceOf(LoraserveError);
  return err as LoraserveError;
}

async function refusedAdapter(p: Promise<unknown>, pattern: RegExp): Promise<LoraserveError> {
  const err = await refused(p);
  expect(err.status).toBe(422);
  expect(err.code).toBe('invalid_adapter');
  expect(err.message).toMatch(pattern);
  expect(err.problems.join('; ')).toMatch(pattern);
  return err;
}

function fifo(path: string): void {
  execFileSync('mkfifo', [path]);
}

afterEach(() => {
  gate.mode = null;
  gate.release();
});

describe('adapter files on disk', () => {
  it('a valid adapter still reads and decodes, byte for byte', async () => {
    const files = await readAdapterDir(goodDir('ok'));
    const r = decodeAdapter(files, cfg, limits);
    expect(r.problems).toEqual([]);
    expect(r.adapter?.maxRank).toBe(4);
  });

  it('a symbolic link as adapter_config.json or as the weights is refused, naming the file', async () => {
    const outside = goodDir('out');
    const a = goodDir('cfglink');
    const b = goodDir('wlink');
    for (const [dir, file] of [[a, CONFIG_FILE], [b, WEIGHTS_FILE]]) {
      execFileSync('rm', [join(dir, file)]);
      symlinkSync(join(outside, file), join(dir, file));
      const err = await refusedAdapter(readAdapterDir(dir), new RegExp(`${file.replace('.', '\\.')} is a symbolic link`));
      expect(err.message).toContain(dir);
    }
    // a dangling link is a link, not a missing file
    const c = goodDir('dangling');
    execFileSync('rm', [join(c, CONFIG_FILE)]);
    symlinkSync(join(c, 'nowhere'), join(c, CONFIG_FILE));
    await refusedAdapter(readAdapterDir(c), /adapter_config\.json is a symbolic link/);
  });

  it("a link to a secret file: the secret's bytes appear nowhere in the error", async () => {
    const secretDir = tmp('secret');
    writeFileSync(join(secretDir, 'shadow'), SECRET);
    const dir = goodDir('leak');
    execFileSync('rm', [join(dir, CONFIG_FILE)]);
    symlinkSync(join(secretDir, 'shadow'), join(dir, CONFIG_FILE));
    const err = await refusedAdapter(readAdapterDir(dir), /symbolic link/);
    for (const text of [err.message, ...err.problems]) expect(text).not.toMatch(/S3CR3T|root:/);
  });

  it('a config that is not JSON is reported without quoting its content', () => {
    const weights = new Uint8Array(8);
    for (const content of [SECRET, `{"r": 4, "x": ${SECRET}}`, '{"r": 4,', '\u0000S3CR3T']) {
      const files: AdapterFiles = { config: new TextEncoder().encode(content), weights };
      const { problems } = decodeAdapter(files, cfg, limits);
      const json = problems.find((p) => p.startsWith(CONFIG_FILE));
      expect(json).toMatch(/^adapter_config\.json is not valid JSON/);
      expect(problems.join('; ')).not.toMatch(/S3CR3T|root:/);
    }
  });

  it('a FIFO is refused at once, as config or as weights, and 8 of them do not block a following read', { timeout: 15_000 }, async () => {
    const started = Date.now();
    for (const file of [CONFIG_FILE, WEIGHTS_FILE]) {
      const dir = goodDir(`fifo-${file}`);
      execFileSync('rm', [join(dir, file)]);
      fifo(join(dir, file));
      await refusedAdapter(readAdapterDir(dir), new RegExp(`${file.replace('.', '\\.')} is not a regular file`));
    }
    const dirs = Array.from({ length: 8 }, (_, k) => {
      const dir = join(tmp(`fifo8-${k}`), 'adapter');
      mkdirSync(dir);
      fifo(join(dir, CONFIG_FILE));
      fifo(join(dir, WEIGHTS_FILE));
      return dir;
    });
    const errs = await Promise.all(dirs.map((d) => refused(readAdapterDir(d))));
    for (const e of errs) expect(e.status).toBe(422);
    await refusedAdapter(readWhole(join(dirs[0], CONFIG_FILE)), /is not a regular file/);
    const files = await readAdapterDir(goodDir('after-fifo', 2)); // the thread pool is free
    expect(decodeAdapter(files, cfg, limits).problems).toEqual([]);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('a directory named adapter_config.json, or a device, is refused', async () => {
    const dir = goodDir('isdir');
    execFileSync('rm', [join(dir, CONFIG_FILE)]);
    mkdirSync(join(dir, CONFIG_FILE));
    await refusedAdapter(readAdapterDir(dir), /adapter_config\.json is a directory/);
    await refusedAdapter(readWhole('/dev/null'), /null is not a regular file/);
  });

  it('an oversized config (over 1 MiB) or weights over the limit are refused, naming the limit', async () => {
    const dir = goodDir('big');
    writeFileSync(join(dir, CONFIG_FILE), `{"r": 4, "pad": "${'x'.repeat(1 << 20)}"}`);
    await refusedAdapter(readAdapterDir(dir), /adapter_config\.json is \d+ bytes, over the limit of 1 MiB/);
    const small = goodDir('bigw');
    await refusedAdapter(readAdapterDir(small, { maxWeightBytes: 1024 }), /adapter_model\.safetensors is \d+ bytes, over the limit of 1 KiB/);
  });

  it('a missing file and a pickle are reported as before', async () => {
    const dir = goodDir('missing');
    execFileSync('rm', [join(dir, CONFIG_FILE), join(dir, WEIGHTS_FILE)]);
    const err = await refusedAdapter(readAdapterDir(dir), /missing adapter_config\.json/);
    expect(err.message).toBe(`${dir}: missing adapter_config.json and adapter_model.safetensors`);
    expect(err.problems).toEqual(['missing adapter_config.json', 'missing adapter_model.safetensors']);
    writeFileSync(join(dir, CONFIG_FILE), '{}');
    writeFileSync(join(dir, 'adapter_model.bin'), 'pickle');
    await refusedAdapter(readAdapterDir(dir), /pickle/);
  });

  it('a read that hangs times out with a clear error, and the file is closed once the read settles', { timeout: 15_000 }, async () => {
    for (const mode of ['read', 'open'] as const) {
      const dir = goodDir(`hang-${mode}`);
      gate.arm(mode);
      const started = Date.now();
      await refusedAdapter(readAdapterDir(dir, { timeoutMs: 200 }), /could not be read within 200 ms|took longer than 200 ms/);
      expect(Date.now() - started).toBeLessThan(2_000);
      expect(gate.closed).toBe(false); // still held
      gate.release();
      await vi.waitFor(() => expect(gate.closed).toBe(true), { timeout: 2_000 });
    }
    const dir = goodDir('hang-whole');
    gate.arm('read');
    await refusedAdapter(readWhole(join(dir, WEIGHTS_FILE), undefined, { timeoutMs: 100 }), /adapter_model\.safetensors could not be read within 100 ms/);
    gate.release();
    await vi.waitFor(() => expect(gate.closed).toBe(true), { timeout: 2_000 });
  });

  it('the store lists only real directories holding both files as regular files', () => {
    const root = tmp('store');
    const outside = goodDir('store-out');
    writeAdapter(join(root, 'good'), buildAdapter(cfg, { rank: 4, targets: ['q_proj'], seed: 3 }));
    symlinkSync(outside, join(root, 'linked'));
    writeAdapter(join(root, 'linkedfile'), buildAdapter(cfg, { rank: 4, targets: ['q_proj'], seed: 4 }));
    execFileSync('rm', [join(root, 'linkedfile', WEIGHTS_FILE)]);
    symlinkSync(join(outside, WEIGHTS_FILE), join(root, 'linkedfile', WEIGHTS_FILE));
    mkdirSync(join(root, 'dirconfig', CONFIG_FILE), { recursive: true });
    writeFileSync(join(root, 'dirconfig', WEIGHTS_FILE), 'x');
    expect(new AdapterStore(root).list()).toEqual(['good']);
  });
});

describe('resolveAdapterPath', () => {
  const allowed = realpathSync(tmp('allowed'));
  const outside = realpathSync(tmp('outside'));
  mkdirSync(join(allowed, 'ok'));
  mkdirSync(join(outside, 'secret'));
  writeFileSync(join(allowed, 'file'), 'x');
  symlinkSync(join(outside, 'secret'), join(allowed, 'sneaky'));
  symlinkSync(join(allowed, 'ok'), join(allowed, 'alias'));
  const roots = [allowed];
  const status = (input: unknown, r = roots) => {
    try {
      resolveAdapterPath(input, r);
      return 200;
    } catch (e) {
      expect(e).toBeInstanceOf(LoraserveError);
      return (e as LoraserveError).status;
    }
  };

  it('accepts a directory inside a root, returning its realpath', () => {
    expect(resolveAdapterPath(join(allowed, 'ok'), roots)).toBe(join(allowed, 'ok'));
    expect(resolveAdapterPath(join(allowed, 'alias'), roots)).toBe(join(allowed, 'ok')); // a link that stays inside
    expect(resolveAdapterPath(`${allowed}/ok/../ok/`, roots)).toBe(join(allowed, 'ok'));
  });

  it('403 outside the roots whether or not the path exists; 404 only inside', () => {
    expect(status(join(outside, 'secret'))).toBe(403);
    expect(status(join(outside, 'does-not-exist'))).toBe(403);
    expect(status('/etc')).toBe(403);
    expect(status('/no/such/dir')).toBe(403);
    expect(status(join(allowed, '..', basename(outside), 'secret'))).toBe(403);
    expect(status(`${allowed}-sibling`)).toBe(403); // a prefix is not a parent
    expect(status('relative/path')).toBe(403);
    expect(status(join(allowed, 'missing'))).toBe(404);
    expect(status(join(allowed, 'missing', 'deeper'))).toBe(404);
  });

  it('403 for a linked directory pointing out; 400 for a file', () => {
    expect(status(join(allowed, 'sneaky'))).toBe(403);
    expect(status(join(allowed, 'sneaky', '..', 'ok'))).toBe(200); // lexically allowed/ok
    expect(status(join(allowed, 'file'))).toBe(400);
  });

  it('a root given through a link accepts both spellings', () => {
    const linkRoot = join(tmp('linkroot'), 'root');
    symlinkSync(allowed, linkRoot);
    expect(resolveAdapterPath(join(linkRoot, 'ok'), [linkRoot])).toBe(join(allowed, 'ok'));
    expect(resolveAdapterPath(join(allowed, 'ok'), [linkRoot])).toBe(join(allowed, 'ok'));
    expect(status(join(outside, 'secret'), [linkRoot])).toBe(403);
  });

  it("400 naming 'lora_path' for '', NUL, over-long and non-string input", () => {
    for (const input of ['', 'a\0b', `${allowed}/ok\0`, `${allowed}/${'x'.repeat(5000)}`, 42, null, undefined, ['/tmp'], {}]) {
      let err: unknown = null;
      try { resolveAdapterPath(input, roots); } catch (e) { err = e; }
      expect(err).toBeInstanceOf(LoraserveError);
      expect((err as LoraserveError).status).toBe(400);
      expect((err as LoraserveError).param).toBe('lora_path');
    }
  });
});
