// Adapters through the real engine worker and registry: mixed batches, hot swap and unload while
// requests stream, merged mode, and the disk tier.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEngine } from '../../src/start-engine.ts';
import { AdapterRegistry } from '../../src/adapters/registry.ts';
import { AdapterStore } from '../../src/adapters/adapter-store.ts';
import { DEFAULT_SAMPLING } from '../../src/runtime/sampler.ts';
import type { GenerateRequest } from '../../src/runtime/generate-request.ts';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { buildAdapter } from '../../scripts/make-test-adapters.ts';
import type { AdapterSpec } from '../../scripts/make-test-adapters.ts';
import { encodeSafetensors } from '../../src/runtime/safetensors.ts';
import { decodeAdapter } from '../../src/adapters/lora-adapter.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const model = loadModel(STORIES_DIR);
const cfg = model.config;
const files = (spec: AdapterSpec) => { const f = buildAdapter(cfg, spec, model.weights); return { config: new TextEncoder().encode(JSON.stringify(f.config)), weights: encodeSafetensors(f.tensors) }; };
const ONCE = [1, 403, 407, 261, 378];

async function setup(loraMode: 'auto' | 'merged' | 'unmerged', hostCacheBytes = 1 << 30) {
  const engine = await startEngine({ runtime: { modelDir: STORIES_DIR, intraOpThreads: 1 }, adapters: { loraMode, hostCacheBytes } });
  const registry = new AdapterRegistry(engine, cfg, 'stories260K', 64, new AdapterStore(mkdtempSync(join(tmpdir(), 'loraserve-store-'))));
  const greedy = (adapter: string | null, maxTokens = 40, prompt = ONCE): GenerateRequest => ({
    promptTokens: prompt, maxTokens, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: null,
    adapter: adapter ? registry.acquire(adapter) : null,
  });
  const run = async (req: GenerateRequest, onToken?: (n: number) => void): Promise<number[]> => {
    const ids: number[] = [];
    try {
      for await (const ev of engine.generate(req)) {
        if (ev.type === 'token') { ids.push(ev.id); onToken?.(ids.length); }
        if (ev.type === 'error') throw new Error(ev.error.message);
      }
    } finally {
      if (req.adapter) registry.release(req.adapter);
    }
    return ids;
  };
  return { engine, registry, greedy, run };
}

describe('adapters in the engine', () => {
  let ctx: Awaited<ReturnType<typeof setup>>;
  beforeAll(async () => { ctx = await setup('unmerged'); });
  afterAll(async () => { await ctx.engine.close(); });

  it('a mixed batch (rank 4, rank 64, no adapter) gives each request the tokens it gets alone', async () => {
    const { registry, greedy, run } = ctx;
    await registry.upload('r4', files({ rank: 4, targets: ['q_proj', 'v_proj'], seed: 1, scaleB: 2 }), { replace: false });
    await registry.upload('r64', files({ rank: 64, alpha: 64, seed: 2, scaleB: 1 }), { replace: false });
    const alone = { r4: await run(greedy('r4')), r64: await run(greedy('r64')), base: await run(greedy(null)) };
    expect(alone.r4).not.toEqual(alone.base);
    expect(alone.r64).not.toEqual(alone.base);
    const together = await Promise.all([run(greedy('r4')), run(greedy('r64')), run(greedy(null)), run(greedy('r4', 40, [1, 317, 269]))]);
    expect(together.slice(0, 3)).toEqual([alone.r4, alone.r64, alone.base]);
  });

  it('hot swap: replacing X and unloading Y while requests stream; each response matches the version it started with', async () => {
    const { registry, greedy, run } = ctx;
    // an upload takes its files over (the weights move to the engine): each upload gets its own copy
    const v1 = () => files({ rank: 8, seed: 31, scaleB: 1.5 });
    const v2 = () => files({ rank: 16, seed: 32, scaleB: 1.5 });
    const y = () => files({ rank: 4, seed: 33, scaleB: 1.5 });
    await registry.upload('x', v1(), { replace: false });
    const expectV1 = await run(greedy('x', 60));
    await registry.upload('x', v2(), { replace: true });
    const expectV2 = await run(greedy('x', 60));
    expect(expectV2).not.toEqual(expectV1);
    await registry.upload('x', v1(), { replace: true });
    await registry.upload('y', y(), { replace: false });
    const expectY = await run(greedy('y', 60));

    let swapped!: () => void;
    const swapDone = new Promise<void>((r) => { swapped = r; });
    let fired = false;
    const onToken = (n: number) => {
      if (n === 5 && !fired) {
        fired = true;
        void (async () => {
          await registry.upload('x', v2(), { replace: true });   // new version while v1 streams
          swapped();
        })();
      }
    };
    const oldX = [run(greedy('x', 60), onToken), run(greedy('x', 60)), run(greedy('x', 60))];
    const yRun = run(greedy('y', 60));
    await swapDone;
    const unloadY = registry.unload('y', { waitMs: 30_000, deleteFiles: true }); // waits for the running y request
    expect(() => registry.acquire('y')).toThrow(/does not exist/);            // no new y requests meanwhile
    const newX = [run(greedy('x', 60)), run(greedy('x', 60))];
    const [o1, o2, o3, yOut, n1, n2] = await Promise.all([...oldX, yRun, ...newX]);
    await unloadY;
    for (const o of [o1, o2, o3]) expect(o).toEqual(expectV1);
    for (const n of [n1, n2]) expect(n).toEqual(expectV2);
    expect(yOut).toEqual(expectY);
    expect(registry.has('y')).toBe(false);
    expect(registry.store.list()).not.toContain('y');
  });

  it('unloading an adapter in use is refused after the wait, and the request is not broken', async () => {
    const { registry, greedy, run } = ctx;
    await registry.upload('busy', files({ rank: 4, seed: 41 }), { replace: false });
    const req = run(greedy('busy', 200));
    await expect(registry.unload('busy', { waitMs: 1, deleteFiles: false })).rejects.toThrow(/in flight/);
    expect((await req).length).toBe(200);
    expect(registry.get('busy')?.status).toBe('ready');
    await registry.unload('busy', { waitMs: 1000, deleteFiles: false });
  });
});

describe('host cache eviction and the disk tier', () => {
  it('an adapter evicted from host memory is read back from the store when requested', async () => {
    const fa = files({ rank: 4, seed: 51, scaleB: 2 });
    const size = decodeAdapter(fa, cfg, { maxRank: 64, modelName: 'stories260K' }).adapter!.bytes;
    const ctx = await setup('unmerged', Math.floor(size * 1.5)); // room for one adapter: the next evicts it
    try {
      await ctx.registry.upload('a', fa, { replace: false });
      const first = await ctx.run(ctx.greedy('a'));
      await ctx.registry.upload('b', files({ rank: 4, seed: 52, scaleB: 2 }), { replace: false });
      await ctx.run(ctx.greedy('b'));
      const before = (await ctx.engine.stats()).hostCache;
      expect(before.evictions).toBeGreaterThan(0);
      expect(await ctx.run(ctx.greedy('a'))).toEqual(first);
      expect((await ctx.engine.stats()).hostCache.loads).toBeGreaterThan(before.loads);
    } finally {
      await ctx.engine.close();
    }
  });
});

describe('replacing an adapter that host memory does not hold', () => {
  it('a request that started before the replace still gets its version, read back from the copy the store keeps', async () => {
    const ctx = await setup('unmerged', 1); // host memory holds no adapter: every request reads the store
    const root = ctx.registry.store.root;
    try {
      await ctx.registry.upload('x', files({ rank: 4, seed: 71, scaleB: 2 }), { replace: false });
      const v1 = await ctx.run(ctx.greedy('x'));
      const early = ctx.greedy('x'); // acquired now: version 1
      await ctx.registry.upload('x', files({ rank: 4, seed: 72, scaleB: 2 }), { replace: true });
      const v2 = await ctx.run(ctx.greedy('x'));
      expect(v2).not.toEqual(v1);
      expect(readdirSync(root)).toContain(`.retired-x-${early.adapter!.version}`);
      expect(await ctx.run(early)).toEqual(v1);
      // the kept copy goes once its last request has ended
      for (let i = 0; i < 50 && readdirSync(root).some((e) => e.startsWith('.retired-')); i++) await new Promise((r) => setTimeout(r, 20));
      expect(readdirSync(root).sort()).toEqual(['x']);
    } finally {
      await ctx.engine.close();
    }
  });
});

describe('merged mode', () => {
  it('serves from merged weights after the first step and gives the unmerged tokens', async () => {
    const merged = await setup('merged');
    const unmerged = await setup('unmerged');
    try {
      for (const c of [merged, unmerged]) await c.registry.upload('m', files({ rank: 8, seed: 61, scaleB: 2, dora: true }), { replace: false });
      const paths: string[] = [];
      merged.engine.onStep = (s) => { if (s.kind === 'decode') paths.push(s.path); };
      const a = await merged.run(merged.greedy('m', 40));
      const b = await unmerged.run(unmerged.greedy('m', 40));
      expect(a).toEqual(b);
      expect(paths).toContain('merged');
      expect(paths[0]).toBe('unmerged');
      const st = await merged.engine.stats();
      expect(st.merged.builds).toBe(1);
      expect(st.merged.hits).toBeGreaterThan(0);
    } finally {
      await merged.engine.close();
      await unmerged.engine.close();
    }
  });
});
