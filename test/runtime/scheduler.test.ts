// The scheduler over a fake step runner (no model): fairness, adapter loading off the critical
// path, the KV budget, chunked prefill interleaving with decode, cancellation.
import { describe, expect, it, vi } from 'vitest';
import { Scheduler } from '../../src/runtime/scheduler.ts';
import type { SchedulerLimits, StepCost, StepStats } from '../../src/runtime/scheduler.ts';
import { Sequence } from '../../src/runtime/sequence.ts';
import type { SequenceLimits } from '../../src/runtime/sequence.ts';
import type { StepGroup, StepRow, StepRunner } from '../../src/runtime/step.ts';
import { LanePool } from '../../src/runtime/lanes.ts';
import type { AdapterSource } from '../../src/runtime/adapter-source.ts';
import type { AdapterRef, GenerateRequest, TokenEvent } from '../../src/runtime/generate-request.ts';
import type { PreparedAdapter } from '../../src/runtime/lora-arena.ts';
import { DEFAULT_SAMPLING } from '../../src/runtime/sampler.ts';
import { TextTokenizer } from '../../src/runtime/tokenizer.ts';
import { loadModelFiles } from '../../src/runtime/model-loader.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const files = loadModelFiles(STORIES_DIR);
const tok = new TextTokenizer(files.tokenizerJson, files.tokenizerConfig);
const V = 512;
const LIMITS: SequenceLimits = { numLayers: 1, numKvHeads: 1, headDim: 8, maxContext: 4096, eosTokenIds: [2], vocabSize: V };

// Runs no model: records each step, advances the lanes' KV lengths, and always picks token 300.
// With `stepMs`, a step also takes that long, as a model's would for its tokens and rows: on a
// fake clock (performance.now, mocked by the test), so a busy machine cannot stretch it.
type StepMs = (promptTokens: number, decodeRows: number) => number;
const fakeClock = { ms: 0 };
function fakeRunner(log: { kind: string; rows: number[]; tokens: number; capacity: number; promptRows: number }[], coldDecodeReads: number[] = [], stepMs?: StepMs) {
  const runner = {
    maxPositions: 4096,
    async runGroups(groups: [StepGroup | null, StepGroup | null]) {
      const rows: StepRow[] = [];
      for (const g of groups) {
        if (!g) continue;
        for (const r of g.rows) {
          if (g.kv.lengths[r.row] + r.tokens.length > g.kv.capacity) throw new Error('row overflows its lane');
          if (g === groups[0] && !g.kv.isWarm(r.row)) throw new Error('a prompt chunk reads a KV row that is not warm yet');
          if (g !== groups[0] && !g.kv.isWarm(r.row)) coldDecodeReads.push(g.kv.capacity);
          g.kv.lengths[r.row] += r.tokens.length;
          rows.push(r);
        }
      }
      const kind = groups[0] && groups[1] ? 'mixed' : groups[0] ? 'prefill' : 'decode';
      const promptRows = groups[0]?.rows.length ?? 0;
      log.push({ kind, rows: rows.map((r) => r.row), tokens: rows.reduce((a, r) => a + r.tokens.length, 0), capacity: (groups[1] ?? groups[0])!.kv.capacity, promptRows });
      if (stepMs) fakeClock.ms += stepMs(groups[0]?.rows.reduce((a, r) => a + r.tokens.length, 0) ?? 0, groups[1]?.rows.length ?? 0);
      await new Promise((r) => setImmediate(r));
      const logits = new Float32Array(rows.length * V);
      rows.forEach((_, i) => { logits[i * V + 300] = 10; });
      return { logits, rowOffsets: rows.map((_, i) => i), vocabSize: V, hidden: new Float32Array(0), hiddenOffsets: rows.map(() => -1), hiddenSize: 0 };
    },
  };
  return { runner: runner as unknown as StepRunner };
}

const ref = (name: string): AdapterRef => ({ name, version: `v-${name}`, dir: '/nowhere' });
const request = (over: Partial<GenerateRequest> = {}): GenerateRequest => ({
  promptTokens: [1, 403, 407], maxTokens: 10, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: null, adapter: null, ...over,
});

function harness(limits: Partial<SchedulerLimits> = {}, adapters: AdapterSource | null = null, cost?: StepCost, kvDims = { numKvHeads: 1, headDim: 8 }, stepMs?: StepMs) {
  const log: { kind: string; rows: number[]; tokens: number; capacity: number; promptRows: number }[] = [];
  const coldDecodeReads: number[] = []; // lane capacity of each decode row read before it was warm
  const { runner } = fakeRunner(log, coldDecodeReads, stepMs);
  const finished: string[] = [];
  const doneAt = new Map<string, number>();
  const events = new Map<string, TokenEvent[]>();
  const lanes = new LanePool({ ...files.config, numLayers: 1, ...kvDims }, 4096, limits.maxRunning ?? 4);
  const s = new Scheduler(runner, lanes, { maxRunning: 4, prefillChunk: 256, kvBudgetBytes: 1 << 30, ...limits }, (id, evs) => {
    events.set(id, [...(events.get(id) ?? []), ...evs]);
    if (evs.some((e) => e.type === 'done' || e.type === 'error')) { finished.push(id); doneAt.set(id, log.length); }
  }, adapters, null, cost);
  const steps: StepStats[] = [];
  s.onStep = (st) => steps.push(st);
  const submit = (id: string, r: GenerateRequest) => s.submit(new Sequence(id, r, tok, LIMITS));
  const drain = async (max = 10_000) => { let n = 0; while (!s.idle && n++ < max) await s.tick(); return n; };
  return { s, log, finished, doneAt, events, steps, submit, drain, lanes, coldDecodeReads, runner };
}

const readySource = (): AdapterSource => ({
  acquire: (r) => ({ version: r.version, rank: 4, useDora: false, targets: [], bytes: 0 }) as PreparedAdapter,
  failure: () => undefined, pin() {}, unpin() {}, onSettled() {},
});

describe('scheduler', () => {
  it('admits in arrival order: a rare adapter is not starved by a popular one', async () => {
    const h = harness({ maxRunning: 2 }, readySource());
    for (let i = 0; i < 6; i++) h.submit(`pop${i}`, request({ adapter: ref('pop') }));
    h.submit('rare', request({ adapter: ref('rare') }));
    for (let i = 6; i < 12; i++) h.submit(`pop${i}`, request({ adapter: ref('pop') }));
    await h.drain();
    const at = h.finished.indexOf('rare');
    expect(at).toBeLessThanOrEqual(7);
    for (let i = 6; i < 12; i++) expect(h.finished.indexOf(`pop${i}`)).toBeGreaterThan(at);
    // stated bound: with R rows and k requests ahead, the rare request finishes within
    // ⌈(k + 1) / R⌉ waves of (max_tokens decode steps + one prefill step per admitted request)
    const stepsToRare = h.doneAt.get('rare')!;
    expect(stepsToRare).toBeLessThanOrEqual(Math.ceil(7 / 2) * (10 + 2));
  });

  it('fair share between requests: the choices of a large request do not take every row from a later one', async () => {
    const h = harness({ maxRunning: 4 });
    for (let i = 0; i < 8; i++) h.submit(`big${i}`, request({ group: 'big', maxTokens: 30 }));
    h.submit('small', request({ group: 'small', maxTokens: 3 }));
    await h.s.tick();
    expect(h.s.runningCount).toBe(4);
    expect(h.s.waitingCount).toBe(5); // small was admitted with the first wave: 3 big + 1 small run
    await h.drain();
    expect(h.finished[0]).toBe('small');
  });

  it('a request whose adapter is loading from disk does not block others; it runs once loaded', async () => {
    let loaded = false;
    let settle: () => void = () => {};
    const source: AdapterSource = {
      acquire: (r) => (r.name !== 'slow' || loaded ? ({ version: r.version, rank: 4, useDora: false, targets: [], bytes: 0 } as PreparedAdapter) : undefined),
      failure: () => undefined, pin() {}, unpin() {}, onSettled(l) { settle = l; },
    };
    const h = harness({}, source);
    h.submit('slow', request({ adapter: ref('slow') }));
    h.submit('base1', request());
    h.submit('base2', request({ adapter: ref('fast') }));
    for (let i = 0; i < 40 && h.s.busy; i++) await h.s.tick();
    expect(h.finished).toEqual(['base1', 'base2']);
    expect(h.s.waitingCount).toBe(1);
    expect(h.s.busy).toBe(false); // nothing to do until the load settles: the loop sleeps
    loaded = true;
    settle();
    await h.drain();
    expect(h.finished).toEqual(['base1', 'base2', 'slow']);
  });

  it('a failed adapter load ends that request with the error, and only that one', async () => {
    const source: AdapterSource = { acquire: () => undefined, failure: (r) => (r.name === 'broken' ? new Error('files changed on disk') : undefined), pin() {}, unpin() {}, onSettled() {} };
    const h = harness({}, source);
    h.submit('b', request({ adapter: ref('broken') }));
    await h.s.tick();
    expect(h.events.get('b')?.[0]).toMatchObject({ type: 'error', error: { message: 'files changed on disk' } });
  });

  it('the KV budget bounds the running batch; waiting requests run later; none is broken', async () => {
    const oneSeq = (3 + 10) * 1 * 8 * 1 * 2 * 4; // (prompt + max_tokens) · Hkv·d · layers · K,V · 4 bytes
    const h = harness({ kvBudgetBytes: 2 * oneSeq }, null);
    let maxRunning = 0;
    h.s.onStep = () => { maxRunning = Math.max(maxRunning, h.s.runningCount); };
    for (let i = 0; i < 5; i++) h.submit(`s${i}`, request());
    await h.drain();
    expect(maxRunning).toBe(2);
    expect(h.finished).toHaveLength(5);
    for (const evs of h.events.values()) expect(evs.filter((e) => e.type === 'token')).toHaveLength(10);
  });

  it('a long prompt is prefilled in chunks that ride in the running decode steps', async () => {
    const h = harness({ prefillChunk: 64 }, null);
    // the stream outlives the prompt's prefill whatever chunk size the (wall-clock) feedback picks:
    // 1000 tokens at the smallest chunk (8) take 125 steps, plus a decode-only step every 16
    h.submit('streaming', request({ maxTokens: 200 }));
    await h.s.tick(); await h.s.tick();
    const before = h.log.length;
    h.submit('long', request({ promptTokens: Array.from({ length: 1000 }, (_, i) => 3 + (i % 400)), maxTokens: 2 }));
    await h.drain();
    const during = h.log.slice(before).filter((l) => l.tokens > 1);
    // every step that carried prompt tokens also decoded the stream: no step left it waiting
    expect(during.length).toBeGreaterThan(10);
    expect(during.every((l) => l.kind === 'mixed' && l.rows.includes(0))).toBe(true);
    expect(during.every((l) => l.tokens <= 64 + 1)).toBe(true);
    expect(h.events.get('streaming')!.filter((e) => e.type === 'token')).toHaveLength(200);
  });

  it('while others decode, a long prompt\'s cold KV row is warmed over several ticks before its first chunk', async () => {
    // a 4096-position row of 4 KV heads × 64: 2 × 4 MB, far more than one time slice touches
    const h = harness({ prefillChunk: 64 }, null, undefined, { numKvHeads: 4, headDim: 64 });
    h.submit('streaming', request({ maxTokens: 80 }));
    await h.s.tick(); await h.s.tick();
    const before = h.log.length;
    h.submit('long', request({ promptTokens: Array.from({ length: 3000 }, (_, i) => 3 + (i % 400)), maxTokens: 2 }));
    await h.drain();
    const after = h.log.slice(before);
    const firstChunk = after.findIndex((l) => l.tokens > 1);
    expect(firstChunk).toBeGreaterThan(1);                        // it waited some ticks …
    expect(after.slice(0, firstChunk).every((l) => l.kind === 'decode' && l.rows.includes(0))).toBe(true); // … the stream did not
    expect(h.lanes.laneFor(3002).kv.isWarm(1)).toBe(true);
    expect(h.events.get('long')!.filter((e) => e.type === 'token')).toHaveLength(2);
    // with nothing decoding, nobody waits: the row warms at once and the first tick prefills
    const g = harness({ prefillChunk: 64 }, null, undefined, { numKvHeads: 4, headDim: 64 });
    g.submit('long', request({ promptTokens: Array.from({ length: 3000 }, (_, i) => 3 + (i % 400)), maxTokens: 2 }));
    await g.s.tick();
    expect(g.log[0]).toMatchObject({ kind: 'prefill', tokens: 64 });
  });

  it('sequences live in lanes by length; one that outgrows its lane moves up and keeps its tokens', async () => {
    const h = harness({}, null);
    h.submit('short', request({ maxTokens: 20 }));
    h.submit('grows', request({ maxTokens: 600 })); // starts in the 512 lane (prompt + 256), moves to 1024
    h.submit('long', request({ promptTokens: Array.from({ length: 600 }, (_, i) => 3 + (i % 400)), maxTokens: 5 }));
    await h.drain();
    expect([...h.finished].sort()).toEqual(['grows', 'long', 'short']);
    for (const id of ['short', 'grows', 'long']) expect(h.events.get(id)!.filter((e) => e.type === 'token')).toHaveLength(id === 'short' ? 20 : id === 'grows' ? 600 : 5);
    // decode steps ran per lane: the 600-token sequence never shared a step with the short ones
    const caps = new Set(h.log.filter((l) => l.kind === 'decode').map((l) => l.capacity));
    expect([...caps].sort((a, b) => a - b)).toEqual([128, 512, 1024]);
    const long = h.log.filter((l) => l.kind === 'decode' && l.capacity === 1024);
    expect(long.length).toBeGreaterThan(5);
    // every row was given back
    expect(h.lanes.lanes.every((l) => l.used === 0)).toBe(true);
    // the growing sequence's row in the bigger lane was warmed before it moved there
    expect(h.coldDecodeReads).toEqual([]);
  });

  it('a sequence cancelled while an earlier step of its tick runs is left out of its own step; the rest go on', async () => {
    const h = harness({}, null);
    h.submit('short', request({ maxTokens: 50 }));
    h.submit('long', request({ promptTokens: Array.from({ length: 600 }, (_, i) => 3 + (i % 400)), maxTokens: 50 }));
    while (!h.log.some((l) => l.kind === 'decode' && l.capacity === 1024)) await h.s.tick();
    // a tick steps each lane apart (128 and 1024); the sequence of the lane not stepping yet is
    // cancelled (its client gone) during the tick's first step
    const runGroups = h.runner.runGroups.bind(h.runner);
    let cancelled: string | null = null;
    h.runner.runGroups = async (groups, merged) => {
      const r = await runGroups(groups, merged);
      if (!cancelled && groups[1]) h.s.cancel(cancelled = groups[1].kv.capacity === 128 ? 'long' : 'short');
      return r;
    };
    await h.drain();
    const survivor = cancelled === 'long' ? 'short' : 'long';
    expect(cancelled).not.toBeNull();
    for (const id of ['short', 'long']) expect((h.events.get(id) ?? []).filter((e) => e.type === 'error'), id).toEqual([]);
    expect(h.events.get(survivor)!.filter((e) => e.type === 'token')).toHaveLength(50);
    expect(h.finished).toEqual([survivor]);
    expect(h.lanes.lanes.every((l) => l.used === 0)).toBe(true);
  });

  it('small lanes fold into a bigger active lane when the padding reads less than another weight pass', async () => {
    // weights = 10 000 positions' worth of KV: 3 rows · (256 − 128) fold; 1 row · (1024 − 256) < 10 000 folds too
    const h = harness({}, null, { weightBytes: 10_000, kvBytesPerPosition: 1 });
    h.submit('long', request({ promptTokens: Array.from({ length: 600 }, (_, i) => 3 + (i % 400)), maxTokens: 40 }));
    for (let i = 0; i < 3; i++) h.submit(`s${i}`, request({ maxTokens: 40 }));
    await h.drain();
    const decodeCaps = h.log.filter((l) => l.kind === 'decode').map((l) => l.capacity);
    expect(new Set(decodeCaps.slice(5))).toEqual(new Set([1024])); // after the first ticks, one step per tick
    // with a cheap weight pass nothing folds: the long sequence decodes alone in its lane
    const g = harness({}, null, { weightBytes: 100, kvBytesPerPosition: 1 });
    g.submit('long', request({ promptTokens: Array.from({ length: 600 }, (_, i) => 3 + (i % 400)), maxTokens: 40 }));
    for (let i = 0; i < 3; i++) g.submit(`s${i}`, request({ maxTokens: 40 }));
    await g.drain();
    expect(g.log.filter((l) => l.kind === 'decode' && l.capacity === 1024).every((l) => l.rows.length === 1)).toBe(true);
  });

  it('prompts that arrive together are prefilled in one step', async () => {
    const h = harness({ maxRunning: 8 }, null);
    for (let i = 0; i < 6; i++) h.submit(`s${i}`, request({ promptTokens: [1, 403, 407, 261 + i], maxTokens: 3 }));
    await h.drain();
    expect(h.log[0]).toMatchObject({ kind: 'prefill', rows: [0, 1, 2, 3, 4, 5], tokens: 24 });
    expect(h.log.filter((l) => l.kind === 'prefill')).toHaveLength(1);
    expect(h.finished).toHaveLength(6);
  });

  it('a short prompt sent just after a long one does not wait for the long one\'s whole prefill', async () => {
    // prompt tokens cost 0.2 ms each (aging compares time waited with prefill time left), on the
    // fake clock: on the real one, a slow first tick under load (over ~65 ms) aged the long prompt
    // past the short one
    const clock = vi.spyOn(performance, 'now').mockImplementation(() => fakeClock.ms);
    const h = harness({ prefillChunk: 64 }, null, undefined, undefined, (tokens) => 0.2 * tokens);
    try {
      h.submit('long', request({ promptTokens: Array.from({ length: 394 }, (_, i) => 3 + (i % 400)), maxTokens: 2 }));
      await h.s.tick(); // the long prompt's first chunk
      h.submit('short', request({ promptTokens: [1, 403], maxTokens: 1 }));
      await h.drain();
    } finally { clock.mockRestore(); }
    expect(h.doneAt.get('short')!).toBeLessThan(h.doneAt.get('long')!);
    expect(h.doneAt.get('short')!).toBeLessThanOrEqual(3); // within a step or two of arriving
  });

  it('prompts that arrive while nothing decodes start decoding together: no batch of one decodes while the rest prefill', async () => {
    // a prompt token costs 0.2 ms, a decode step 4 ms: the first prompt's hold bound is
    // 16 rows × 200 tokens × 0.2 ms = 640 ms, the others' prefill ~120 ms (and a busy machine
    // stretches the measured per-token cost, hence the bound, with it)
    const h = harness({ maxRunning: 16, prefillChunk: 64 }, null, undefined, undefined, (tokens, rows) => (rows ? 4 : 0) + 0.2 * tokens);
    const long = (): number[] => Array.from({ length: 200 }, (_, k) => 3 + (k % 400));
    h.submit('first', request({ promptTokens: long(), maxTokens: 5 }));
    await h.s.tick(); // its first chunk, alone
    for (let i = 0; i < 3; i++) h.submit(`later${i}`, request({ promptTokens: long(), maxTokens: 5 }));
    await h.drain();
    const firstDecode = h.log.findIndex((l) => l.kind === 'decode' || l.kind === 'mixed');
    expect(h.log[firstDecode]).toMatchObject({ kind: 'decode', rows: [0, 1, 2, 3] });
    // the step before it ran every prompt's last token, together
    expect(h.log[firstDecode - 1]).toMatchObject({ kind: 'prefill', promptRows: 4, tokens: 4 });
    expect(h.finished).toHaveLength(4);
  });

  it('prompt chunks of several sequences share a step while others decode', async () => {
    // a decode step takes 4 ms and a prompt token 0.05 ms: between steps, the KV rows of the new
    // prompts warm within a share of a decode step (with a step of ~0 ms they would warm one a tick).
    // A generous ITL target: a stalled step on a busy machine must not shrink the budget to one chunk.
    const h = harness({ maxRunning: 8, prefillChunk: 64, itlTargetMs: 10_000 }, null, undefined, undefined, (tokens, rows) => (rows ? 4 : 0) + 0.05 * tokens);
    h.submit('streaming', request({ maxTokens: 40 }));
    await h.s.tick(); await h.s.tick(); await h.s.tick();
    for (const [i, n] of [12, 6, 25, 4, 71].entries()) h.submit(`p${i}`, request({ promptTokens: Array.from({ length: n }, (_, k) => 3 + k), maxTokens: 2 }));
    await h.drain();
    expect(h.log.some((l) => l.kind === 'mixed' && l.promptRows >= 3)).toBe(true);
    expect(h.finished).toHaveLength(6);
  });

  it('goodput fills the ITL target with prompt tokens; strict keeps chunks near a share of a decode step', async () => {
    // a model whose decode step takes 5 ms and whose prompt tokens cost 0.25 ms each
    const stepMs: StepMs = (tokens, rows) => (rows ? 5 : 0) + 0.25 * tokens;
    const promptTokensPerMixedStep = async (scheduling: 'goodput' | 'strict') => {
      const h = harness({ prefillChunk: 256, scheduling, itlTargetMs: 400 }, null, undefined, undefined, stepMs);
      h.submit('streaming', request({ maxTokens: 5000 }));
      await h.s.tick(); await h.s.tick();
      for (let i = 0; i < 2; i++) h.submit(`p${i}`, request({ promptTokens: Array.from({ length: 1000 }, (_, k) => 3 + (k % 400)), maxTokens: 1 }));
      while (h.finished.length < 2) await h.s.tick();
      const mixed = h.log.filter((l) => l.kind === 'mixed');
      h.s.cancelAll();
      return mixed.reduce((a, l) => a + l.tokens - (l.rows.length - l.promptRows), 0) / mixed.length;
    };
    const clock = vi.spyOn(performance, 'now').mockImplementation(() => fakeClock.ms);
    let strict: number, goodput: number;
    try {
      strict = await promptTokensPerMixedStep('strict');
      goodput = await promptTokensPerMixedStep('goodput');
    } finally { clock.mockRestore(); }
    // strict: about 0.7 × 5 ms / 0.25 ms = 14 tokens; goodput: (0.8 × 400 − 5) / 0.25 ≈ 1260, capped
    // at 256 (steps take their time on the fake clock, so a busy machine changes nothing)
    expect(strict).toBeLessThan(32);
    expect(goodput).toBeGreaterThanOrEqual(200);
    expect(goodput).toBeGreaterThan(3 * strict);
  });

  it('cancelling a running sequence frees its row before the next step; the row is reused', async () => {
    const h = harness({ maxRunning: 2 }, null);
    h.submit('a', request({ maxTokens: 100 }));
    h.submit('b', request({ maxTokens: 100 }));
    h.submit('c', request({ maxTokens: 5 }));
    await h.s.tick(); await h.s.tick(); await h.s.tick();
    expect(h.s.runningCount).toBe(2);
    h.s.cancel('a');
    expect(h.s.runningCount).toBe(1);
    await h.s.tick();
    expect(h.log.at(-1)).toMatchObject({ kind: 'mixed', rows: [0, 1] }); // c took a's slot 0; its prompt rode in b's decode step
    await h.drain();
    expect(h.finished).toEqual(['c', 'b']);
  });
});
