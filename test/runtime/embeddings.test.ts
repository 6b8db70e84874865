// Embeddings in the engine (issue 14): a request with `embed` prefills its prompt, mean-pools the final
// hidden states (after the last norm) of every prompt position, and generates nothing. The vector
// equals the float64 reference's mean of its hidden states, also when the prompt is prefilled in
// several chunks and when it shares steps with sequences that generate (which are unaffected).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { EngineClient } from '../../src/runtime/engine-client.ts';
import { startEngine } from '../../src/start-engine.ts';
import { DEFAULT_SAMPLING } from '../../src/runtime/sampler.ts';
import type { GenerateRequest, TokenEvent } from '../../src/runtime/generate-request.ts';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { ReferenceLlama } from '../reference/llama-reference.ts';
import { STORIES_DIR, storiesExpected } from '../helpers/fixtures.ts';

const model = loadModel(STORIES_DIR);
const cfgJson = JSON.parse(readFileSync(`${STORIES_DIR}/config.json`, 'utf8'));
const c0 = storiesExpected().generation_cases[0];
const LONG = [...c0.prompt_ids, ...c0.greedy_ids].slice(0, 40);
const SHORT = [1, 403, 407, 261, 378];

let engine: EngineClient;
beforeAll(async () => { engine = await startEngine({ runtime: { modelDir: STORIES_DIR, intraOpThreads: 1 }, scheduler: { maxRunning: 8, prefillChunk: 16, kvBudgetBytes: 1 << 30 } }); });
afterAll(async () => { await engine?.close(); });

const req = (over: Partial<GenerateRequest>): GenerateRequest => ({
  promptTokens: SHORT, maxTokens: 0, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: null, adapter: null, ...over,
});

async function events(r: GenerateRequest): Promise<TokenEvent[]> {
  const out: TokenEvent[] = [];
  for await (const ev of engine.generate(r)) {
    if (ev.type === 'error') throw new Error(ev.error.message);
    out.push(ev);
  }
  return out;
}

function referenceEmbedding(tokens: number[]): number[] {
  const ref = new ReferenceLlama(cfgJson, model.weights);
  ref.forward(tokens);
  return Array.from({ length: ref.hidden[0].length }, (_, j) => ref.hidden.reduce((s, h) => s + h[j], 0) / ref.hidden.length);
}

const embeddingOf = (evs: TokenEvent[]): number[] => (evs.find((e) => e.type === 'embedding') as Extract<TokenEvent, { type: 'embedding' }>).vector;
const maxRel = (x: number[], y: number[]) => Math.max(...x.map((v, i) => Math.abs(v - y[i]))) / Math.max(...y.map(Math.abs));

describe('embeddings', () => {
  it('the mean of the final hidden states = the float64 reference, over several prompt chunks; nothing generated', async () => {
    const evs = await events(req({ promptTokens: LONG, embed: true })); // 40 tokens, chunks of ≤ 16
    expect(evs.map((e) => e.type)).toEqual(['embedding', 'done']);
    expect(evs.at(-1)).toMatchObject({ type: 'done', completionTokens: 0, promptTokens: LONG.length, path: 'base' });
    const got = embeddingOf(evs);
    expect(got).toHaveLength(model.config.hiddenSize);
    const err = maxRel(got, referenceEmbedding(LONG));
    console.log(`embedding vs the float64 reference: max relative error ${err.toExponential(2)}`);
    expect(err).toBeLessThan(1e-4);
  });

  it('beside generating sequences: the same vector, and their tokens unchanged', async () => {
    const gen = req({ promptTokens: SHORT, maxTokens: 12 });
    const alone = (await events(gen)).filter((e) => e.type === 'token').map((e) => (e as { id: number }).id);
    const [a, g, b] = await Promise.all([events(req({ promptTokens: LONG, embed: true })), events(gen), events(req({ promptTokens: SHORT, embed: true }))]);
    expect(maxRel(embeddingOf(a), referenceEmbedding(LONG))).toBeLessThan(1e-4);
    expect(maxRel(embeddingOf(b), referenceEmbedding(SHORT))).toBeLessThan(1e-4);
    expect(g.filter((e) => e.type === 'token').map((e) => (e as { id: number }).id)).toEqual(alone);
  });
});
