// /v1/completions with echo and logprobs: logprobs.tokens and text_offset describe the returned text.
// For every token, text.slice(text_offset[i], text_offset[i] + tokens[i].length) === tokens[i] and the
// offsets never decrease; the BOS token (not in the text) is "" at 0 and the first word starts at 0.
// Streamed and not, with and without BOS, text and token-id prompts. Plus: an out-of-range token id in
// a token-id prompt names its own index.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningServer } from '../../src/server/serve.ts';
import { startTestServer } from '../helpers/server.ts';
import { storiesExpected } from '../helpers/fixtures.ts';

const E = storiesExpected();
const MODEL = 'stories260K';
let server: RunningServer;

beforeAll(async () => { server = await startTestServer(); });
afterAll(async () => { await server?.close(); });

interface Logprobs { tokens: string[]; token_logprobs: (number | null)[]; top_logprobs: (Record<string, number> | null)[]; text_offset: number[] }
interface Choice { index: number; text: string; logprobs: Logprobs | null }

async function complete(body: Record<string, unknown>): Promise<Choice[]> {
  const r = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, temperature: 0, ...body }) });
  expect(r.status, await r.clone().text()).toBe(200);
  return ((await r.json()) as { choices: Choice[] }).choices.sort((a, b) => a.index - b.index);
}

// The stream, put back together per choice: texts and logprobs concatenated in order.
async function completeStreamed(body: Record<string, unknown>): Promise<Choice[]> {
  const r = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, temperature: 0, ...body, stream: true }) });
  expect(r.status).toBe(200);
  const byIndex = new Map<number, Choice>();
  for (const line of (await r.text()).split('\n')) {
    if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
    const chunk = JSON.parse(line.slice(6)) as { choices: Choice[] };
    for (const c of chunk.choices) {
      const acc = byIndex.get(c.index) ?? { index: c.index, text: '', logprobs: { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] } };
      acc.text += c.text;
      if (c.logprobs) for (const k of ['tokens', 'token_logprobs', 'top_logprobs', 'text_offset'] as const) (acc.logprobs![k] as unknown[]).push(...c.logprobs[k]);
      byIndex.set(c.index, acc);
    }
  }
  return [...byIndex.values()].sort((a, b) => a.index - b.index);
}

function checkInvariant(c: Choice, tokenCount: number): void {
  const lp = c.logprobs!;
  expect(lp.tokens).toHaveLength(tokenCount);
  expect(lp.text_offset).toHaveLength(tokenCount);
  for (let i = 0; i < tokenCount; i++) {
    if (i > 0) expect(lp.text_offset[i], `offset ${i} ${JSON.stringify(lp.text_offset)}`).toBeGreaterThanOrEqual(lp.text_offset[i - 1]);
    expect(c.text.slice(lp.text_offset[i], lp.text_offset[i] + lp.tokens[i].length), `token ${i} of ${JSON.stringify(lp.tokens)} in ${JSON.stringify(c.text)}`).toBe(lp.tokens[i]);
  }
  // plain ASCII text without stop strings: the tokens are the text, split
  if (/^[\x20-\x7e\n]*$/.test(c.text)) expect(lp.tokens.join('')).toBe(c.text);
}

const bosIds = E.generation_cases[0].prompt_ids; // starts with BOS (1)
const cases: { name: string; prompt: unknown; promptTokens: number }[] = [
  { name: 'text, BOS added', prompt: 'Once upon', promptTokens: -1 },
  { name: 'text, reference case', prompt: E.generation_cases[0].prompt, promptTokens: bosIds.length },
  { name: 'text with a leading space and a newline', prompt: ' Lily went\nto the park', promptTokens: -1 },
  { name: 'text with non-ASCII', prompt: 'The café was “nice” ☃ ok', promptTokens: -1 },
  { name: 'token ids with BOS', prompt: bosIds, promptTokens: bosIds.length },
  { name: 'token ids without BOS', prompt: bosIds.slice(1), promptTokens: bosIds.length - 1 },
];

describe('echo + logprobs: text_offset and tokens match the returned text', () => {
  it('"Once upon" with BOS: "" at 0, "Once" at 0, " upon" at 4', async () => {
    const [c] = await complete({ prompt: 'Once upon', max_tokens: 4, logprobs: 1, echo: true });
    const lp = c.logprobs!;
    expect(c.text.startsWith('Once upon')).toBe(true);
    expect(lp.token_logprobs[0]).toBeNull();
    expect(lp.tokens.slice(0, 3)).toEqual(['', 'Once', ' upon']);
    expect(lp.text_offset.slice(0, 4)).toEqual([0, 0, 4, 9]);
    checkInvariant(c, 3 + 4);
  });

  it('a prompt that starts with a digit or a sign: the lone prefix "▁" is "" and keeps no text (streamed or not)', async () => {
    for (const [prompt, tokens, offsets] of [
      ['1. Once', ['', '', '1', '.', ' Once'], [0, 0, 0, 1, 2]],
      ['(Once)', ['', '', '(', 'O', 'n', 'ce', ')'], [0, 0, 0, 1, 2, 3, 5]],
    ] as const) {
      const body = { prompt, max_tokens: 4, logprobs: 0, echo: true };
      for (const [c] of [await complete(body), await completeStreamed(body)]) {
        expect(c.logprobs!.tokens.slice(0, tokens.length), prompt).toEqual(tokens);
        expect(c.logprobs!.text_offset.slice(0, offsets.length), prompt).toEqual(offsets);
        // the completion's first token starts at the end of the prompt with its own text
        expect(c.logprobs!.text_offset[tokens.length]).toBe(prompt.length);
        checkInvariant(c, tokens.length + 4);
      }
    }
  });

  for (const k of cases) {
    it(`${k.name}: not streamed and streamed agree and hold the invariant`, async () => {
      const body = { prompt: k.prompt, max_tokens: 6, logprobs: 2, echo: true, n: 2 };
      const whole = await complete(body);
      const streamed = await completeStreamed(body);
      expect(whole).toHaveLength(2);
      expect(streamed.map((c) => c.text)).toEqual(whole.map((c) => c.text));
      for (const c of [...whole, ...streamed]) {
        const n = c.logprobs!.tokens.length;
        if (k.promptTokens > 0) expect(n).toBe(k.promptTokens + 6);
        checkInvariant(c, n);
      }
      for (let i = 0; i < 2; i++) {
        expect(streamed[i].logprobs!.tokens).toEqual(whole[i].logprobs!.tokens);
        expect(streamed[i].logprobs!.text_offset).toEqual(whole[i].logprobs!.text_offset);
      }
    });
  }

  it('without echo the offsets index the completion text', async () => {
    for (const c of [...await complete({ prompt: 'Once upon a time', max_tokens: 8, logprobs: 1 }), ...await completeStreamed({ prompt: 'Once upon a time', max_tokens: 8, logprobs: 1 })]) {
      expect(c.logprobs!.text_offset[0]).toBe(0);
      checkInvariant(c, 8);
    }
  });

  it('a stop string: tokens cut by it hold no text past the end', async () => {
    const [plain] = await complete({ prompt: 'Once upon a time', max_tokens: 12 });
    const stop = plain.text.trim().split(' ').slice(2, 3).join(' ').slice(0, 2); // inside the third word
    for (const c of [...await complete({ prompt: 'Once upon a time', max_tokens: 12, logprobs: 1, echo: true, stop: [stop] }), ...await completeStreamed({ prompt: 'Once upon a time', max_tokens: 12, logprobs: 1, echo: true, stop: [stop] })]) {
      checkInvariant(c, c.logprobs!.tokens.length);
      expect(c.logprobs!.text_offset.every((o) => o <= c.text.length)).toBe(true);
    }
  });
});

describe('token-id prompts: an id out of range names its index', () => {
  it('prompt: [1, 99999] → prompt[1]', async () => {
    const r = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt: [1, 99999], max_tokens: 1 }) });
    expect(r.status).toBe(400);
    const { error } = (await r.json()) as { error: { message: string; param: string | null } };
    expect(error.message).toContain("'prompt[1]'");
    expect(error.message).toContain('99999');
    expect(error.message).not.toContain('prompt[0]');
  });

  it('a list of token-id prompts: prompt[1][2]', async () => {
    const r = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt: [[1, 2], [1, 2, 99999]], max_tokens: 1 }) });
    expect(r.status).toBe(400);
    const { error } = (await r.json()) as { error: { message: string } };
    expect(error.message).toContain("'prompt[1][2]'");
  });
});
