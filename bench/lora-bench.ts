// LoRA benchmark (issue: multi-adapter LoRA), on the synthetic 110M model with rank-16 adapters on
// all seven targets. Ratios are measured in one run, interleaving the variants to spread noise.
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../src/runtime/model-loader.ts';
import { buildLlamaGraph, loraLinear } from '../src/runtime/llama-graph.ts';
import { createSession } from '../src/runtime/session.ts';
import type { ort } from '../src/runtime/session.ts';
import { StepRunner } from '../src/runtime/step.ts';
import { KvArena } from '../src/runtime/kv-arena.ts';
import { LoraArena } from '../src/runtime/lora-arena.ts';
import type { PreparedAdapter } from '../src/runtime/lora-arena.ts';
import { decodeAdapter } from '../src/adapters/lora-adapter.ts';
import { prepareAdapter } from '../src/adapters/host-cache.ts';
import { mergedWeights } from '../src/merge/merged-sessions.ts';
import { encodeSafetensors } from '../src/runtime/safetensors.ts';
import { startEngine } from '../src/start-engine.ts';
import { AdapterRegistry } from '../src/adapters/registry.ts';
import { AdapterStore } from '../src/adapters/adapter-store.ts';
import { DEFAULT_SAMPLING } from '../src/runtime/sampler.ts';
import { buildAdapter } from '../scripts/make-test-adapters.ts';
import type { AdapterSpec } from '../scripts/make-test-adapters.ts';
import type { ModelConfig } from '../src/runtime/model-config.ts';
import { llama110mDir } from './bench-models.ts';
import { median, printTable } from './stats.ts';

function adapterFiles(cfg: ModelConfig, spec: AdapterSpec): { config: Uint8Array; weights: Uint8Array } {
  const f = buildAdapter(cfg, spec);
  return { config: new TextEncoder().encode(JSON.stringify(f.config)), weights: encodeSafetensors(f.tensors) };
}

export async function loraBench(opts: { quick: boolean }): Promise<Record<string, unknown>> {
  const dir = llama110mDir();
  const model = loadModel(dir);
  const cfg = model.config;
  const readBase = (n: string) => model.weights.get(n)!;
  const maxPositions = 512;
  const nAdapters = opts.quick ? 8 : 32;
  console.log(`\npreparing ${nAdapters} rank-16 adapters on all seven targets …`);
  const adapters: PreparedAdapter[] = [];
  for (let i = 0; i < nAdapters; i++) {
    const r = decodeAdapter(adapterFiles(cfg, { rank: 16, alpha: 32, seed: 100 + i }), cfg, { maxRank: 64, modelName: 'llama-110m' });
    adapters.push(prepareAdapter(r.adapter!, cfg, readBase));
  }
  const main = await createSession(buildLlamaGraph(cfg, model.weights, { maxPositions, linear: loraLinear(cfg, model.weights) }));
  const t0 = performance.now();
  const mergedW = mergedWeights(cfg, readBase, adapters[0]);
  const mergeMs = performance.now() - t0;
  const t1 = performance.now();
  const merged = await createSession(buildLlamaGraph(cfg, mergedW, { maxPositions }));
  const mergedSessionMs = performance.now() - t1;

  // one arena set per scenario: rows with the given adapters, prefilled with a 32-token prompt
  const scenario = async (rowAdapters: (PreparedAdapter | null)[], session?: ort.InferenceSession) => {
    const kv = new KvArena(cfg.numLayers, cfg.numKvHeads, cfg.headDim, 128);
    const lora = new LoraArena(cfg);
    const runner = new StepRunner(main, cfg, maxPositions, kv, lora);
    rowAdapters.forEach((a, r) => { kv.ensure(r + 1); lora.setRow(r, a); });
    for (let r = 0; r < rowAdapters.length; r++) await runner.run([{ row: r, tokens: Array.from({ length: 32 }, (_, i) => (i * 31 + r) % cfg.vocabSize) }], { session });
    let tok = 7;
    return async (): Promise<number> => {
      const t = performance.now();
      await runner.run(rowAdapters.map((_, r) => ({ row: r, tokens: [tok++ % cfg.vocabSize] })), { session });
      return performance.now() - t;
    };
  };
  const B = nAdapters;
  const variants: [string, () => Promise<number>][] = [
    ['base_b1', await scenario([null])],
    ['unmerged_b1', await scenario([adapters[0]])],
    ['merged_b1', await scenario([adapters[0]], merged)],
    [`base_b${B}`, await scenario(Array(B).fill(null))],
    [`one_adapter_b${B}`, await scenario(Array(B).fill(adapters[0]))],
    [`distinct_b${B}`, await scenario(adapters.slice(0, B))],
  ];
  const times = new Map<string, number[]>(variants.map(([n]) => [n, []]));
  const rounds = opts.quick ? 8 : 25;
  for (let i = 0; i < rounds; i++) for (const [name, step] of variants) times.get(name)!.push(await step());
  const ms = (n: string) => median(times.get(n)!.slice(2));

  // load-to-first-token and merge time through the engine, as a server does it
  const engine = await startEngine({ runtime: { modelDir: dir, maxContext: maxPositions }, adapters: { loraMode: 'unmerged' } });
  const registry = new AdapterRegistry(engine, cfg, 'llama-110m', 64, new AdapterStore(mkdtempSync(join(tmpdir(), 'loraserve-bench-'))));
  const warm = adapterFiles(cfg, { rank: 16, seed: 1 });
  await registry.upload('warm', warm, { replace: false });
  const oneToken = async (adapter: string | null) => {
    const ref = adapter ? registry.acquire(adapter) : null;
    for await (const ev of engine.generate({ promptTokens: [1, 2, 3, 4], maxTokens: 1, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: null, adapter: ref })) {
      if (ev.type === 'token') break;
    }
    if (ref) registry.release(ref);
  };
  // a serving engine is warm (the first requests of a fresh one run slower while its code warms up):
  // what is timed below is the adapter's load, not the engine's start
  for (let i = 0; i < 30; i++) await oneToken(i % 2 ? 'warm' : null);
  // load: vLLM's load_lora_adapter from a directory (read, validate, hand to the engine); upload:
  // the multipart path's work (staged in the store with fsync while validated, then committed)
  const srcRoot = mkdtempSync(join(tmpdir(), 'loraserve-bench-src-'));
  const splits: { how: string; ready_ms: number; first_token_ms: number }[] = [];
  const firstToken = async (name: string, files: { config: Uint8Array; weights: Uint8Array }, how: 'load' | 'upload'): Promise<void> => {
    let dir = '';
    if (how === 'load') {
      dir = join(srcRoot, name);
      mkdirSync(dir);
      writeFileSync(join(dir, 'adapter_config.json'), files.config);
      writeFileSync(join(dir, 'adapter_model.safetensors'), files.weights);
    }
    const t = performance.now();
    if (how === 'load') await registry.loadDir(name, dir, { replace: true, source: 'path' });
    else await registry.upload(name, files, { replace: true });
    const ready = performance.now();
    await oneToken(name);
    splits.push({ how, ready_ms: ready - t, first_token_ms: performance.now() - ready });
  };
  for (let i = 0; i < (opts.quick ? 3 : 7); i++) {
    await firstToken(`load${i}`, adapterFiles(cfg, { rank: 16, seed: 200 + i }), 'load');
    await firstToken(`fresh${i}`, adapterFiles(cfg, { rank: 16, seed: 300 + i }), 'upload');
  }
  const totals = (how: string) => splits.filter((x) => x.how === how).map((x) => x.ready_ms + x.first_token_ms);
  const loadTimes = totals('load');
  const uploadTimes = totals('upload');
  const buildMs = await engine.buildMerged(registry.get('fresh0')!.version);
  await engine.close();

  const policy = await policyBench(dir, cfg, opts.quick);

  const rows = [
    { metric: 'merged single adapter vs base (b=1)', value: ms('merged_b1') / ms('base_b1'), target: '≤ 1.03' },
    { metric: 'unmerged single adapter vs base (b=1)', value: ms('unmerged_b1') / ms('base_b1'), target: '≤ 1.25' },
    { metric: `${B} distinct adapters vs ${B} on one adapter (tok/s)`, value: ms(`one_adapter_b${B}`) / ms(`distinct_b${B}`), target: '≥ 0.8' },
    { metric: `${B} distinct adapters vs base only (tok/s)`, value: ms(`base_b${B}`) / ms(`distinct_b${B}`), target: '≥ 0.75' },
    { metric: 'load rank-16 adapter from a directory → first token (ms, median)', value: median(loadTimes), target: '≤ 100' },
    { metric: 'upload (fsync 11 MB, commit) → first token (ms, median)', value: median(uploadTimes), target: '' },
    { metric: 'merged weights: merge in JS (ms)', value: mergeMs, target: '' },
    { metric: 'merged weights: merge + session (engine, ms)', value: buildMs, target: '' },
    { metric: 'merged session creation alone (ms)', value: mergedSessionMs, target: '' },
  ];
  printTable('LoRA on the synthetic 110M model, rank 16, all seven targets', rows);
  const stepRows = variants.map(([n]) => ({ variant: n, step_ms: ms(n), tok_s: (n.endsWith('b1') ? 1 : B) * 1000 / ms(n) }));
  printTable('decode step per variant (median ms)', stepRows);
  printTable('adapter load → first token, split: until the adapter serves, then the first step and its token', (['load', 'upload'] as const).map((how) => {
    const xs = splits.filter((x) => x.how === how);
    return { path: how, ready_ms_median: median(xs.map((x) => x.ready_ms)), first_token_ms_median: median(xs.map((x) => x.first_token_ms)) };
  }));
  printTable('--lora-mode on one workload (4 streams × 96 tokens, one adapter, through the engine)', policy);
  return { ratios: rows, steps: stepRows, loadToFirstTokenMs: loadTimes, uploadToFirstTokenMs: uploadTimes, loadSplits: splits, policy };
}

// The same single-adapter workload under each --lora-mode: wall time, merged builds, and what the
// auto policy's cost model saw.
async function policyBench(dir: string, cfg: ModelConfig, quick: boolean): Promise<Record<string, string | number>[]> {
  const out: Record<string, string | number>[] = [];
  const files = () => adapterFiles(cfg, { rank: 16, seed: 300 }); // an upload takes its files over: one copy per mode
  for (const mode of ['unmerged', 'auto', 'merged'] as const) {
    const engine = await startEngine({ runtime: { modelDir: dir, maxContext: 512 }, adapters: { loraMode: mode } });
    const registry = new AdapterRegistry(engine, cfg, 'llama-110m', 64, new AdapterStore(mkdtempSync(join(tmpdir(), 'loraserve-policy-'))));
    await registry.upload('hot', files(), { replace: false });
    const paths = new Map<string, number>();
    engine.onStep = (s) => { if (s.kind === 'decode') paths.set(s.path, (paths.get(s.path) ?? 0) + 1); };
    const t0 = performance.now();
    const n = quick ? 48 : 96;
    await Promise.all(Array.from({ length: 4 }, async (_, i) => {
      const ref = registry.acquire('hot');
      for await (const ev of engine.generate({ promptTokens: [1, 2, 3, i + 4], maxTokens: n, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: null, adapter: ref })) void ev;
      registry.release(ref);
    }));
    const wall = performance.now() - t0;
    const st = await engine.stats();
    out.push({ mode, wall_ms: wall, tok_s: (4 * n * 1000) / wall, builds: st.merged.builds, merged_steps: paths.get('merged') ?? 0, unmerged_steps: paths.get('unmerged') ?? 0, build_ms: st.merged.lastBuildMs });
    await engine.close();
  }
  return out;
}
