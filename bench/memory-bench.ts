// Memory (issue: multi-adapter LoRA): process RSS with 1, 100 and 1000 small adapters registered
// on the synthetic 110M model. W0 stays resident once; decoded adapters live in the host LRU
// (--host-cache-mb), the rest are read back from the store on demand.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EngineClient } from '../src/runtime/engine-client.ts';
import { startEngine } from '../src/start-engine.ts';
import { AdapterRegistry } from '../src/adapters/registry.ts';
import { AdapterStore } from '../src/adapters/adapter-store.ts';
import { loadModelFiles } from '../src/runtime/model-loader.ts';
import { encodeSafetensors } from '../src/runtime/safetensors.ts';
import { buildAdapter } from '../scripts/make-test-adapters.ts';
import { llama110mDir } from './bench-models.ts';
import { printTable } from './stats.ts';

const MB = 1024 * 1024;

export async function memoryBench(opts: { quick: boolean }): Promise<Record<string, unknown>> {
  const dir = llama110mDir();
  const cfg = loadModelFiles(dir).config;
  const rss = () => { (globalThis as { gc?: () => void }).gc?.(); return process.memoryUsage().rss / MB; };
  const before = rss();
  let engineRef: EngineClient | null = null;
  const settle = async () => { await engineRef?.gc(); await new Promise((r) => setTimeout(r, 300)); await engineRef?.gc(); };
  const engine = await startEngine({ runtime: { modelDir: dir, maxContext: 512 }, adapters: { hostCacheBytes: 256 * MB } });
  const registry = new AdapterRegistry(engine, cfg, 'llama-110m', 64, new AdapterStore(mkdtempSync(join(tmpdir(), 'loraserve-mem-'))));
  engineRef = engine;
  await settle();
  const afterModel = rss();
  // a small adapter: rank 8 on q_proj and v_proj; each copy differs in one value (its own version)
  const base = buildAdapter(cfg, { rank: 8, targets: ['q_proj', 'v_proj'], seed: 9 });
  const config = new TextEncoder().encode(JSON.stringify(base.config));
  const first = Object.keys(base.tensors)[0];
  const rows: Record<string, number>[] = [];
  const counts = opts.quick ? [1, 100] : [1, 100, 1000];
  let n = 0;
  let adapterBytes = 0;
  for (const target of counts) {
    for (; n < target; n++) {
      const t = { ...base.tensors, [first]: { ...base.tensors[first], data: new Float32Array(new Float32Array(base.tensors[first].data.buffer.slice(0)).map((v, i) => (i === 0 ? v + n * 1e-3 : v))) } };
      const weights = encodeSafetensors(t);
      adapterBytes = weights.byteLength;
      await registry.upload(`small-${n}`, { config, weights }, { replace: false });
    }
    await settle();
    const st = await engine.stats();
    rows.push({ adapters: target, rss_mb: rss(), rss_over_model_mb: rss() - afterModel, host_cache_mb: st.hostCache.bytes / MB, host_cache_entries: st.hostCache.entries });
  }
  const weightMb = engine.info.weightBytes / MB;
  await engine.close();
  printTable(`process RSS (MB): before the model ${before.toFixed(0)}, after loading it ${afterModel.toFixed(0)} (f32 weights ${weightMb.toFixed(0)} MB); adapters of ${(adapterBytes / MB).toFixed(2)} MB each, host cache 256 MB`, rows);
  return { rssBeforeModelMb: before, rssAfterModelMb: afterModel, weightMb, adapterFileBytes: adapterBytes, rows };
}
