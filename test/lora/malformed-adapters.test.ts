// At least 15 kinds of malformed adapter: each gets a clear refusal (422 with every problem) and
// leaves the registry and the store unchanged.
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readdirSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { AdapterRegistry } from '../../src/adapters/registry.ts';
import type { AdapterEngine } from '../../src/adapters/registry.ts';
import { AdapterStore } from '../../src/adapters/adapter-store.ts';
import { LoraserveError } from '../../src/runtime/errors.ts';
import { buildAdapter, malformedAdapters, writeAdapter } from '../../scripts/make-test-adapters.ts';
import { encodeSafetensors } from '../../src/runtime/safetensors.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const model = loadModel(STORIES_DIR);
const cfg = model.config;

function fakeEngine(): AdapterEngine & { versions: Set<string> } {
  const versions = new Set<string>();
  return { versions, putAdapter: async (a) => { versions.add(a.version); }, dropAdapter: async (v) => { versions.delete(v); } };
}

describe('malformed adapters', () => {
  const cases = malformedAdapters(cfg, 64);
  it('the table has at least 15 kinds', () => expect(cases.length).toBeGreaterThanOrEqual(15));

  it.each(cases.map((c) => [c.name, c] as const))('%s: refused with 422 naming the problem; registry and store unchanged', async (_n, c) => {
    const root = mkdtempSync(join(tmpdir(), 'loraserve-bad-'));
    const engine = fakeEngine();
    const registry = new AdapterRegistry(engine, cfg, 'stories260K', 64, new AdapterStore(join(root, 'store')));
    const good = buildAdapter(cfg, { rank: 4, targets: ['q_proj', 'v_proj'], seed: 9 });
    await registry.upload('keep', { config: new TextEncoder().encode(JSON.stringify(good.config)), weights: encodeSafetensors(good.tensors) }, { replace: false });
    const before = { list: registry.list(), store: readdirSync(join(root, 'store')), engine: [...engine.versions] };
    let err: unknown;
    try {
      if (c.files === 'pickle') {
        const dir = join(root, 'pickle');
        mkdirSync(dir);
        writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(good.config));
        writeFileSync(join(dir, 'adapter_model.bin'), 'pickle');
        await registry.loadDir('bad', dir, { replace: false });
      } else {
        await registry.upload('bad', c.files, { replace: false });
      }
    } catch (e) { err = e; }
    expect(err).toBeInstanceOf(LoraserveError);
    expect((err as LoraserveError).status).toBe(422);
    expect((err as LoraserveError).message).toMatch(c.expect);
    expect((err as LoraserveError).problems.length).toBeGreaterThan(0);
    // the same upload replacing a good adapter leaves the good one serving
    if (c.files !== 'pickle') await expect(registry.upload('keep', c.files, { replace: true })).rejects.toThrow(c.expect);
    expect(registry.list()).toEqual(before.list);
    expect(readdirSync(join(root, 'store'))).toEqual(before.store);
    expect([...engine.versions]).toEqual(before.engine);
  });

  it('reports every problem of an adapter in one answer', async () => {
    const registry = new AdapterRegistry(fakeEngine(), cfg, 'stories260K', 64, new AdapterStore(mkdtempSync(join(tmpdir(), 'loraserve-many-'))));
    const files = buildAdapter(cfg, { rank: 4, targets: ['q_proj', 'v_proj'] });
    files.config.bias = 'all';
    files.config.modules_to_save = ['lm_head'];
    const a = files.tensors['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'];
    new Float32Array(a.data.buffer, a.data.byteOffset, 1)[0] = Infinity;
    const err = await registry.upload('x', { config: new TextEncoder().encode(JSON.stringify(files.config)), weights: encodeSafetensors(files.tensors) }, { replace: false }).then(() => { throw new Error("accepted"); }, (e: LoraserveError) => e);
    expect(err.problems.length).toBe(3);
    expect(err.problems.join('\n')).toMatch(/bias.*\n.*modules_to_save.*\n.*NaN or Inf/s);
  });

  it('names with path separators are refused before anything is read or written', async () => {
    const root = mkdtempSync(join(tmpdir(), 'loraserve-name-'));
    const registry = new AdapterRegistry(fakeEngine(), cfg, 'stories260K', 64, new AdapterStore(join(root, 'store')));
    const dir = join(root, 'a');
    writeAdapter(dir, buildAdapter(cfg, { rank: 4 }));
    for (const name of ['../evil', 'a/b', 'a\\b', '..', '.hidden', '']) {
      await expect(registry.loadDir(name, dir, { replace: false })).rejects.toThrow(/must be 1–128 characters/);
      await expect(registry.upload(name, { config: new Uint8Array(), weights: new Uint8Array() }, { replace: false })).rejects.toThrow(/must be 1–128 characters/);
    }
    expect(readdirSync(join(root, 'store'))).toEqual([]);
  });

  it('a base_model_name_or_path that differs is a warning, not an error', async () => {
    const registry = new AdapterRegistry(fakeEngine(), cfg, 'stories260K', 64, new AdapterStore(mkdtempSync(join(tmpdir(), 'loraserve-warn-'))));
    const f = buildAdapter(cfg, { rank: 4, baseModel: 'meta-llama/Llama-3.1-8B' });
    const info = await registry.upload('w', { config: new TextEncoder().encode(JSON.stringify(f.config)), weights: encodeSafetensors(f.tensors) }, { replace: false });
    expect(info.warnings.join()).toMatch(/trained on base model "meta-llama\/Llama-3\.1-8B"/);
  });
});
