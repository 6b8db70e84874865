// POST /tokenize and POST /detokenize (vLLM's tokenizer endpoints) on 127.0.0.1 with stories260K:
// round trips, counts equal to the prompt_tokens of real completions and chat completions, adapter
// names as model, the refusals (400/404 with param, 401 without the API key), and the declared
// schemas' examples accepted.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import OpenAI from 'openai';
import type { RunningServer } from '../../src/server/serve.ts';
import { tokenizeSchemas } from '../../src/server/tokenize-routes.ts';
import { adapterFiles, startTestServer, upload } from '../helpers/server.ts';
import { storiesExpected } from '../helpers/fixtures.ts';

const E = storiesExpected();
const MODEL = 'stories260K';
const ADAPTER = 'teller';
const VOCAB = 512;
const CONTEXT = 512; // testConfig's maxContext
let server: RunningServer;
let client: OpenAI;

beforeAll(async () => {
  server = await startTestServer();
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  expect((await upload(server.url, ADAPTER, adapterFiles({ rank: 4, seed: 3, scaleB: 2 }))).status).toBe(201);
});
afterAll(async () => { await server?.close(); });

async function post(path: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: any }> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const r = await fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  return { status: r.status, body: await r.json() };
}

const tokenize = (body: unknown) => post('/tokenize', body);
const detokenize = (body: unknown) => post('/detokenize', body);

describe('/tokenize and /detokenize', () => {
  it('a prompt: the reference ids (BOS added), count and max_model_len; /detokenize gives the prompt back', async () => {
    for (const c of E.tokenizer_cases) {
      const t = await tokenize({ model: MODEL, prompt: c.text });
      expect(t.status).toBe(200);
      expect(t.body).toEqual({ tokens: c.ids, count: c.ids.length, max_model_len: CONTEXT });
      const plain = await tokenize({ model: MODEL, prompt: c.text, add_special_tokens: false });
      expect(plain.body.tokens).toEqual(c.ids.slice(1)); // without BOS
      const d = await detokenize({ model: MODEL, tokens: plain.body.tokens });
      expect(d).toEqual({ status: 200, body: { prompt: c.text } });
      // with BOS: special tokens are kept, as in vLLM
      expect([`<s>${c.text}`, `<s> ${c.text}`]).toContain((await detokenize({ model: MODEL, tokens: t.body.tokens })).body.prompt);
    }
    expect(await detokenize({ model: MODEL, tokens: [] })).toEqual({ status: 200, body: { prompt: '' } });
    expect(await tokenize({ model: MODEL, prompt: '' })).toEqual({ status: 200, body: { tokens: [1], count: 1, max_model_len: CONTEXT } });
    expect(await tokenize({ model: MODEL, prompt: '', add_special_tokens: false })).toEqual({ status: 200, body: { tokens: [], count: 0, max_model_len: CONTEXT } });
  });

  it('a prompt longer than the context is counted, not refused (as vLLM); the completion refuses it', async () => {
    const prompt = 'a b '.repeat(400);
    expect(Buffer.byteLength(prompt)).toBeLessThan(server.prompts.maxPromptBytes);
    const t = await tokenize({ model: MODEL, prompt });
    expect(t.status).toBe(200);
    expect(t.body.count).toBeGreaterThan(t.body.max_model_len);
    const c = await post('/v1/completions', { model: MODEL, prompt, max_tokens: 1 });
    expect(c.status).toBe(400);
    expect(c.body.error.message).toContain(`the prompt is ${t.body.count} tokens`);
  });

  it('count equals usage.prompt_tokens of a completion with the same prompt', async () => {
    const prompts = [E.generation_cases[0].prompt, 'Lily and Tom went to the park. They saw a big dog!', '  two  spaces\nand a newline', 'x'];
    for (const prompt of prompts) {
      const [t, c] = await Promise.all([tokenize({ model: MODEL, prompt }), client.completions.create({ model: MODEL, prompt, max_tokens: 1, temperature: 0 })]);
      expect(t.status).toBe(200);
      expect(t.body.count).toBe(c.usage!.prompt_tokens);
      expect(t.body.tokens).toHaveLength(t.body.count);
    }
  });

  it('messages: count equals a chat completion\'s prompt_tokens, with and without the generation prompt', async () => {
    const messages = [
      { role: 'system' as const, content: 'You tell short stories.' },
      { role: 'user' as const, content: 'Tell me about a cat.' },
      { role: 'assistant' as const, content: 'Once upon a time there was a cat.' },
      { role: 'user' as const, content: [{ type: 'text' as const, text: 'And then?' }] },
    ];
    // text parts are one text joined by newlines, as vLLM joins them
    const parts = await tokenize({ model: MODEL, messages: [{ role: 'user', content: [{ type: 'text', text: 'Hello' }, { type: 'text', text: 'world' }] }] });
    const joined = await tokenize({ model: MODEL, messages: [{ role: 'user', content: 'Hello\nworld' }] });
    expect(parts.body.tokens).toEqual(joined.body.tokens);
    for (const addGen of [true, false]) {
      const t = await tokenize({ model: MODEL, messages, add_generation_prompt: addGen });
      const c = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 1, temperature: 0, add_generation_prompt: addGen } as never) as OpenAI.ChatCompletion;
      expect(t.status).toBe(200);
      expect(t.body.count).toBe(c.usage!.prompt_tokens);
      expect(t.body.max_model_len).toBe(CONTEXT);
      expect(t.body.tokens[0]).toBe(1); // the template's own BOS, once
      expect(t.body.tokens[1]).not.toBe(1);
    }
    const defaults = await tokenize({ model: MODEL, messages });
    expect(defaults.body).toEqual((await tokenize({ model: MODEL, messages, add_generation_prompt: true })).body);
    // add_special_tokens: true tokenizes the rendered text with BOS added (on top of the template's)
    const doubled = await tokenize({ model: MODEL, messages, add_special_tokens: true });
    expect(doubled.body.tokens).toEqual([1, ...defaults.body.tokens]);
    expect((await detokenize({ model: MODEL, tokens: defaults.body.tokens.slice(1) })).body.prompt).toBe('You tell short stories.\nUser: Tell me about a cat.\nAssistant: Once upon a time there was a cat.\nUser: And then?\nAssistant:');
  });

  it('an adapter name (or <base>:<adapter>) as model: the base tokenizer', async () => {
    const base = await tokenize({ model: MODEL, prompt: 'Once upon a time' });
    for (const model of [ADAPTER, `${MODEL}:${ADAPTER}`]) {
      const t = await tokenize({ model, prompt: 'Once upon a time' });
      expect(t).toEqual({ status: 200, body: base.body });
      const c = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 1 });
      expect(t.body.count).toBe(c.usage!.prompt_tokens);
      expect(await detokenize({ model, tokens: base.body.tokens.slice(1) })).toEqual({ status: 200, body: { prompt: 'Once upon a time' } });
    }
  });

  it('refusals: 400 naming the field (and the limit), 404 for an unknown model as the completions route gives it', async () => {
    const both = await tokenize({ model: MODEL, prompt: 'a', messages: [{ role: 'user', content: 'b' }] });
    expect(both.status).toBe(400);
    expect(both.body.error).toMatchObject({ type: 'invalid_request_error', code: 'invalid_request', param: 'messages' });
    expect(both.body.error.message).toMatch(/not both/);

    const neither = await tokenize({ model: MODEL });
    expect(neither.status).toBe(400);
    expect(neither.body.error).toMatchObject({ code: 'invalid_request', param: 'prompt' });

    const badId = await detokenize({ model: MODEL, tokens: [1, VOCAB, 2] });
    expect(badId.status).toBe(400);
    expect(badId.body.error).toMatchObject({ code: 'invalid_request', param: 'tokens[1]' });
    expect(badId.body.error.message).toContain(`[0, ${VOCAB})`);
    for (const bad of [-1, 1.5, '3', null]) {
      const r = await detokenize({ model: MODEL, tokens: [5, bad] });
      expect(r.status).toBe(400);
      expect(r.body.error.param).toBe('tokens[1]');
    }
    const long = await detokenize({ model: MODEL, tokens: new Array(CONTEXT + 1).fill(5) });
    expect(long.status).toBe(400);
    expect(long.body.error).toMatchObject({ param: 'tokens' });
    expect(long.body.error.message).toContain(String(CONTEXT));

    const cases: [string, unknown, string][] = [
      ['/tokenize', { prompt: 'a' }, 'model'],
      ['/tokenize', { model: MODEL, prompt: [1, 2] }, 'prompt'],
      ['/tokenize', { model: MODEL, messages: [] }, 'messages'],
      ['/tokenize', { model: MODEL, messages: [{ role: 'robot', content: 'x' }] }, 'messages[0].role'],
      ['/tokenize', { model: MODEL, prompt: 'a', add_special_tokens: 'yes' }, 'add_special_tokens'],
      ['/tokenize', { model: MODEL, prompt: 'a', return_token_strs: true }, 'return_token_strs'],
      ['/tokenize', { model: MODEL, prompt: 'a'.repeat(server.prompts.maxPromptBytes + 1) }, 'prompt'],
      ['/tokenize', [1, 2], 'body'],
      ['/detokenize', { model: MODEL }, 'tokens'],
    ];
    for (const [path, body, param] of cases) {
      const r = await post(path, body);
      expect(r.status, `${path} ${JSON.stringify(body).slice(0, 80)}`).toBe(400);
      expect(r.body.error.param).toBe(param);
    }

    const missing = await tokenize({ model: 'no-such-adapter', prompt: 'a' });
    expect(missing.status).toBe(404);
    expect(missing.body.error).toMatchObject({ code: 'model_not_found', param: 'model' });
    const fromCompletions = await post('/v1/completions', { model: 'no-such-adapter', prompt: 'a' });
    expect(fromCompletions.status).toBe(404);
    expect(missing.body).toEqual(fromCompletions.body);
    expect((await detokenize({ model: 'no-such-adapter', tokens: [1] })).body).toEqual(fromCompletions.body);
  });

  it('the declared schemas: routes carry them, and their examples are served', async () => {
    const schemas = tokenizeSchemas(MODEL, { vocabSize: VOCAB, maxContext: CONTEXT });
    for (const [path, schema] of [['/tokenize', schemas.tokenize], ['/detokenize', schemas.detokenize]] as const) {
      expect(server.app.hasRoute({ method: 'POST', url: path })).toBe(true);
      expect(schema.body.examples.length).toBeGreaterThan(0);
      for (const example of schema.body.examples) {
        const r = await post(path, example);
        expect(r.status, JSON.stringify(example)).toBe(200);
        expect(Object.keys(r.body).sort()).toEqual([...schema.response[200].required].sort());
      }
    }
  });
});

describe('with --api-key', () => {
  let keyed: RunningServer;
  beforeAll(async () => { keyed = await startTestServer({ apiKey: 'sekrit' }); });
  afterAll(async () => { await keyed?.close(); });

  it('401 without the key, before the body is judged; 200 with it', async () => {
    for (const [path, body] of [['/tokenize', { model: MODEL, prompt: 'Once' }], ['/detokenize', { model: MODEL, tokens: [1] }], ['/tokenize', { nonsense: true }]] as const) {
      const r = await fetch(`${keyed.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      expect(r.status).toBe(401);
      expect(((await r.json()) as { error: { code: string } }).error.code).toBe('unauthorized');
    }
    const ok = await fetch(`${keyed.url}/tokenize`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer sekrit' }, body: JSON.stringify({ model: MODEL, prompt: 'Once' }) });
    expect(ok.status).toBe(200);
  });
});
