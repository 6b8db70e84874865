// Runtime benchmark (issue: foundation): prefill and decode speed on stories260K and the synthetic
// 110M model, next to the memory-bandwidth floor measured in the same run.
import { loadModel } from '../src/runtime/model-loader.ts';
import { buildLlamaGraph } from '../src/runtime/llama-graph.ts';
import { createSession, ort } from '../src/runtime/session.ts';
import { GraphBuilder, int } from '../src/runtime/graph/ir.ts';
import { StepRunner } from '../src/runtime/step.ts';
import { KvArena } from '../src/runtime/kv-arena.ts';
import { BASE_CAPACITY } from '../src/runtime/lanes.ts';

const laneCapacity = (n: number): number => { let c = BASE_CAPACITY; while (c < n) c *= 2; return c; };
import { STORIES_DIR, llama110mDir } from './bench-models.ts';
import { median, printTable } from './stats.ts';

// Read bandwidth as onnxruntime achieves it: ReduceSum over a 512 MiB fed tensor (zero-copy feed).
export async function measureBandwidth(): Promise<{ gbPerSecond: number; bytes: number }> {
  const n = 128 * 1024 * 1024;
  const b = new GraphBuilder('bandwidth');
  const x = b.input('x', 'float32', [n]);
  b.op('ReduceSum', [x], { keepdims: int(0) }, { out: 'y' });
  b.output('y', 'float32', []);
  const session = await createSession(b.build());
  const data = new Float32Array(n).fill(1);
  const feed = { x: new ort.Tensor('float32', data, [n]) };
  await session.run(feed);
  const times: number[] = [];
  for (let i = 0; i < 7; i++) {
    const t0 = performance.now();
    await session.run(feed);
    times.push(performance.now() - t0);
  }
  const best = Math.min(...times);
  await session.release();
  return { gbPerSecond: (n * 4) / (best / 1000) / 1e9, bytes: n * 4 };
}

interface ModelResult {
  model: string;
  params_m: number;
  weight_mb: number;
  prefill_512_tok_s: number;
  decode_b1_tok_s: number;
  decode_step_ms_ctx16: number;
  decode_step_ms_ctx1024: number;
  floor_ms: number;
  decode_vs_floor: number;
  ctx1024_vs_ctx16: number;
}

// The plain graph (buildLlamaGraph's default: baked linear weights, no adapter) driven by one
// StepRunner, as the runtime bench times it. The serving bench (serving-bench.ts) opens one in its
// own process to compare a served decode step with the plain graph's, in the same run.
export interface PlainGraph {
  name: string;
  params: number;
  bytes: number;
  maxPositions: number;
  // best of `reps` single-row prefill steps of `len` tokens (ms each)
  prefill(len: number, reps: number): Promise<number[]>;
  // median step time of one row decoding `steps` tokens after a context of `ctx` (the first 2 dropped)
  decodeAt(ctx: number, steps: number, capacity?: number): Promise<number>;
  release(): Promise<void>;
}

export async function openPlainGraph(name: string, dir: string): Promise<PlainGraph> {
  const model = loadModel(dir);
  const cfg = model.config;
  const maxPositions = Math.min(cfg.maxPositions, 2048);
  const session = await createSession(buildLlamaGraph(cfg, model.weights, { maxPositions }));
  let bytes = 0;
  let params = 0;
  for (const w of model.weights.values()) { bytes += w.byteLength; params += w.length; }
  const tok = (i: number): number => (i * 7919 + 3) % cfg.vocabSize;
  const prompt = (n: number): number[] => Array.from({ length: n }, (_, i) => tok(i));
  return {
    name, params, bytes, maxPositions,
    async prefill(len: number, reps: number): Promise<number[]> {
      const kv = new KvArena(cfg.numLayers, cfg.numKvHeads, cfg.headDim, len + 64);
      const runner = new StepRunner(session, cfg, maxPositions, kv, null);
      const times: number[] = [];
      for (let i = 0; i < reps; i++) {
        kv.release(0);
        const t0 = performance.now();
        await runner.run([{ row: 0, tokens: prompt(len) }]);
        times.push(performance.now() - t0);
      }
      return times;
    },
    // a fresh arena per context, so its capacity is that context's (the arena is shared by all rows)
    async decodeAt(ctx: number, steps: number, capacity?: number): Promise<number> {
      // the lane a sequence of this context lives in (lanes.ts): capacity = next power of two, or
      // the one given (the served lanes grow by 1.5)
      const cap = capacity ?? laneCapacity(ctx + steps);
      if (cap < ctx + steps) throw new Error(`decodeAt: capacity ${cap} < ${ctx} + ${steps} positions`);
      const kv = new KvArena(cfg.numLayers, cfg.numKvHeads, cfg.headDim, cap);
      const runner = new StepRunner(session, cfg, maxPositions, kv, null);
      for (let off = 0; off < ctx; off += 256) await runner.run([{ row: 0, tokens: prompt(Math.min(256, ctx - off)) }]);
      const times: number[] = [];
      for (let s = 0; s < steps; s++) {
        const t0 = performance.now();
        await runner.run([{ row: 0, tokens: [tok(ctx + s)] }]);
        times.push(performance.now() - t0);
      }
      return median(times.slice(2));
    },
    release: () => session.release(),
  };
}

async function benchModel(name: string, dir: string, bandwidth: number, quick: boolean): Promise<ModelResult> {
  const g = await openPlainGraph(name, dir);
  // prefill: one 512-token step (context limit permitting), best of 3
  const P = Math.min(512, g.maxPositions - 64);
  const prefillTimes = await g.prefill(P, quick ? 2 : 3);
  const steps = quick ? 12 : 40;
  // the long context's steps run from 1024 − steps up to 1024, so the sequence sits in the 1024 lane
  const ctx1024 = Math.min(1024, g.maxPositions) - steps;
  // interleave the two contexts twice to spread machine noise over both
  const a1 = await g.decodeAt(16, steps);
  const b1 = await g.decodeAt(ctx1024, steps);
  const a2 = await g.decodeAt(16, steps);
  const b2 = await g.decodeAt(ctx1024, steps);
  const ms16 = Math.min(a1, a2);
  const ms1024 = Math.min(b1, b2);
  await g.release();
  const floorMs = (g.bytes / (bandwidth * 1e9)) * 1000;
  return {
    model: name,
    params_m: g.params / 1e6,
    weight_mb: g.bytes / 1e6,
    prefill_512_tok_s: P / (Math.min(...prefillTimes) / 1000),
    decode_b1_tok_s: 1000 / ms16,
    decode_step_ms_ctx16: ms16,
    decode_step_ms_ctx1024: ms1024,
    floor_ms: floorMs,
    decode_vs_floor: ms16 / floorMs,
    ctx1024_vs_ctx16: ms1024 / ms16,
  };
}

export async function runtimeBench(opts: { quick: boolean }): Promise<Record<string, unknown>> {
  const bw = await measureBandwidth();
  printTable('memory bandwidth (onnxruntime ReduceSum over 512 MiB)', [{ gb_per_s: bw.gbPerSecond }]);
  const rows = [
    await benchModel('stories260K', STORIES_DIR, bw.gbPerSecond, opts.quick),
    await benchModel('synthetic-110M', llama110mDir(), bw.gbPerSecond, opts.quick),
  ];
  printTable('runtime (batch 1, CPU EP; floor = weight bytes / bandwidth; targets: 110M decode_vs_floor ≤ 1.5, ctx1024_vs_ctx16 ≤ 1.3)', rows as unknown as Record<string, number | string>[]);
  return { bandwidth_gb_s: bw.gbPerSecond, models: rows };
}
