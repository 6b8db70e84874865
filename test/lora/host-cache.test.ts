// The host-memory tier: loads from the store on a miss, pins what running sequences use, and
// refuses files that changed since the version was registered.
import { describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostCache } from '../../src/adapters/host-cache.ts';
import { adapterVersion, decodeAdapter } from '../../src/adapters/lora-adapter.ts';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { buildAdapter, writeAdapter } from '../../scripts/make-test-adapters.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const model = loadModel(STORIES_DIR);
const cfg = model.config;
const limits = { maxRank: 64, modelName: 'stories260K' };
const settled = (c: HostCache) => new Promise<void>((r) => c.onSettled(r));

describe('host cache', () => {
  it('a miss loads from disk in the background; peek never starts a load', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'loraserve-hc-')), 'a');
    const files = writeAdapter(dir, buildAdapter(cfg, { rank: 4, seed: 1 }));
    const ref = { name: 'a', version: adapterVersion(files), dir };
    const cache = new HostCache(cfg, (n) => model.weights.get(n)!, limits, 1 << 30);
    expect(cache.peek(ref.version)).toBeUndefined();
    expect(cache.snapshot().loads).toBe(0);
    const done = settled(cache);
    expect(cache.acquire(ref)).toBeUndefined();
    await done;
    expect(cache.acquire(ref)?.rank).toBe(4);
    expect(cache.peek(ref.version)?.version).toBe(ref.version);
  });

  it('files changed since registration fail that version with a clear error', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'loraserve-hc-')), 'b');
    const files = writeAdapter(dir, buildAdapter(cfg, { rank: 4, seed: 2 }));
    const ref = { name: 'b', version: adapterVersion(files), dir };
    writeAdapter(dir, buildAdapter(cfg, { rank: 4, seed: 3 }));
    const cache = new HostCache(cfg, (n) => model.weights.get(n)!, limits, 1 << 30);
    const done = settled(cache);
    cache.acquire(ref);
    await done;
    expect(cache.failure(ref)?.message).toMatch(/changed since version/);
  });

  it('a pinned version stays available even when the LRU cannot hold it', () => {
    const files = buildAdapter(cfg, { rank: 8, seed: 4 });
    const cache = new HostCache(cfg, (n) => model.weights.get(n)!, limits, 1); // holds nothing
    const dir = join(mkdtempSync(join(tmpdir(), 'loraserve-hc-')), 'c');
    const written = writeAdapter(dir, files);
    const adapter = decodeAdapter(written, cfg, limits).adapter!;
    cache.pin(adapter.version);
    cache.put(adapter);
    expect(cache.peek(adapter.version)?.rank).toBe(8);
    cache.unpin(adapter.version);
    expect(cache.peek(adapter.version)).toBeUndefined();
  });
});
