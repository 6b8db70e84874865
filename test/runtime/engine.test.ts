// The engine worker with the stories260K model: sampling, stops, logprobs, cancellation.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EngineClient } from '../../src/runtime/engine-client.ts';
import { startEngine } from '../../src/start-engine.ts';
import { DEFAULT_SAMPLING } from '../../src/runtime/sampler.ts';
import type { GenerateRequest, TokenEvent } from '../../src/runtime/generate-request.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const ONCE = [1, 403, 407, 261, 378]; // "Once upon a time"
let engine: EngineClient;
beforeAll(async () => { engine = await startEngine({ runtime: { modelDir: STORIES_DIR, intraOpThreads: 1 } }); });
afterAll(async () => { await engine?.close(); });

const req = (over: Partial<GenerateRequest>): GenerateRequest => ({
  promptTokens: ONCE, maxTokens: 30, sampling: { ...DEFAULT_SAMPLING }, seed: null, stop: [], stopTokenIds: [], ignoreEos: false, logprobs: null, adapter: null, ...over,
});

async function run(r: GenerateRequest, signal?: AbortSignal): Promise<{ tokens: Extract<TokenEvent, { type: 'token' }>[]; done: Extract<TokenEvent, { type: 'done' }> | null; text: string }> {
  const tokens: Extract<TokenEvent, { type: 'token' }>[] = [];
  let done = null;
  for await (const ev of engine.generate(r, signal)) {
    if (ev.type === 'token') tokens.push(ev);
    else if (ev.type === 'done') done = ev;
    else if (ev.type === 'error') throw new Error(ev.error.message);
  }
  return { tokens, done, text: tokens.map((t) => t.text).join('') };
}

describe('engine', () => {
  it('the same seed and request give the same tokens, also when run concurrently', async () => {
    const r = req({ seed: 1234, sampling: { ...DEFAULT_SAMPLING, temperature: 1, topP: 0.9 } });
    const [a, b, c] = await Promise.all([run(r), run(r), run({ ...r, seed: 99 })]);
    const ids = (x: typeof a) => x.tokens.map((t) => t.id);
    expect(ids(a)).toEqual(ids(b));
    expect(ids(a)).not.toEqual(ids(c));
    expect(ids(await run(r))).toEqual(ids(a));
  });

  it('a stop string that spans tokens stops generation and is not in the text', async () => {
    const greedy = await run(req({ sampling: { ...DEFAULT_SAMPLING, temperature: 0 } }));
    expect(greedy.text.startsWith(', there was a little girl named Lily.')).toBe(true);
    const r = await run(req({ sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stop: ['irl nam'] })); // "▁g" "ir" "l" "▁named"
    expect(r.text).toBe(', there was a little g');
    expect(r.done).toMatchObject({ finishReason: 'stop', stopReason: 'irl nam', text: ', there was a little g' });
  });

  it('stop token ids end generation without their text; max_tokens ends with length', async () => {
    const r = await run(req({ sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stopTokenIds: [426] })); // "."
    expect(r.text).toBe(', there was a little girl named Lily');
    expect(r.done).toMatchObject({ finishReason: 'stop', stopReason: 426 });
    const l = await run(req({ sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, maxTokens: 3 }));
    expect(l.tokens).toHaveLength(3);
    expect(l.done).toMatchObject({ finishReason: 'length', completionTokens: 3, promptTokens: 5 });
  });

  it('logprobs: the chosen token and the top alternatives, consistent with greedy choice', async () => {
    const r = await run(req({ sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, logprobs: 3, maxTokens: 5 }));
    expect(r.tokens[0].logprob).toBeCloseTo(-0.031703, 4); // EXPECTED.json top-1 after "Once upon a time"
    for (const t of r.tokens) {
      expect(t.top).toHaveLength(3);
      expect(t.top![0].id).toBe(t.id);
      expect(t.top![0].logprob).toBe(t.logprob);
      expect(t.top![1].logprob).toBeLessThanOrEqual(t.top![0].logprob);
    }
    expect(r.tokens[1].top![0].text).toBe(' there');
  });

  it('ignore_eos keeps generating past EOS; without it, EOS ends with stop (stop_reason null unless asked for by stop_token_ids)', async () => {
    // stories260K practically never emits EOS (2); bias it to force one
    const forced = { ...DEFAULT_SAMPLING, temperature: 0, logitBias: new Map([[2, 100]]) };
    const stop = await run(req({ sampling: forced }));
    expect(stop.done).toMatchObject({ finishReason: 'stop', stopReason: null, completionTokens: 1 }); // EOS: null, as vLLM
    const asked = await run(req({ sampling: forced, stopTokenIds: [2] }));
    expect(asked.done).toMatchObject({ finishReason: 'stop', stopReason: 2, completionTokens: 1 }); // a stop_token_ids match: its id
    const past = await run(req({ sampling: forced, ignoreEos: true, maxTokens: 4 }));
    expect(past.done).toMatchObject({ finishReason: 'length', completionTokens: 4 });
  });

  it('cancelling one request leaves the batch at once; the others finish', async () => {
    const batches: number[] = [];
    engine.onStep = (s) => { if (s.kind === 'decode') batches.push(s.batch); };
    const ac = new AbortController();
    const long = req({ sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, ignoreEos: true, maxTokens: 120 });
    let seen = 0;
    const cancelled = (async () => {
      for await (const ev of engine.generate(long, ac.signal)) if (ev.type === 'token' && ++seen === 5) ac.abort();
    })();
    const other = run(long);
    await cancelled;
    const r = await other;
    engine.onStep = undefined;
    expect(r.tokens).toHaveLength(120);
    expect(batches.slice(0, 3)).toContain(2);
    expect(batches.at(-1)).toBe(1);
    expect(batches.filter((b) => b === 2).length).toBeLessThan(20);
  });
});

describe('engine shutdown', () => {
  it('closing while a step runs cancels the work and ends the streams without crashing the process', async () => {
    const e = await startEngine({ runtime: { modelDir: STORIES_DIR, intraOpThreads: 1 } });
    const events: string[] = [];
    let n = 0;
    const consume = (async () => {
      for await (const ev of e.generate(req({ maxTokens: 400, ignoreEos: true }))) {
        events.push(ev.type);
        if (ev.type === 'token' && ++n === 3) void e.close();
      }
    })();
    await consume;
    await e.close(); // idempotent
    expect(n).toBeGreaterThanOrEqual(3);
    expect(n).toBeLessThan(400);
    expect(events.at(-1)).toBe('error'); // the stream ends with an error event, not silently
  });
});
