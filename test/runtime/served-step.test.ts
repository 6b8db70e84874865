// The served step as the scheduler drives it: finer KV lanes (lanes.ts), both token groups in
// different lanes, prompt chunks of different lengths in one step, and a sequence moving up a lane
// all give what a sequence gets alone.
import { describe, expect, it } from 'vitest';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { buildLlamaGraph, buildServedGraph, loraLinear } from '../../src/runtime/llama-graph.ts';
import { createSession } from '../../src/runtime/session.ts';
import { StepRunner } from '../../src/runtime/step.ts';
import { LanePool, laneCapacities } from '../../src/runtime/lanes.ts';
import { SERVED_LANE_GROWTH } from '../../src/runtime/model-runtime.ts';
import { decodeAdapter } from '../../src/adapters/lora-adapter.ts';
import { prepareAdapter } from '../../src/adapters/host-cache.ts';
import { encodeSafetensors } from '../../src/runtime/safetensors.ts';
import { buildAdapter } from '../../scripts/make-test-adapters.ts';
import type { PreparedAdapter } from '../../src/runtime/lora-arena.ts';
import { maxAbsDiff, tokens } from '../helpers/runtime.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const model = loadModel(STORIES_DIR);
const cfg = model.config;
const V = cfg.vocabSize;
const CONTEXT = 512;
const session = await createSession(buildServedGraph(cfg, model.weights, { maxPositions: CONTEXT }), { intraOpThreads: 1 });
const single = await createSession(buildLlamaGraph(cfg, model.weights, { maxPositions: CONTEXT, linear: loraLinear(cfg, model.weights) }), { intraOpThreads: 1 });
const plainSession = await createSession(buildLlamaGraph(cfg, model.weights, { maxPositions: CONTEXT }), { intraOpThreads: 1 });

function adapter(rank: number, seed: number): PreparedAdapter {
  const files = buildAdapter(cfg, { rank, seed, scaleB: 1 }, model.weights);
  const r = decodeAdapter({ config: new TextEncoder().encode(JSON.stringify(files.config)), weights: encodeSafetensors(files.tensors) }, cfg, { maxRank: 64, modelName: 'stories260K' });
  return prepareAdapter(r.adapter!, cfg, (n) => model.weights.get(n)!);
}
const A = adapter(8, 41);
const B = adapter(16, 42);

function expectClose(got: Float32Array, want: Float32Array): void {
  const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 1);
  expect(maxAbsDiff(got, want) / scale).toBeLessThan(1e-5);
}

// One sequence alone in a fresh pool: its prompt (every position's logits), then `decode` tokens.
async function alone(a: PreparedAdapter | null, prompt: number[], decode: number[]): Promise<Float32Array[]> {
  const lanes = new LanePool(cfg, CONTEXT, 2, { laneGrowth: SERVED_LANE_GROWTH });
  const runner = new StepRunner(session, cfg, CONTEXT);
  const slot = lanes.takeSlot();
  const lane = lanes.laneFor(prompt.length + decode.length);
  lane.enter(slot);
  lanes.lora.setRow(slot, a);
  const out = [(await runner.runGroups([{ rows: [{ row: slot, tokens: prompt, allLogits: true }], kv: lane.kv, lora: lanes.lora }, null])).logits];
  for (const t of decode) out.push((await runner.runGroups([null, { rows: [{ row: slot, tokens: [t] }], kv: lane.kv, lora: lanes.lora }])).logits);
  return out;
}

describe('KV lanes', () => {
  it('capacities grow by the factor, rounded up to 128, up to the context', () => {
    expect(laneCapacities(2048)).toEqual([128, 256, 512, 1024, 2048]);
    expect(laneCapacities(2048, 1.5)).toEqual([128, 256, 384, 640, 1024, 1536, 2048]);
    expect(laneCapacities(2048, 1.25)).toEqual([128, 256, 384, 512, 640, 896, 1152, 1536, 1920, 2048]);
    expect(laneCapacities(100, 1.5)).toEqual([100]);
    expect(() => laneCapacities(512, 1)).toThrow(/above 1/);
    const lanes = new LanePool(cfg, 2048, 2, { laneGrowth: 1.5 });
    expect(lanes.laneFor(512 + 128).capacity).toBe(640);
    expect(lanes.laneFor(641).capacity).toBe(1024);
  });
});

describe('served graph', () => {
  it('runs the plain body when no token has an adapter, the LoRA body when one does (bit for bit)', async () => {
    const run = async (s: typeof session, a: PreparedAdapter | null) => {
      const lanes = new LanePool(cfg, CONTEXT, 2);
      const runner = new StepRunner(s, cfg, CONTEXT);
      const slot = lanes.takeSlot();
      const lane = lanes.laneFor(64);
      lane.enter(slot);
      lanes.lora.setRow(slot, a);
      const out = [(await runner.runGroups([{ rows: [{ row: slot, tokens: tokens(9, V, 11), allLogits: true }], kv: lane.kv, lora: lanes.lora }, null])).logits];
      out.push((await runner.runGroups([null, { rows: [{ row: slot, tokens: [7] }], kv: lane.kv, lora: lanes.lora }])).logits);
      return Float32Array.from(out.flatMap((x) => [...x]));
    };
    expect(maxAbsDiff(await run(session, null), await run(plainSession, null))).toBe(0);
    expect(maxAbsDiff(await run(session, A), await run(single, A))).toBe(0);
    expect(maxAbsDiff(await run(session, A), await run(session, null))).toBeGreaterThan(1e-2);
  });
});

describe('served steps', () => {
  it('prompt chunks of different lengths in group 0 (adapters A, B, none) equal running them one by one', async () => {
    const prompts = [tokens(37, V, 1), tokens(5, V, 2), tokens(90, V, 3), tokens(1, V, 4)];
    const adapters = [A, B, null, A];
    const lone = await Promise.all(prompts.map((p, i) => alone(adapters[i], p, [])));
    const lanes = new LanePool(cfg, CONTEXT, 4, { laneGrowth: SERVED_LANE_GROWTH });
    const runner = new StepRunner(session, cfg, CONTEXT);
    const lane = lanes.laneFor(128);
    const slots = prompts.map((_, i) => { const s = lanes.takeSlot(); lane.enter(s); lanes.lora.setRow(s, adapters[i]); return s; });
    const r = await runner.runGroups([{ rows: slots.map((row, i) => ({ row, tokens: prompts[i], allLogits: true })), kv: lane.kv, lora: lanes.lora }, null]);
    prompts.forEach((p, i) => {
      const off = r.rowOffsets[i];
      expectClose(r.logits.subarray(off * V, (off + p.length) * V), lone[i][0]);
      expect(lane.kv.lengths[slots[i]]).toBe(p.length);
    });
  });

  it('group 0 in one lane and group 1 in another, then a sequence moving up to the next lane: each as alone', async () => {
    const short = tokens(20, V, 5);
    const long = tokens(250, V, 6);
    const late = tokens(30, V, 7);
    const decode = tokens(12, V, 8);
    const loneShort = await alone(A, short, decode);
    const loneLong = await alone(B, long, decode);
    const loneLate = await alone(null, late, []);
    const lanes = new LanePool(cfg, CONTEXT, 4, { laneGrowth: SERVED_LANE_GROWTH });
    const runner = new StepRunner(session, cfg, CONTEXT);
    const s0 = lanes.takeSlot();
    const s1 = lanes.takeSlot();
    let lane0 = lanes.laneFor(short.length);          // 128
    let lane1 = lanes.laneFor(long.length + 4);       // 256: it outgrows it while decoding
    lane0.enter(s0);
    lane1.enter(s1);
    lanes.lora.setRow(s0, A);
    lanes.lora.setRow(s1, B);
    expectClose((await runner.runGroups([{ rows: [{ row: s0, tokens: short, allLogits: true }], kv: lane0.kv, lora: lanes.lora }, null])).logits, loneShort[0]);
    expectClose((await runner.runGroups([{ rows: [{ row: s1, tokens: long, allLogits: true }], kv: lane1.kv, lora: lanes.lora }, null])).logits, loneLong[0]);
    // a prompt in lane 128 rides in the long sequence's decode step in lane 256
    const s2 = lanes.takeSlot();
    lanes.laneFor(late.length).enter(s2);
    const mixed = await runner.runGroups([
      { rows: [{ row: s2, tokens: late, allLogits: true }], kv: lanes.laneFor(late.length).kv, lora: lanes.lora },
      { rows: [{ row: s1, tokens: [decode[0]] }], kv: lane1.kv, lora: lanes.lora },
    ]);
    expectClose(mixed.logits.subarray(0, late.length * V), loneLate[0]);
    expectClose(mixed.logits.subarray(late.length * V, (late.length + 1) * V), loneLong[1]);
    expectClose((await runner.runGroups([null, { rows: [{ row: s0, tokens: [decode[0]] }], kv: lane0.kv, lora: lanes.lora }])).logits, loneShort[1]);
    for (let i = 1; i < decode.length; i++) {
      if (lane1.kv.lengths[s1] + 1 > lane1.capacity) lane1 = lanes.migrate(lane1, s1, lane1.kv.lengths[s1] + 1);
      if (lane0 !== lane1 && lanes.lanes.indexOf(lane0) < lanes.lanes.indexOf(lane1)) lane0 = lanes.moveTo(lane0, s0, lane1); // folded in
      const r = await runner.runGroups([null, { rows: [{ row: s0, tokens: [decode[i]] }, { row: s1, tokens: [decode[i]] }], kv: lane1.kv, lora: lanes.lora }]);
      expectClose(r.logits.subarray(0, V), loneShort[i + 1]);
      expectClose(r.logits.subarray(V, 2 * V), loneLong[i + 1]);
    }
    expect(lane1.capacity).toBe(384);
  });
});
