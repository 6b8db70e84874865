// Found by an attack pass (2026-12-04): texts that routing embeds are cut to the model's context
// rather than sent to the engine too long (which used to fail every request in the step with a
// 500), or refused for a field the client never sent; the engine refuses a prompt that does not fit
// on its own, failing that request alone; auto:mix leaves out adapters that cannot be blended;
// "auto" cannot be taken as an adapter name; an adapter_config.json over the limit that loading it
// back applies is refused at upload, not lost at the next restart; an alias of another stored
// adapter (load_lora_adapter of its directory) cannot rewrite that adapter's metadata; an adapter
// whose output overflows float32 fails its requests with a 422 instead of answering empty tokens.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningServer } from '../../src/server/serve.ts';
import { adapterFiles, startTestServer, upload, uploadForm } from '../helpers/server.ts';
import { Sequence } from '../../src/runtime/sequence.ts';
import { LoraserveError } from '../../src/runtime/errors.ts';
import { truncateUtf8 } from '../../src/server/embedder.ts';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { encodeSafetensors } from '../../src/runtime/safetensors.ts';
import { buildAdapter } from '../../scripts/make-test-adapters.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

let server: RunningServer;
let MODEL = '';
const post = (path: string, body: unknown) => fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: AbortSignal.timeout(60_000) });
const patch = (name: string, body: unknown) => fetch(`${server.url}/v1/adapters/${name}`, { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
const examples = { plain: ['Once upon a time there was a little girl.', 'The dog ran to the park.'], dora: ['Once upon a time there was a little girl.'] };

beforeAll(async () => {
  server = await startTestServer();
  MODEL = server.engine.info.name;
  expect((await upload(server.url, 'plain', adapterFiles({ rank: 4, seed: 11 }))).status).toBe(201);
  expect((await upload(server.url, 'twin', adapterFiles({ rank: 4, seed: 12 }))).status).toBe(201);
  const model = loadModel(STORIES_DIR);
  const dora = buildAdapter(model.config, { rank: 4, seed: 13, dora: true }, model.weights);
  expect((await upload(server.url, 'dora', { config: new TextEncoder().encode(JSON.stringify(dora.config)), weights: encodeSafetensors(dora.tensors) })).status).toBe(201);
  expect((await patch('plain', { examples: examples.plain })).status).toBe(200);
  expect((await patch('twin', { examples: examples.plain })).status).toBe(200);
  expect((await patch('dora', { examples: examples.dora })).status).toBe(200);
});
afterAll(async () => { await server?.close(); });

// a generation on the base model running while `attack` is sent: it must finish as if alone
async function beside(attack: () => Promise<Response>): Promise<{ attack: Response; other: number }> {
  const other = post('/v1/completions', { model: MODEL, prompt: 'Once upon a time', max_tokens: 24, ignore_eos: true, temperature: 0 });
  const [a, o] = await Promise.all([attack(), other]);
  return { attack: a, other: o.status };
}

describe('routing texts longer than the context', () => {
  const ctx = () => server.engine.info.maxContext;

  it('/v1/route with a prompt of several contexts routes by its opening, and a request beside it is unharmed', async () => {
    const long = 'Once upon a time there was a dog. '.repeat(100); // ~3400 bytes: several 512-token contexts
    const { attack, other } = await beside(() => post('/v1/route', { prompt: long }));
    const body = await attack.json();
    expect(attack.status, JSON.stringify(body)).toBe(200);
    expect(body.scores.length).toBeGreaterThan(0);
    expect(other).toBe(200);
  });

  it('model "auto" with token ids that fit but spell a longer text: 200, and a request beside it is unharmed', async () => {
    const ids = Array.from({ length: Math.floor(ctx() * 0.8) }, () => 231);
    const { attack, other } = await beside(() => post('/v1/completions', { model: 'auto', prompt: ids, max_tokens: 2, temperature: 0 }));
    expect(attack.status, await attack.clone().text()).toBe(200);
    expect(other).toBe(200);
  });

  it('an example longer than the context is kept, and routing still answers', async () => {
    const r = await patch('twin', { examples: [...examples.plain, 'The cat sat on the mat. '.repeat(166)] }); // 3984 characters
    expect(r.status, await r.clone().text()).toBe(200);
    const routed = await post('/v1/completions', { model: 'auto', prompt: 'Once upon a time', max_tokens: 2, temperature: 0 });
    expect(routed.status, await routed.clone().text()).toBe(200);
    expect((await patch('twin', { examples: examples.plain })).status).toBe(200);
  });

  it('truncateUtf8 keeps whole characters within the byte limit', () => {
    const s = 'aé€😀'.repeat(50); // 1, 2, 3 and 4 bytes
    for (let max = 0; max < 120; max++) {
      const t = truncateUtf8(s, max);
      expect(Buffer.byteLength(t, 'utf8')).toBeLessThanOrEqual(max);
      expect(s.startsWith(t)).toBe(true);
      expect(Buffer.byteLength(t, 'utf8')).toBeGreaterThan(max - 4); // no more than one character short
    }
    expect(truncateUtf8('short', 100)).toBe('short');
  });
});

describe('the engine\'s own guard', () => {
  const limits = { numLayers: 1, numKvHeads: 1, headDim: 8, maxContext: 16, eosTokenIds: [2], vocabSize: 100 };
  const req = (promptTokens: number[]) => ({ promptTokens, maxTokens: 1, sampling: { temperature: 0 }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: null, adapter: null }) as never;
  const refused = (promptTokens: number[]): LoraserveError => {
    try { new Sequence('s', req(promptTokens), {} as never, limits); } catch (e) { return e as LoraserveError; }
    throw new Error('accepted');
  };

  it('refuses a prompt longer than the context, an empty one and an id outside the vocabulary, naming the prompt', () => {
    for (const [tokens, text] of [[Array(17).fill(5), /17 tokens; the model's context holds 16/], [[], /no tokens/], [[5, 100], /outside the vocabulary/], [[5, -1], /outside the vocabulary/]] as const) {
      const e = refused([...tokens]);
      expect(e).toBeInstanceOf(LoraserveError);
      expect(e.code).toBe('invalid_request');
      expect(e.param).toBe('prompt');
      expect(e.message).toMatch(text);
    }
  });
});

describe('adapters', () => {
  it('auto:mix blends only adapters that can be blended: a DoRA adapter as near as the others is left out', async () => {
    const route = await (await post('/v1/route', { prompt: examples.dora[0] })).json();
    expect(route.scores.map((s: { adapter: string }) => s.adapter)).toContain('dora');
    expect(route.mixture.map((p: { name: string }) => p.name)).not.toContain('dora');
    const r = await post('/v1/completions', { model: 'auto:mix', prompt: examples.dora[0], max_tokens: 2, temperature: 0 });
    expect(r.status, await r.clone().text()).toBe(200);
  });

  it('an adapter whose finite but huge weights overflow the output fails its own requests with a 422, not a 200 of empty tokens', async () => {
    expect((await upload(server.url, 'huge', adapterFiles({ rank: 4, seed: 21, scaleB: 1e37 }))).status).toBe(201);
    const { attack, other } = await beside(() => post('/v1/completions', { model: 'huge', prompt: 'Once upon a time', max_tokens: 4, temperature: 0, logprobs: 1 }));
    const body = await attack.json();
    expect(attack.status, JSON.stringify(body)).toBe(422);
    expect(body.error.message).toMatch(/adapter 'huge' makes the model's output not finite/);
    expect(other).toBe(200);
    // the prompt's own logprobs (echo, no output tokens) too
    const echo = await post('/v1/completions', { model: 'huge', prompt: 'Once upon a time', max_tokens: 0, echo: true, logprobs: 1 });
    const echoed = await echo.json();
    expect(echo.status, JSON.stringify(echoed)).toBe(422);
    expect(echoed.error.message).toMatch(/not finite \(a NaN or infinite logit at prompt token 2\)/);
  });

  it('"auto" is not a name an adapter can take, by upload or load_lora_adapter', async () => {
    const up = await fetch(`${server.url}/v1/adapters`, { method: 'POST', body: uploadForm('auto', adapterFiles({ rank: 2, seed: 1 })) });
    expect(up.status).toBe(400);
    expect((await up.json()).error.message).toMatch(/reserved/);
    const load = await post('/v1/load_lora_adapter', { lora_name: 'AUTO', lora_path: 'x' });
    expect(load.status).toBe(400);
    expect((await load.json()).error.param).toBe('lora_name');
  });

  it('an alias of a stored adapter (load_lora_adapter of its store directory) is read-only: PATCH cannot rewrite the other adapter\'s files', async () => {
    const own = join(server.registry.store.root, 'plain');
    const before = readFileSync(join(own, 'loraserve.json'), 'utf8');
    const load = await post('/v1/load_lora_adapter', { lora_name: 'alias', lora_path: own });
    expect(load.status, await load.clone().text()).toBe(200);
    const r = await patch('alias', { description: 'not plain', examples: ['x'] });
    expect(r.status).toBe(409);
    expect((await r.json()).error.message).toMatch(/not its own directory in the store/);
    expect(readFileSync(join(own, 'loraserve.json'), 'utf8')).toBe(before);
    expect((await patch('plain', { description: 'still writable' })).status).toBe(200); // the adapter itself
    expect((await fetch(`${server.url}/v1/adapters/alias`, { method: 'DELETE' })).status).toBeLessThan(300);
    expect(readFileSync(join(own, 'loraserve.json'), 'utf8')).toContain('still writable'); // deleting the alias leaves plain's files
  });

  it('an adapter_config.json over 1 MiB is refused at upload (reading it back would refuse it after a restart)', async () => {
    const f = adapterFiles({ rank: 2, seed: 2 });
    const config = JSON.parse(new TextDecoder().decode(f.config));
    config.padding = 'x'.repeat(1 << 20);
    const r = await fetch(`${server.url}/v1/adapters`, { method: 'POST', body: uploadForm('big-config', { config: new TextEncoder().encode(JSON.stringify(config)), weights: f.weights }) });
    const body = await r.json();
    expect(r.status, JSON.stringify(body)).toBe(422);
    expect(body.error.message).toMatch(/over the limit of 1048576/);
    expect((await fetch(`${server.url}/v1/adapters/big-config`)).status).toBe(404);
  });
});
