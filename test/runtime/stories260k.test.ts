// The real pretrained stories260K Llama (../shared/fixtures) against transformers' outputs.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { TextTokenizer } from '../../src/runtime/tokenizer.ts';
import { logSoftmax } from '../../src/runtime/sampler.ts';
import { EngineClient } from '../../src/runtime/engine-client.ts';
import { startEngine } from '../../src/start-engine.ts';
import { DEFAULT_SAMPLING } from '../../src/runtime/sampler.ts';
import type { GenerateRequest } from '../../src/runtime/generate-request.ts';
import { makeRunner } from '../helpers/runtime.ts';
import { STORIES_DIR, storiesExpected } from '../helpers/fixtures.ts';
import { readFileSync } from 'node:fs';

const E = storiesExpected();
const model = loadModel(STORIES_DIR);
const tok = new TextTokenizer(model.tokenizerJson, model.tokenizerConfig);

function argmax(x: Float32Array): number {
  let b = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[b]) b = i;
  return b;
}

describe('stories260K: step runner', () => {
  it.each(E.generation_cases.map((c) => [c.prompt, c] as const))('prompt %j: greedy ids exact, top-5 logprobs within 1e-4', async (_p, c) => {
    const cfgJson = JSON.parse(readFileSync(`${STORIES_DIR}/config.json`, 'utf8'));
    const { runner, newRow } = await makeRunner(cfgJson, model.weights, 512);
    expect(tok.encode(c.prompt)).toEqual(c.prompt_ids);
    const row = newRow();
    let r = await runner.run([{ row, tokens: c.prompt_ids }]);
    const lp = logSoftmax(r.logits);
    for (const t of c.last_position_top5) expect(Math.abs(lp[t.id] - t.logprob)).toBeLessThan(1e-4);
    const top5 = [...lp.keys()].sort((a, b) => lp[b] - lp[a]).slice(0, 5);
    expect(top5).toEqual(c.last_position_top5.map((t) => t.id));
    const out: number[] = [];
    for (let i = 0; i < 40; i++) {
      out.push(argmax(r.logits));
      r = await runner.run([{ row, tokens: [out[out.length - 1]] }]);
    }
    expect(out).toEqual(c.greedy_ids);
    expect(tok.decode([...c.prompt_ids, ...out])).toBe(c.full_text);
  });

  it('tokenizer cases round-trip exactly', () => {
    for (const c of E.tokenizer_cases) {
      expect(tok.encode(c.text)).toEqual(c.ids);
      expect(tok.decode(c.ids)).toBe(c.decoded);
    }
  });
});

describe('stories260K: engine worker end to end', () => {
  let engine: EngineClient;
  beforeAll(async () => { engine = await startEngine({ runtime: { modelDir: STORIES_DIR, intraOpThreads: 1 } }); });
  afterAll(async () => { await engine?.close(); });

  const greedy = (promptTokens: number[], maxTokens: number): GenerateRequest => ({
    promptTokens, maxTokens, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: null, adapter: null,
  });

  async function collect(req: GenerateRequest): Promise<{ ids: number[]; text: string; finish: string }> {
    const ids: number[] = [];
    let text = '';
    let finish = '';
    for await (const ev of engine.generate(req)) {
      if (ev.type === 'token') { ids.push(ev.id); text += ev.text; }
      if (ev.type === 'done') finish = ev.finishReason;
      if (ev.type === 'error') throw new Error(ev.error.message);
    }
    return { ids, text, finish };
  }

  it('reproduces the 256-token unconditional story', async () => {
    const r = await collect(greedy(E.unconditional_story.prompt_ids, 256));
    expect(r.ids).toEqual(E.unconditional_story.greedy_ids_first_256);
    expect(r.text).toBe(E.unconditional_story.text);
    expect(r.finish).toBe('length');
  });

  it('all generation cases at once, batched, each give their own greedy ids and text', async () => {
    const results = await Promise.all(E.generation_cases.map((c) => collect(greedy(c.prompt_ids, 40))));
    results.forEach((r, i) => {
      expect(r.ids).toEqual(E.generation_cases[i].greedy_ids);
      expect(r.text).toBe(E.generation_cases[i].greedy_text);
    });
  });
});
