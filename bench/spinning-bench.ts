// The intra-op pool's spinning (session.ts `Spinning`, docs/architecture.md "Spinning"), on the
// 110M model's served graph (buildServedGraph, as the engine runs it, no adapter), float32 and int4:
//   - speed: decode steps at batch 1 (contexts 16 and 512, the latter in the served 640 lane) and at
//     batch 16 (context 16), one session per setting, interleaved round by round, median per setting;
//   - idle cost: the process's CPU time over rounds of 3 decode steps then a 100 ms sleep, per
//     setting ('always' is onnxruntime's default: its threads keep spinning after a run returns).
// Ratios are within one run. `npm run bench -- --only spinning`.
import { loadModel } from '../src/runtime/model-loader.ts';
import { buildServedGraph } from '../src/runtime/llama-graph.ts';
import type { GraphQuant } from '../src/runtime/llama-graph.ts';
import { createSession } from '../src/runtime/session.ts';
import type { ort, Spinning } from '../src/runtime/session.ts';
import { StepRunner } from '../src/runtime/step.ts';
import { KvArena } from '../src/runtime/kv-arena.ts';
import { laneCapacities } from '../src/runtime/lanes.ts';
import { SERVED_LANE_GROWTH } from '../src/runtime/model-runtime.ts';
import { llama110mDir } from './bench-models.ts';
import { median, printTable } from './stats.ts';

const SETTINGS: Spinning[] = ['off', 'during-run', 'always'];
const MAX_POSITIONS = 1024;

interface Case { name: string; batch: number; ctx: number }
const CASES: Case[] = [
  { name: 'b1_ctx16', batch: 1, ctx: 16 },
  { name: 'b1_ctx512', batch: 1, ctx: 512 },
  { name: 'b16_ctx16', batch: 16, ctx: 16 },
];

// A case's decode step on one session: rows prefilled to `ctx`, then one token per row per call.
async function decoder(session: ort.InferenceSession, cfg: ReturnType<typeof loadModel>['config'], c: Case): Promise<() => Promise<number>> {
  const capacity = laneCapacities(MAX_POSITIONS, SERVED_LANE_GROWTH).find((x) => x >= c.ctx + 128) ?? MAX_POSITIONS;
  const kv = new KvArena(cfg.numLayers, cfg.numKvHeads, cfg.headDim, capacity);
  const runner = new StepRunner(session, cfg, MAX_POSITIONS, kv, null);
  kv.ensure(c.batch);
  for (let r = 0; r < c.batch; r++) {
    for (let off = 0; off < c.ctx; off += 256) {
      const n = Math.min(256, c.ctx - off);
      await runner.run([{ row: r, tokens: Array.from({ length: n }, (_, i) => ((off + i) * 7919 + r) % cfg.vocabSize) }]);
    }
  }
  let tok = 11;
  return async () => {
    // keep within the lane: restart the rows' lengths at ctx (the positions written again are the same cost)
    if (kv.lengths[0] >= capacity - 1) for (let r = 0; r < c.batch; r++) kv.lengths[r] = c.ctx;
    const t0 = performance.now();
    await runner.run(Array.from({ length: c.batch }, (_, r) => ({ row: r, tokens: [tok++ % cfg.vocabSize] })));
    return performance.now() - t0;
  };
}

async function idleCpuMs(step: () => Promise<number>, rounds: number): Promise<number> {
  const u0 = process.cpuUsage();
  for (let i = 0; i < rounds; i++) {
    for (let s = 0; s < 3; s++) await step();
    await new Promise((r) => setTimeout(r, 100));
  }
  const u = process.cpuUsage(u0);
  return (u.user + u.system) / 1000;
}

export async function spinningBench(o: { quick: boolean }): Promise<Record<string, unknown>> {
  const model = loadModel(llama110mDir());
  const cfg = model.config;
  const quants: [string, GraphQuant | null][] = [['f32', null], ['int4', { bits: 4, block: 32, symmetric: true, accuracyLevel: 4 }]];
  const rounds = o.quick ? 3 : 8;
  const stepsPerRound = o.quick ? 6 : 12;
  const rows: Record<string, string | number>[] = [];
  const idle: Record<string, string | number>[] = [];
  for (const [qname, quant] of quants) {
    console.log(`\nspinning: ${qname} served graph, ${SETTINGS.join(' / ')} …`);
    const graph = buildServedGraph(cfg, model.weights, { maxPositions: MAX_POSITIONS, quant });
    const sessions = new Map<Spinning, ort.InferenceSession>();
    for (const s of SETTINGS) sessions.set(s, await createSession(graph, { spinning: s }));
    try {
      for (const c of CASES) {
        const steps = new Map<Spinning, () => Promise<number>>();
        for (const s of SETTINGS) steps.set(s, await decoder(sessions.get(s)!, cfg, c));
        const times = new Map<Spinning, number[]>(SETTINGS.map((s) => [s, []]));
        for (const s of SETTINGS) for (let i = 0; i < 3; i++) await steps.get(s)!(); // warm-up
        for (let k = 0; k < rounds; k++) {
          for (const s of SETTINGS) for (let i = 0; i < stepsPerRound; i++) times.get(s)!.push(await steps.get(s)!());
        }
        const ms = (s: Spinning): number => median(times.get(s)!);
        rows.push({ weights: qname, case: c.name, off_ms: ms('off'), during_run_ms: ms('during-run'), always_ms: ms('always'), speedup_during_run: ms('off') / ms('during-run') });
      }
      const base = CASES[0];
      const cpu: Record<string, number> = {};
      for (let k = 0; k < (o.quick ? 1 : 2); k++) {
        for (const s of SETTINGS) {
          const step = await decoder(sessions.get(s)!, cfg, base);
          const v = await idleCpuMs(step, 10);
          cpu[s] = Math.min(cpu[s] ?? Infinity, v);
        }
      }
      idle.push({ weights: qname, off_cpu_ms: cpu.off, during_run_cpu_ms: cpu['during-run'], always_cpu_ms: cpu.always });
    } finally {
      for (const s of sessions.values()) await s.release();
      (globalThis as { gc?: () => void }).gc?.();
    }
  }
  printTable('spinning: decode step (median ms; speedup = off / during-run)', rows);
  printTable('spinning: process CPU ms over 10 × (3 decode steps + 100 ms sleep), best of the passes', idle);
  return { rounds, steps_per_round: stepsPerRound, steps: rows, idle_cpu: idle };
}
