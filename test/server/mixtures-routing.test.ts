// Issue 14 over real HTTP (127.0.0.1, stories260K): per-request mixtures against an independent
// float64 reference (alone and in a batch with base, single-adapter and other mixture rows; a*1 = a;
// a*1 + a*-1 = base), on the completions, chat and WebSocket paths, labelled `mixture` in metrics;
// refusals; and semantic routing with the demo adapters' committed examples: "auto" picks the
// styled adapter (header, model field, metrics), an off-domain prompt goes to base, "auto:mix"
// reports its weights, /v1/route scores without generating, /v1/embeddings in OpenAI's shape,
// PATCH sets examples that routing uses at once.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { adapterFiles, startTestServer, upload } from '../helpers/server.ts';
import type { RunningServer } from '../../src/server/serve.ts';
import { STORIES_DIR, storiesExpected } from '../helpers/fixtures.ts';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { targetPath, targetShape } from '../../src/runtime/model-targets.ts';
import { decodeAdapter } from '../../src/adapters/lora-adapter.ts';
import { greedyReference, ReferenceLlama } from '../reference/llama-reference.ts';
import type { AdapterSpec } from '../../scripts/make-test-adapters.ts';

const base = loadModel(STORIES_DIR);
const cfg = base.config;
const rawConfig = JSON.parse(readFileSync(join(STORIES_DIR, 'config.json'), 'utf8'));
const SPECS: Record<string, AdapterSpec> = {
  a: { rank: 4, seed: 201, scaleB: 2 },
  b: { rank: 8, seed: 202, scaleB: 2, alpha: 8, targets: ['q_proj', 'v_proj', 'down_proj'] },
};
const c0 = storiesExpected().generation_cases[0];
const PROMPT = [...c0.prompt_ids, ...c0.greedy_ids].slice(0, 20);
const GEN = 10;
const DEMO = join(import.meta.dirname, '../../models/default-adapters');

let server: RunningServer;
let MODEL: string;
beforeAll(async () => {
  server = await startTestServer({ preloadAdapters: DEMO, maxMixture: 3 });
  MODEL = server.engine.info.name;
  for (const [n, spec] of Object.entries(SPECS)) expect((await upload(server.url, n, adapterFiles(spec))).status).toBe(201);
});
afterAll(async () => { await server?.close(); });

const post = (path: string, body: unknown) => fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

async function served(model: string, extra: Record<string, unknown> = {}): Promise<{ text: string; lp: number[] }> {
  const r = await post('/v1/completions', { model, prompt: PROMPT, max_tokens: GEN, temperature: 0, logprobs: 1, ignore_eos: true, ...extra });
  const body = await r.json();
  expect(r.status, JSON.stringify(body)).toBe(200);
  return { text: body.choices[0].text, lp: body.choices[0].logprobs.token_logprobs };
}

// s·B·A of every target of an adapter, float64, from its decoded factors (file layout, config scale)
function deltas(spec: AdapterSpec): Map<string, Float64Array> {
  const f = adapterFiles(spec);
  const a = decodeAdapter(f, cfg, { maxRank: 64, modelName: 'x' }).adapter!;
  const out = new Map<string, Float64Array>();
  for (const t of a.targets) {
    const [rows, cols] = targetShape(cfg, t.target);
    const d = new Float64Array(rows * cols);
    for (let o = 0; o < rows; o++) for (let i = 0; i < cols; i++) {
      let acc = 0;
      for (let k = 0; k < t.rank; k++) acc += t.b[o * t.rank + k] * t.a[k * cols + i];
      d[o * cols + i] = t.scale * acc;
    }
    out.set(`${targetPath(t.layer, t.target)}.weight`, d);
  }
  return out;
}

function blend(parts: [Map<string, Float64Array>, number][]): Map<string, Float64Array> {
  const out = new Map<string, Float64Array>();
  for (const [d, w] of parts) for (const [k, v] of d) {
    const acc = out.get(k) ?? new Float64Array(v.length);
    for (let i = 0; i < v.length; i++) acc[i] += w * v[i];
    out.set(k, acc);
  }
  return out;
}

function reference(d: Map<string, Float64Array>): number[] {
  return greedyReference(new ReferenceLlama(rawConfig, base.weights, d), PROMPT, GEN).lp;
}

const maxAbs = (x: number[], y: number[]) => Math.max(...x.map((v, i) => Math.abs(v - y[i])));

describe('per-request mixtures', () => {
  it('a*0.7+b*0.3 = the float64 reference over W0 + 0.7·ΔA + 0.3·ΔB, alone and in a mixed batch', async () => {
    const da = deltas(SPECS.a);
    const db = deltas(SPECS.b);
    const want = reference(blend([[da, 0.7], [db, 0.3]]));
    const alone = await served('a*0.7+b*0.3');
    const err = maxAbs(alone.lp, want);
    console.log(`mixture a*0.7+b*0.3: max |Δ log-prob| vs the float64 reference ${err.toExponential(2)}`);
    expect(err).toBeLessThan(1e-4);
    const other = reference(blend([[da, -0.5], [db, 1.2]]));
    const solo = { base: await served(MODEL), a: await served('a') };
    const [m1, bs, m2, sa, m3] = await Promise.all([
      served('a*0.7+b*0.3'), served(MODEL), served(MODEL, { adapters: [{ name: 'a', weight: -0.5 }, { name: 'b', weight: 1.2 }] }), served('a'), served(`${MODEL}:a*0.7+b*0.3`),
    ]);
    for (const m of [m1, m3]) expect(maxAbs(m.lp, want)).toBeLessThan(1e-4);
    expect(maxAbs(m2.lp, other)).toBeLessThan(1e-4);
    expect(maxAbs(bs.lp, solo.base.lp)).toBeLessThan(1e-4);
    expect(maxAbs(sa.lp, solo.a.lp)).toBeLessThan(1e-4);
    expect(maxAbs(m2.lp, alone.lp)).toBeGreaterThan(1e-3); // a different blend gives something else
  }, 60_000);

  it('a*1.0 alone is a; a*1 + a*-1 is the base model', async () => {
    const a = await served('a');
    const a1 = await served('a*1.0');
    expect(a1.text).toBe(a.text);
    expect(maxAbs(a1.lp, a.lp)).toBeLessThan(1e-4);
    const zero = await served('a*1+a*-1');
    const b = await served(MODEL);
    expect(zero.text).toBe(b.text);
    expect(maxAbs(zero.lp, b.lp)).toBeLessThan(1e-4);
  });

  it('works on chat and the WebSocket; metrics label it mixture', async () => {
    const chat = await post('/v1/chat/completions', { model: 'a*0.5+b*0.5', messages: [{ role: 'user', content: 'Tell me a story' }], max_tokens: 8, temperature: 0 });
    expect(chat.status).toBe(200);
    expect(chat.headers.get('x-loraserve-adapter')).toBe('a*0.5+b*0.5');
    const ws = new WebSocket(`${server.url.replace('http', 'ws')}/v1/stream`);
    await new Promise((r) => ws.once('open', r));
    const done = new Promise<Record<string, unknown>>((resolve, reject) => {
      ws.on('message', (m) => {
        const ev = JSON.parse(String(m));
        if (ev.type === 'response.completed') resolve(ev);
        if (ev.type === 'error' || ev.type === 'response.failed') reject(new Error(String(m)));
      });
    });
    ws.send(JSON.stringify({ type: 'response.create', response_id: 'm1', model: 'a*0.5+b*0.5', prompt: 'Once upon a time', max_tokens: 8, temperature: 0 }));
    expect(((await done).response as { status: string }).status).toBe('completed');
    ws.close();
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/loraserve_generation_tokens_total\{adapter="mixture"\} [1-9]/);
  });

  it('vllm:lora_requests_info lists a running mixture under its inputs\' names, never its weights (a label value per blend)', async () => {
    const seen = new Set<string>();
    for (let round = 0; round < 3 && !(seen.has('a') && seen.has('b')); round++) {
      const r = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'a*0.25+b*0.75', prompt: 'Once', max_tokens: 450, n: 4, ignore_eos: true, stream: true }) });
      const reader = r.body!.getReader();
      await reader.read(); // its first chunk: it runs
      const text = await (await fetch(`${server.url}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith('vllm:lora_requests_info{'))!;
      const running = /running_lora_adapters="([^"]*)"/.exec(line)![1];
      expect(line).not.toMatch(/[*]/);
      for (const name of running.split(',').filter(Boolean)) seen.add(name);
      while (!(await reader.read()).done) { /* to the end */ }
    }
    expect([...seen].sort()).toEqual(['a', 'b']);
  });

  it('refuses an unknown adapter (404), too many, a non-finite weight, a weight over the bound, another base, and a mixture with a non-base model (400)', async () => {
    const cases: [Record<string, unknown>, number, string, RegExp][] = [
      [{ model: 'a*0.5+nope*0.5' }, 404, 'model', /`nope`/],
      [{ model: 'a*0.2+b*0.2+a*0.2+b*0.2' }, 400, 'model', /at most 3 adapters \(--max-mixture\)/],
      [{ model: 'a*1e999+b*0.5' }, 400, 'model', /finite/],
      [{ model: 'a*abc' }, 400, 'model', /finite|<adapter>\*<weight>/],
      [{ model: 'a*9+b*0.5' }, 400, 'model', /within \[-8, 8\]/],
      [{ model: 'other-model:a*0.5+b*0.5' }, 400, 'model', /base model "other-model"/],
      [{ model: 'a', adapters: [{ name: 'a', weight: 1 }] }, 400, 'adapters', /must then be the base model/],
      [{ model: MODEL, adapters: [{ name: 'a', weight: 20 }] }, 400, 'adapters[0].weight', /within/],
      [{ model: MODEL, adapters: [{ name: 'a', weight: 1, extra: 1 }] }, 400, 'adapters[0].extra', /extra|additional|unknown/],
    ];
    for (const [over, status, param, message] of cases) {
      const r = await post('/v1/completions', { prompt: 'Once', max_tokens: 2, ...over });
      const e = (await r.json()).error;
      expect(r.status, JSON.stringify(over)).toBe(status);
      expect(e.param, JSON.stringify(over)).toBe(param);
      expect(e.message, JSON.stringify(over)).toMatch(message);
    }
  });
});

const PIRATE = "Once upon a time, there was a little lass named Lily. She loved ta play with her toys an' run in th' park.";
const ARCHAIC = 'One day, there dwelt a little boy named Tim. Verily, he beheld a big tree and was most happy.';

describe('semantic routing', () => {
  it('"auto" picks the adapter whose examples are nearest: header, model field, routing report, metrics', async () => {
    for (const [prompt, want] of [[PIRATE, 'pirate'], [ARCHAIC, 'archaic']] as const) {
      const r = await post('/v1/completions', { model: 'auto', prompt, max_tokens: 4, temperature: 0 });
      const body = await r.json();
      expect(r.status, JSON.stringify(body)).toBe(200);
      expect(r.headers.get('x-loraserve-adapter')).toBe(want);
      expect(body.model).toBe(want);
      expect(body.routing.adapter).toBe(want);
      expect(body.routing.scores[0].adapter).toBe(want);
    }
    const chat = await post('/v1/chat/completions', { model: `${MODEL}:auto`, messages: [{ role: 'user', content: PIRATE }], max_tokens: 4 });
    expect(chat.headers.get('x-loraserve-adapter')).toBe('pirate');
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/loraserve_routing_decisions_total\{adapter="pirate"\} [2-9]/);
  });

  it('under the threshold, the base model; /v1/route scores without generating; auto:mix reports its weights', async () => {
    // a server whose --route-threshold no score reaches: "auto" is the base model, auto:mix too
    const strict = await startTestServer({ preloadAdapters: DEMO, routeThreshold: 0.99 });
    try {
      const off = await fetch(`${strict.url}/v1/route`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: PIRATE }) });
      const offBody = await off.json();
      expect(off.status, JSON.stringify(offBody)).toBe(200);
      expect(offBody.scores.map((s: { adapter: string }) => s.adapter).sort()).toEqual(['archaic', 'pirate', 'sad']);
      expect(offBody.scores[0].score).toBeLessThan(0.99);
      expect(offBody).toMatchObject({ adapter: null, mixture: [], threshold: 0.99 });
      for (const model of ['auto', 'auto:mix']) {
        const r = await fetch(`${strict.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, prompt: PIRATE, max_tokens: 2 }) });
        expect(r.status).toBe(200);
        expect(r.headers.get('x-loraserve-adapter')).toBe(MODEL);
        expect((await r.json()).routing.adapter).toBeNull();
      }
    } finally {
      await strict.close();
    }
    const route = await (await post('/v1/route', { messages: [{ role: 'user', content: PIRATE }] })).json();
    expect(route.adapter).toBe('pirate');
    const mix = await post('/v1/completions', { model: 'auto:mix', prompt: PIRATE, max_tokens: 4 });
    const mixBody = await mix.json();
    expect(mix.status, JSON.stringify(mixBody)).toBe(200);
    const weights = mixBody.routing.mixture as { name: string; weight: number }[];
    expect(weights[0].name).toBe('pirate');
    expect(weights.reduce((s, w) => s + w.weight, 0)).toBeCloseTo(1, 9);
    expect(mixBody.model).toBe(weights.map((w) => `${w.name}*${w.weight}`).join('+'));
  });

  it('/v1/embeddings: OpenAI\'s shape, float and base64, the same vectors routing uses; adapters refused', async () => {
    const r = await post('/v1/embeddings', { model: MODEL, input: ['Once upon a time', PIRATE] });
    const body = await r.json();
    expect(r.status, JSON.stringify(body)).toBe(200);
    expect(body.data).toHaveLength(2);
    expect(body.data[0].embedding).toHaveLength(cfg.hiddenSize);
    const tok = await (await post('/tokenize', { model: MODEL, prompt: 'Once upon a time' })).json();
    const tok2 = await (await post('/tokenize', { model: MODEL, prompt: PIRATE })).json();
    expect(body.usage.prompt_tokens).toBe(tok.count + tok2.count);
    const b64 = await (await post('/v1/embeddings', { model: MODEL, input: tok.tokens, encoding_format: 'base64' })).json();
    const decoded = Array.from(new Float32Array(Uint8Array.from(Buffer.from(b64.data[0].embedding, 'base64')).buffer));
    expect(maxAbs(decoded, body.data[0].embedding)).toBeLessThan(1e-6);
    const bad = await post('/v1/embeddings', { model: 'pirate', input: 'x' });
    expect(bad.status).toBe(400);
    expect((await bad.json()).error.param).toBe('model');
    // careless or hostile bodies: each a 400 naming the field, never a 5xx
    const refusals: [Record<string, unknown>, RegExp][] = [
      [{ model: MODEL, input: Array.from({ length: 65 }, () => 'x') }, /^input/],
      [{ model: MODEL, input: [1, 999_999] }, /^input/],
      [{ model: MODEL, input: [] }, /^input/],
      [{ model: MODEL, input: 'x', dimensions: 8 }, /^dimensions$/],
      [{ model: MODEL, input: 'x', encoding_format: 'hex' }, /^encoding_format$/],
      [{ model: MODEL }, /^input$/],
    ];
    for (const [body, param] of refusals) {
      const r = await post('/v1/embeddings', body);
      expect(r.status, JSON.stringify(body).slice(0, 80)).toBe(400);
      expect((await r.json()).error.param).toMatch(param);
    }
    const both = await post('/v1/route', { prompt: 'x', messages: [{ role: 'user', content: 'y' }] });
    expect(both.status).toBe(400);
    const neither = await post('/v1/route', {});
    expect(neither.status).toBe(400);
  });

  it('PATCH sets an adapter\'s examples, and routing uses them at once; auto with no examples anywhere is a 400', async () => {
    const examples = (JSON.parse(readFileSync(join(DEMO, 'pirate', 'loraserve.json'), 'utf8')) as { examples: string[] }).examples;
    const p = await fetch(`${server.url}/v1/adapters/a`, { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ description: 'a pirate twin', examples }) });
    const info = await p.json();
    expect(p.status, JSON.stringify(info)).toBe(200);
    expect(info.examples).toHaveLength(examples.length);
    const route = await (await post('/v1/route', { prompt: PIRATE })).json();
    expect(route.scores.map((s: { adapter: string }) => s.adapter)).toContain('a');
    const models = await (await fetch(`${server.url}/v1/models`)).json();
    expect(models.data.find((m: { id: string }) => m.id === 'a').description).toBe('a pirate twin');
    const refused = await fetch(`${server.url}/v1/adapters/pirate`, { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ examples: ['x'] }) });
    expect(refused.status).toBe(409); // preloaded: read-only
    const badPatch = await fetch(`${server.url}/v1/adapters/a`, { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ examples: [''] }) });
    expect(badPatch.status).toBe(400);

    const bare = await startTestServer();
    try {
      const r = await fetch(`${bare.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'auto', prompt: 'Once', max_tokens: 2 }) });
      const e = (await r.json()).error;
      expect(r.status).toBe(400);
      expect(e.message).toMatch(/no adapter has example prompts/);
    } finally {
      await bare.close();
    }
  });
});
