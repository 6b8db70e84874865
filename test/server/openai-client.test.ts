// The official `openai` client against the server on 127.0.0.1: completions and chat, streamed and
// not, base model and adapters, n > 1, logprobs, stop, echo, usage, errors.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import OpenAI from 'openai';
import { choiceSeed } from '../../src/server/generation.ts';
import { Rng } from '../../src/runtime/random.ts';
import type { RunningServer } from '../../src/server/serve.ts';
import { adapterFiles, startTestServer, upload } from '../helpers/server.ts';
import { storiesExpected } from '../helpers/fixtures.ts';

const E = storiesExpected();
let server: RunningServer;
let client: OpenAI;
const MODEL = 'stories260K';

beforeAll(async () => {
  server = await startTestServer();
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  expect((await upload(server.url, 'storyteller', adapterFiles({ rank: 8, seed: 7, scaleB: 2 }))).status).toBe(201);
});
afterAll(async () => { await server?.close(); });

describe('completions', () => {
  it('greedy, not streamed: the reference continuation, with usage', async () => {
    const c = E.generation_cases[0];
    const r = await client.completions.create({ model: MODEL, prompt: c.prompt, max_tokens: 40, temperature: 0 });
    expect(r.object).toBe('text_completion');
    expect(r.choices[0].text).toBe(c.greedy_text);
    expect(r.choices[0].finish_reason).toBe('length');
    expect(r.usage).toEqual({ prompt_tokens: c.prompt_ids.length, completion_tokens: 40, total_tokens: c.prompt_ids.length + 40 });
  });

  it('streamed: the same text, a finish_reason, then a usage chunk', async () => {
    const c = E.generation_cases[1];
    const stream = await client.completions.create({ model: MODEL, prompt: c.prompt, max_tokens: 40, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = '';
    const finish: (string | null)[] = [];
    let usage = null;
    for await (const chunk of stream) {
      for (const ch of chunk.choices) { text += ch.text; finish.push(ch.finish_reason); }
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(c.greedy_text);
    expect(finish.filter(Boolean)).toEqual(['length']);
    expect(usage).toEqual({ prompt_tokens: c.prompt_ids.length, completion_tokens: 40, total_tokens: c.prompt_ids.length + 40 });
  });

  it('n > 1 with a seed: n different choices, indexed, reproducible', async () => {
    const req = { model: MODEL, prompt: 'Once upon a time', max_tokens: 12, temperature: 1, n: 3, seed: 42 };
    const a = await client.completions.create(req);
    const b = await client.completions.create(req);
    expect(a.choices.map((c) => c.index).sort()).toEqual([0, 1, 2]);
    expect(new Set(a.choices.map((c) => c.text)).size).toBeGreaterThan(1);
    expect(b.choices.map((c) => c.text)).toEqual(a.choices.map((c) => c.text));
    expect(a.usage?.completion_tokens).toBe(36);
    // at the top of the seed range too: seed + j is exact, so the four choices draw four streams
    const top = await client.completions.create({ ...req, n: 4, max_tokens: 16, temperature: 1.5, seed: Number.MAX_SAFE_INTEGER });
    expect(new Set(top.choices.map((c) => c.text)).size).toBe(4);
  });

  it('choiceSeed: seed + j exactly, a bigint past 2^53', () => {
    expect(choiceSeed(42, 2)).toBe(44);
    expect(choiceSeed(null, 1)).toBe(null);
    const top = [0, 1, 2, 3].map((j) => choiceSeed(Number.MAX_SAFE_INTEGER, j));
    expect(top.map(String)).toEqual(['9007199254740991', '9007199254740992', '9007199254740993', '9007199254740994']);
    expect(new Rng(top[1]!).nextU32()).not.toBe(new Rng(top[2]!).nextU32());
  });

  it('a list of prompts, token-id prompts, and choice indices prompt·n + j', async () => {
    const r = await client.completions.create({ model: MODEL, prompt: [E.generation_cases[0].prompt_ids, E.generation_cases[1].prompt_ids], max_tokens: 40, temperature: 0, n: 2 });
    const byIndex = [...r.choices].sort((x, y) => x.index - y.index);
    expect(byIndex.map((c) => c.text)).toEqual([E.generation_cases[0].greedy_text, E.generation_cases[0].greedy_text, E.generation_cases[1].greedy_text, E.generation_cases[1].greedy_text]);
  });

  it('logprobs: chosen token plus top alternatives, and echo with prompt logprobs', async () => {
    const c = E.generation_cases[0];
    const r = await client.completions.create({ model: MODEL, prompt: c.prompt, max_tokens: 3, temperature: 0, logprobs: 2, echo: true });
    const lp = r.choices[0].logprobs!;
    expect(r.choices[0].text.startsWith(c.prompt)).toBe(true);
    expect(lp.tokens!.length).toBe(c.prompt_ids.length + 3);
    expect(lp.token_logprobs![0]).toBeNull();
    const first = c.prompt_ids.length; // first generated token
    expect(lp.token_logprobs![first]).toBeCloseTo(c.last_position_top5[0].logprob, 4);
    expect(Object.values(lp.top_logprobs![first]!)).toHaveLength(2);
    // sampled (hot, seeded) tokens are often outside the top 1: each position still lists the chosen
    // token with its logprob, after the alternatives (OpenAI: "up to logprobs+1 elements")
    const hot = await client.completions.create({ model: MODEL, prompt: c.prompt, max_tokens: 24, temperature: 2, seed: 4, logprobs: 1 });
    const hl = hot.choices[0].logprobs!;
    let outside = 0;
    hl.tokens!.forEach((t, i) => {
      const top = hl.top_logprobs![i]!;
      expect(top[t]).toBe(hl.token_logprobs![i]);
      expect(Object.keys(top).length).toBeLessThanOrEqual(2);
      if (Object.keys(top).length === 2) outside++;
    });
    expect(outside).toBeGreaterThan(0);
    // offsets index the returned text: BOS adds no text, and the first word starts it
    expect(lp.tokens![0]).toBe('');
    expect(lp.text_offset!.slice(0, 2)).toEqual([0, 0]);
    lp.tokens!.forEach((t, i) => expect(r.choices[0].text.slice(lp.text_offset![i], lp.text_offset![i] + t.length)).toBe(t));
  });

  it('return_tokens_as_token_ids renders tokens as token_id:N', async () => {
    const r = await client.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 2, temperature: 0, logprobs: 1, return_tokens_as_token_ids: true } as never);
    expect(r.choices[0].logprobs!.tokens).toEqual(['token_id:432', 'token_id:383']);
  });

  it('stop strings end the text before the stop string, with finish_reason stop', async () => {
    const r = await client.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 40, temperature: 0, stop: ['Lily', 'zzz'] });
    expect(r.choices[0].text).toBe(', there was a little girl named ');
    expect(r.choices[0].finish_reason).toBe('stop');
  });

  it('the adapter, by name and as base:adapter, changes the output', async () => {
    const base = await client.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 20, temperature: 0 });
    const a = await client.completions.create({ model: 'storyteller', prompt: 'Once upon a time', max_tokens: 20, temperature: 0 });
    const b = await client.completions.create({ model: `${MODEL}:storyteller`, prompt: 'Once upon a time', max_tokens: 20, temperature: 0 });
    expect(a.choices[0].text).not.toBe(base.choices[0].text);
    expect(b.choices[0].text).toBe(a.choices[0].text);
    expect(a.model).toBe('storyteller');
  });
});

describe('chat', () => {
  it('not streamed and streamed agree; role first, finish_reason last, usage', async () => {
    const messages = [{ role: 'user' as const, content: 'Tell me a story' }];
    const r = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 15, temperature: 0 });
    expect(r.object).toBe('chat.completion');
    expect(r.choices[0].message.role).toBe('assistant');
    expect(r.usage?.completion_tokens).toBe(15);
    const stream = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 15, temperature: 0, stream: true, stream_options: { include_usage: true } });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    expect(chunks[0].choices[0].delta.role).toBe('assistant');
    const content = chunks.flatMap((c) => c.choices.map((ch) => ch.delta.content ?? '')).join('');
    expect(content).toBe(r.choices[0].message.content);
    const last = chunks.filter((c) => c.choices.length).at(-1)!;
    expect(last.choices[0].finish_reason).toBe('length');
    expect(chunks.at(-1)!.choices).toEqual([]);
    expect(chunks.at(-1)!.usage).toEqual(r.usage);
  });

  it('logprobs with top_logprobs, n = 2, and an adapter', async () => {
    const r = await client.chat.completions.create({ model: 'storyteller', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4, temperature: 0.7, seed: 3, n: 2, logprobs: true, top_logprobs: 2 });
    expect(r.choices).toHaveLength(2);
    const lp = r.choices[0].logprobs!.content!;
    expect(lp).toHaveLength(4);
    expect(lp[0].top_logprobs).toHaveLength(2);
    expect(lp[0].bytes).toEqual([...Buffer.from(lp[0].token)]);
  });

  it('bytes of a byte-fallback token are its one byte (decoded alone it is U+FFFD)', async () => {
    // id 243 is <0xF0> in stories260K's vocabulary, forced; the alternatives (of the raw model
    // output) are ordinary tokens: their text's UTF-8
    const r = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 1, temperature: 0, logprobs: true, top_logprobs: 2, logit_bias: { 243: 100 } });
    const [first] = r.choices[0].logprobs!.content!;
    expect(first.token).toBe('\ufffd');
    expect(first.bytes).toEqual([0xf0]);
    for (const t of first.top_logprobs) expect(t.bytes).toEqual([...Buffer.from(t.token)]);
  });
});

describe('errors', () => {
  it('an unknown model is a 404 NotFoundError, never a silent fallback', async () => {
    await expect(client.completions.create({ model: 'no-such-adapter', prompt: 'x' })).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await expect(client.chat.completions.create({ model: `${MODEL}:nope`, messages: [{ role: 'user', content: 'x' }] })).rejects.toMatchObject({ status: 404, code: 'model_not_found', param: 'model' });
  });

  it('invalid fields are 400s that name the field and the limit', async () => {
    await expect(client.completions.create({ model: MODEL, prompt: 'x', top_p: 1.5 })).rejects.toMatchObject({ status: 400, param: 'top_p', message: expect.stringContaining('≤ 1') });
    await expect(client.completions.create({ model: MODEL, prompt: 'x', max_tokens: 100000 })).rejects.toMatchObject({ status: 400, param: 'max_tokens', message: expect.stringContaining('512') });
    await expect(client.completions.create({ model: MODEL, prompt: 'x', max_tokens: 510 })).rejects.toMatchObject({ status: 400, param: 'max_tokens', message: expect.stringContaining('context of 512') });
    await expect(client.completions.create({ model: MODEL, prompt: [1, 2, 9999] })).rejects.toMatchObject({ status: 400, param: 'prompt' });
    await expect(client.completions.create({ model: MODEL, prompt: 'x', n: 0 })).rejects.toMatchObject({ status: 400, param: 'n' });
    await expect(client.completions.create({ model: MODEL, prompt: 'x', stream_options: { include_usage: true } })).rejects.toMatchObject({ status: 400, param: 'stream_options' });
    await expect(client.chat.completions.create({ model: MODEL, messages: [] })).rejects.toMatchObject({ status: 400, param: 'messages' });
    await expect(client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], top_logprobs: 3 })).rejects.toMatchObject({ status: 400, param: 'top_logprobs' });
  });

  it('a malformed JSON body is a 400, not a 500', async () => {
    const r = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"model": ' });
    expect(r.status).toBe(400);
    expect((await r.json()).error.type).toBe('invalid_request_error');
  });

  it('/v1/models lists the base model and every adapter with its parent', async () => {
    const models = await client.models.list();
    const ids = models.data.map((m) => m.id);
    expect(ids).toContain(MODEL);
    expect(ids).toContain('storyteller');
    expect(models.data.find((m) => m.id === 'storyteller')).toMatchObject({ parent: MODEL, status: 'ready' });
  });
});
