// The LoRA slot arena (lora-arena.ts): one copy of an adapter's factors per slot, shared by every
// row on that adapter version; the stored rank follows the ranks resident now; a byte budget; and
// steps that mix adapters, ranks, DoRA and prompt chunks give each row what it gets alone.
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { decodeAdapter } from '../../src/adapters/lora-adapter.ts';
import { prepareAdapter } from '../../src/adapters/host-cache.ts';
import { LoraArena } from '../../src/runtime/lora-arena.ts';
import { pickBand } from '../../src/runtime/lora-feeds.ts';
import type { PreparedAdapter } from '../../src/runtime/lora-arena.ts';
import { LanePool } from '../../src/runtime/lanes.ts';
import { encodeSafetensors } from '../../src/runtime/safetensors.ts';
import { buildAdapter } from '../../scripts/make-test-adapters.ts';
import type { AdapterSpec } from '../../scripts/make-test-adapters.ts';
import { makeRunner, maxAbsDiff, tokens } from '../helpers/runtime.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const model = loadModel(STORIES_DIR);
const cfg = model.config;
const cfgJson = JSON.parse(readFileSync(`${STORIES_DIR}/config.json`, 'utf8'));
const V = cfg.vocabSize;
const readBase = (n: string) => model.weights.get(n)!;

function adapter(spec: AdapterSpec): PreparedAdapter {
  const files = buildAdapter(cfg, spec, model.weights);
  const r = decodeAdapter({ config: new TextEncoder().encode(JSON.stringify(files.config)), weights: encodeSafetensors(files.tensors) }, cfg, { maxRank: 64, modelName: 'stories260K' });
  if (!r.adapter) throw new Error(r.problems.join('; '));
  return prepareAdapter(r.adapter, cfg, readBase);
}

const R4 = adapter({ rank: 4, targets: ['q_proj', 'v_proj'], seed: 21, scaleB: 1 });
const R8 = adapter({ rank: 8, alpha: 16, seed: 23, scaleB: 1 });
const R16 = adapter({ rank: 16, seed: 24, scaleB: 1 });
const R64 = adapter({ rank: 64, alpha: 32, seed: 22, scaleB: 1 });
const DORA = adapter({ rank: 8, alpha: 8, dora: true, seed: 25, scaleB: 1 });
// an arena's bytes per slot and unit of rank: Σ over targets of (in + out) floats
const perRank = new LoraArena(cfg);
perRank.setRow(0, R8);
const UNIT = perRank.bytes / 8;

describe('LoRA slots', () => {
  it('rows on the same adapter version share one slot: its bytes are counted once; a slot is freed with its last row', () => {
    const arena = new LoraArena(cfg);
    arena.setRow(0, R8);
    const one = arena.bytes;
    expect(one).toBe(8 * UNIT);
    arena.setRow(3, R8);
    arena.setRow(5, { ...R8 }); // another object, the same version
    expect(arena.bytes).toBe(one);
    expect(arena.slotsInUse).toBe(1);
    expect(arena.slotOf(3)).toBe(arena.slotOf(0));
    arena.setRow(1, R16);
    expect(arena.slotsInUse).toBe(2);
    expect(arena.rank).toBe(16);
    expect(arena.bytes).toBe(2 * 16 * UNIT);
    for (const row of [0, 3]) arena.setRow(row, null);
    expect(arena.slotsInUse).toBe(2); // row 5 still holds R8
    arena.setRow(5, null);
    expect(arena.slotsInUse).toBe(1);
    expect(arena.adapterAt(1)).toBe(R16);
    expect(arena.adapterAt(0)).toBeNull();
  });

  it('the stored rank follows the ranks resident now: after a rank-64 adapter leaves, the arena is rank 4 again', () => {
    const arena = new LoraArena(cfg);
    arena.setRow(0, R4);
    expect(arena.rank).toBe(4);
    arena.setRow(1, R64);
    expect(arena.rank).toBe(64);
    const withR64 = arena.bytes;
    expect(withR64).toBe(2 * 64 * UNIT);
    arena.setRow(1, null);
    expect(arena.rank).toBe(4);
    // what rank 4 needs, plus at most the freed slot's pages kept as a spare
    expect(arena.bytes).toBeLessThanOrEqual(4 * UNIT + 64 * UNIT);
    expect(arena.bytes).toBeLessThan(withR64);
    // the next slot takes the spare's pages: then exactly what is resident is committed
    arena.setRow(2, R8);
    expect(arena.rank).toBe(8);
    expect(arena.bytes).toBe(2 * 8 * UNIT);
    arena.setRow(0, null);
    arena.setRow(2, null);
    expect(arena.slotsInUse).toBe(0);
    expect(arena.rank).toBe(0);
    expect(arena.bytes).toBeLessThanOrEqual(8 * UNIT); // one spare slot at most
  });

  it('a byte budget: canHold says whether an adapter fits, setRow refuses what does not, a resident version always fits', () => {
    const arena = new LoraArena(cfg, { maxBytes: 2 * 8 * UNIT });
    expect(arena.canHold(R8)).toBe(true);
    arena.setRow(0, R8);
    expect(arena.canHold(DORA)).toBe(false); // rank 8, but its DoRA multipliers need room too
    expect(arena.canHold(R16)).toBe(false);  // two slots at rank 16
    expect(arena.canHold(R4)).toBe(true);    // two slots at rank 8
    arena.setRow(1, R4);
    expect(arena.canHold(R64)).toBe(false);
    expect(arena.canHold(R8)).toBe(true);    // resident: shared
    expect(() => arena.setRow(2, R16)).toThrow(/does not fit/);
    expect(arena.adapterAt(2)).toBeNull();
    arena.setRow(2, R8);
    expect(arena.bytes).toBeLessThanOrEqual(arena.maxBytes);
    arena.setRow(1, null);
    expect(arena.canHold(R16)).toBe(false);  // one slot of 16 would fit, two would not
    arena.setRow(0, null);
    arena.setRow(2, null);
    expect(arena.canHold(R16)).toBe(true);
    arena.setRow(0, R16);
    expect(arena.bytes).toBeLessThanOrEqual(arena.maxBytes);
    // the budget is passed through the lane pool
    const lanes = new LanePool(cfg, 512, 4, { loraArenaBytes: 8 * UNIT });
    expect(lanes.lora.canHold(R8)).toBe(true);
    expect(lanes.lora.canHold(R16)).toBe(false);
  });
});

// Runs `prompts[i]` then 3 decode tokens for row i under adapters[i]: alone (a fresh runner each),
// then all rows together in one runner, checking every logits row against the lone run.
async function alone(a: PreparedAdapter | null, prompt: number[], decode: number[]): Promise<Float32Array[]> {
  const { runner, newRow } = await makeRunner(cfgJson, model.weights, 128, { lora: true });
  const row = newRow();
  runner.lora!.setRow(row, a);
  const out = [(await runner.run([{ row, tokens: prompt, allLogits: true }])).logits];
  for (const t of decode) out.push((await runner.run([{ row, tokens: [t] }])).logits);
  return out;
}

const DECODE = [300, 301, 302];
// float32 rounding differs with the batch's shape (GEMM blocking): 1e-5 relative to the logits' scale
const TOL = 1e-5;
function expectClose(got: Float32Array, want: Float32Array): void {
  const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 1);
  expect(maxAbsDiff(got, want) / scale).toBeLessThan(TOL);
}
const PROMPTS = [[1, 403, 407, 261, 378, 432, 383], [1, 317, 269, 274, 287], [1, 403], [1, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [1, 44, 45, 46]];

describe('mixed steps equal each row alone', () => {
  it('mixed ranks, a shared adapter, DoRA, no adapter and a freed slot between rows: prompts together in group 0, then decode together', async () => {
    const adapters = [R4, R64, null, R4, DORA];
    const lone = await Promise.all(adapters.map((a, i) => alone(a, PROMPTS[i], DECODE)));
    // each adapter matters: without it the same prompt gives other logits
    const bare = await Promise.all(adapters.map((_, i) => alone(null, PROMPTS[i], [])));
    adapters.forEach((a, i) => { if (a) expect(maxAbsDiff(lone[i][0], bare[i][0])).toBeGreaterThan(1e-2); });
    const { runner, newRow } = await makeRunner(cfgJson, model.weights, 128, { lora: true });
    const rows = adapters.map(() => newRow());
    const gone = newRow();
    runner.lora!.setRow(rows[0], R4);
    runner.lora!.setRow(gone, R16); // takes a slot between R4's and R64's, then leaves: a stale slot in the view
    adapters.forEach((a, i) => { if (i > 0) runner.lora!.setRow(rows[i], a); });
    runner.lora!.setRow(gone, null);
    expect(runner.lora!.slotsInUse).toBe(3); // R4 (twice), R64, DORA
    // five prompt chunks of different lengths in one step (group 0)
    const pre = await runner.run(rows.map((row, i) => ({ row, tokens: PROMPTS[i], allLogits: true })));
    rows.forEach((_, i) => {
      const n = PROMPTS[i].length;
      const off = pre.rowOffsets[i];
      expectClose(pre.logits.subarray(off * V, (off + n) * V), lone[i][0]);
    });
    for (const [s, t] of DECODE.entries()) {
      const r = await runner.run(rows.map((row) => ({ row, tokens: [t] })));
      rows.forEach((_, i) => expectClose(r.logits.subarray(i * V, (i + 1) * V), lone[i][s + 1]));
    }
  });

  it('prompt chunks ride in a decode step of five slots (band 0 picks them, band 1 the decode tokens): every row as alone', async () => {
    const decoders = [R16, null, R8, R4, DORA];
    const lone = await Promise.all(decoders.map((a, i) => alone(a, PROMPTS[i], DECODE)));
    const chunks = [tokens(30, V, 31), tokens(12, V, 32)];
    const loneChunks = [await alone(R64, chunks[0], []), await alone(R8, chunks[1], [])]; // R8 also decodes in the step
    const { runner, newRow } = await makeRunner(cfgJson, model.weights, 128, { lora: true });
    const rows = decoders.map(() => newRow());
    decoders.forEach((a, i) => runner.lora!.setRow(rows[i], a));
    for (const [i, row] of rows.entries()) await runner.run([{ row, tokens: PROMPTS[i] }]);
    const late = [newRow(), newRow()];
    runner.lora!.setRow(late[0], R64);
    runner.lora!.setRow(late[1], R8);
    // the two chunks would pad the five band-1 entries to 30 tokens: they go to band 0
    const slotRows = [...rows, ...late].map((row) => ({ r: { row, first: 0, count: late.includes(row) ? chunks[late.indexOf(row)].length : 1 }, slot: runner.lora!.slotOf(row) })).filter((x) => x.slot >= 0);
    expect([...pickBand(slotRows, 5)].map((x) => x.r.row).sort()).toEqual(late);
    const kv = runner.kv!;
    const r = await runner.runGroups([
      { rows: late.map((row, i) => ({ row, tokens: chunks[i], allLogits: true })), kv, lora: runner.lora },
      { rows: rows.map((row) => ({ row, tokens: [DECODE[0]] })), kv, lora: runner.lora },
    ]);
    chunks.forEach((c, i) => {
      const off = r.rowOffsets[i];
      expectClose(r.logits.subarray(off * V, (off + c.length) * V), loneChunks[i][0]);
    });
    rows.forEach((_, i) => {
      const o = r.rowOffsets[2 + i];
      expectClose(r.logits.subarray(o * V, (o + 1) * V), lone[i][1]);
    });
  });

  it('band choice: decode tokens and equal chunks stay in place; a long chunk among many decode slots is picked', () => {
    const rows = (counts: number[], slots = counts.map((_, i) => i)) => counts.map((count, i) => ({ r: { row: i, first: 0, count }, slot: slots[i] }));
    expect(pickBand(rows(Array(32).fill(1)), 32).size).toBe(0);
    expect(pickBand(rows(Array(8).fill(16)), 8).size).toBe(0);   // prompts that arrived together
    expect(pickBand(rows([256]), 1).size).toBe(0);               // a prefill alone
    const mixed = rows([64, ...Array(31).fill(1)]);
    expect([...pickBand(mixed, 32)].map((x) => x.r.row)).toEqual([0]);
    expect(pickBand(rows([64, 1], [0, 0]), 1).size).toBe(0);     // one slot: nothing to pad
  });

  it('a rank-4 step beside a resident rank-64 adapter is fed at rank 4 (a narrow copy): as alone', async () => {
    const lone = await alone(R4, PROMPTS[0], DECODE);
    const { runner, newRow } = await makeRunner(cfgJson, model.weights, 128, { lora: true });
    const row = newRow();
    const big = newRow();
    const arena = runner.lora!;
    arena.setRow(row, R4);
    arena.setRow(big, R64);
    expect(arena.rank).toBe(64);
    const before = arena.bytes;
    expectClose((await runner.run([{ row, tokens: PROMPTS[0], allLogits: true }])).logits, lone[0]);
    for (const [s, t] of DECODE.entries()) expectClose((await runner.run([{ row, tokens: [t] }])).logits, lone[s + 1]);
    const feeds = arena.feeds([{ row, first: 0, count: 1 }], 1);
    expect(feeds['lora_a.0.q_proj'].dims).toEqual([1, 4, cfg.hiddenSize]);
    expect(arena.bytes - before).toBe(4 * UNIT); // the copy: one slot at rank 4, reused step after step
    // with both in the step, the arena is fed in place at rank 64
    expect(arena.feeds([{ row, first: 0, count: 1 }, { row: big, first: 1, count: 1 }], 2)['lora_a.0.q_proj'].dims).toEqual([2, 64, cfg.hiddenSize]);
    // under a budget with no room for the copy, the padded views serve
    const tight = new LoraArena(cfg, { maxBytes: 2 * 64 * UNIT });
    tight.setRow(0, R4);
    tight.setRow(1, R64);
    expect(tight.feeds([{ row: 0, first: 0, count: 1 }], 1)['lora_a.0.q_proj'].dims).toEqual([1, 64, cfg.hiddenSize]);
    expect(tight.bytes).toBeLessThanOrEqual(tight.maxBytes);
  });

  it('after the rank-64 adapter leaves and the arena shrinks, a rank-4 row still gets what it gets alone', async () => {
    const lone = await alone(R4, PROMPTS[0], DECODE);
    const { runner, newRow } = await makeRunner(cfgJson, model.weights, 128, { lora: true });
    const big = newRow();
    const row = newRow();
    runner.lora!.setRow(big, R64);
    runner.lora!.setRow(row, R4);
    await runner.run([{ row: big, tokens: [1, 2, 3] }]);
    const pre = await runner.run([{ row, tokens: PROMPTS[0], allLogits: true }]);
    expectClose(pre.logits, lone[0]);
    runner.lora!.setRow(big, null);
    expect(runner.lora!.rank).toBe(4);
    for (const [s, t] of DECODE.entries()) expectClose((await runner.run([{ row, tokens: [t] }])).logits, lone[s + 1]);
  });
});
