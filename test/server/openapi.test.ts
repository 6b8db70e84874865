// GET /openapi.json (issue 17) on the real server (stories260K on 127.0.0.1, local admin on):
//   - a valid OpenAPI 3.1 description (@seriousme/openapi-schema-validator);
//   - every route of the app is in it (the WebSocket route aside: OpenAPI has no WebSocket
//     operation, @fastify/websocket hides it, and the description's info names it instead);
//   - every request body example, sent as is, succeeds (uploads first, then the rest, then merges
//     and the vLLM load/unload that need the uploaded adapter);
//   - property: random JSON bodies for /v1/completions get a 200 or a 4xx in OpenAI's error shape
//     with a string param, never a 5xx; and the WebSocket API answers the same body with the same
//     status and param (one validator for both).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import WebSocket from 'ws';
import { Validator } from '@seriousme/openapi-schema-validator';
import type { RunningServer } from '../../src/server/serve.ts';
import { WS_PATH } from '../../src/server/websocket.ts';
import { adapterFiles, startTestServer } from '../helpers/server.ts';
import { EXAMPLE_ADAPTER } from '../../src/server/request-schemas.ts';

const MODEL = 'stories260K';
const SEED = 20250617;

type Json = Record<string, unknown>;
interface Operation { requestBody?: { content: Record<string, { schema: Json; example?: unknown; examples?: Record<string, { value: unknown }> }> } }
interface Spec { openapi: string; info: { description?: string }; paths: Record<string, Record<string, Operation>> }

let server: RunningServer;
let spec: Spec;

beforeAll(async () => {
  server = await startTestServer();
  const r = await fetch(`${server.url}/openapi.json`);
  expect(r.status).toBe(200);
  spec = await r.json() as Spec;
});
afterAll(async () => { await server?.close(); });

// The app's routes, from Fastify's own route tree (printRoutes): [METHOD, /path/:param].
function appRoutes(): [string, string][] {
  const out: [string, string][] = [];
  const stack: string[] = [];
  for (const line of server.app.printRoutes({ commonPrefix: false }).split('\n')) {
    const m = /^([│ ]*)[├└]── (\S+)(?: \(([^)]*)\))?$/.exec(line);
    if (!m) continue;
    const depth = m[1].length / 4;
    stack.length = depth;
    stack.push(m[2]);
    const path = stack.join('');
    for (const method of (m[3] ?? '').split(',').map((x) => x.trim()).filter(Boolean)) out.push([method, path]);
  }
  return out;
}

const openapiPath = (path: string): string => path.replace(/:(\w+)/g, '{$1}');

function bodyExamples(op: Operation): { contentType: string; example: unknown }[] {
  const out: { contentType: string; example: unknown }[] = [];
  for (const [contentType, media] of Object.entries(op.requestBody?.content ?? {})) {
    const list = [media.example, ...Object.values(media.examples ?? {}).map((e) => e.value), ...((media.schema.examples as unknown[] | undefined) ?? [])];
    for (const example of list) if (example !== undefined) out.push({ contentType, example });
  }
  return out;
}

describe('GET /openapi.json', () => {
  it('is a valid OpenAPI 3.1 description', async () => {
    expect(spec.openapi).toBe('3.1.0');
    const validator = new Validator();
    const res = await validator.validate(structuredClone(spec) as never);
    expect(res.errors ?? [], JSON.stringify(res.errors, null, 1)?.slice(0, 2000)).toEqual([]);
    expect(res.valid).toBe(true);
    expect(validator.version).toBe('3.1');
  });

  it('describes every route of the app', () => {
    const routes = appRoutes().filter(([method]) => method !== 'HEAD');
    expect(routes.length).toBeGreaterThan(15);
    for (const [method, path] of routes) {
      if (path === WS_PATH) { expect(spec.info.description).toContain(WS_PATH); continue; }
      expect(spec.paths[openapiPath(path)]?.[method.toLowerCase()], `${method} ${path}`).toBeDefined();
    }
  });

  it('every body example is served (2xx), as sent', async () => {
    const ops = Object.entries(spec.paths).flatMap(([path, byMethod]) => Object.entries(byMethod).map(([method, op]) => ({ path, method, examples: bodyExamples(op) })))
      .filter((o) => o.examples.length > 0);
    expect(ops.map((o) => `${o.method} ${o.path}`).sort()).toEqual(expect.arrayContaining(['post /v1/completions', 'post /v1/chat/completions', 'post /tokenize', 'post /detokenize', 'post /v1/adapters', 'post /v1/adapters/merge', 'post /v1/load_lora_adapter', 'post /v1/unload_lora_adapter']));
    // what an example needs exists first: the upload (and its routing examples, PATCH), then the
    // rest, then what uses the upload
    const order = ['/v1/adapters', '/v1/adapters/{name}', '*', '/v1/adapters/merge', '/v1/load_lora_adapter', '/v1/unload_lora_adapter'];
    const rank = (path: string) => (order.includes(path) ? order.indexOf(path) : order.indexOf('*'));
    ops.sort((a, b) => rank(a.path) - rank(b.path));
    for (const { path: template, method, examples } of ops) {
      const path = template.replace('{name}', EXAMPLE_ADAPTER); // the uploaded example adapter
      expect(path, 'a body example on a path with other parameters').not.toContain('{');
      for (const { contentType, example } of examples) {
        let body: BodyInit;
        const headers: Record<string, string> = {};
        if (contentType === 'multipart/form-data') {
          // the text fields from the example; the file parts are a fixture adapter's files
          const form = new FormData();
          for (const [k, v] of Object.entries(example as Json)) form.append(k, String(v));
          const files = adapterFiles({ rank: 4, seed: 1 });
          form.append('adapter_config.json', new Blob([files.config as Uint8Array<ArrayBuffer>]), 'adapter_config.json');
          form.append('adapter_model.safetensors', new Blob([files.weights as Uint8Array<ArrayBuffer>]), 'adapter_model.safetensors');
          body = form;
        } else {
          expect(contentType).toBe('application/json');
          headers['content-type'] = contentType;
          body = JSON.stringify(example);
        }
        const r = await fetch(`${server.url}${path}`, { method: method.toUpperCase(), headers, body });
        const text = await r.text();
        expect(r.status, `${method} ${path} ${JSON.stringify(example)} → ${text.slice(0, 400)}`).toBeGreaterThanOrEqual(200);
        expect(r.status, `${method} ${path} ${JSON.stringify(example)} → ${text.slice(0, 400)}`).toBeLessThan(300);
      }
    }
  }, 60_000);
});

// ------------------------------------------------------------------ random bodies: HTTP and WebSocket

const junk = fc.oneof(
  fc.constant(null), fc.boolean(), fc.constantFrom(-1, 0, 1, 2, 3, 2.5, 21, 129, 513, 1e20, -1e-9),
  fc.double({ noNaN: true, noDefaultInfinity: true }), fc.string({ maxLength: 6 }),
  fc.array(fc.constantFrom(-1, 0, 1, 5, 511, 512, 1.5), { maxLength: 3 }), fc.array(fc.string({ maxLength: 3 }), { maxLength: 3 }),
  fc.dictionary(fc.constantFrom('0', '5', 'x', '600'), fc.constantFrom(1, -101, 'a', null), { maxKeys: 2 }),
);
const small = fc.integer({ min: 0, max: 4 });
const field = <T>(valid: fc.Arbitrary<T>) => fc.oneof({ weight: 9, arbitrary: valid }, { weight: 1, arbitrary: junk });
const body = fc.record({
  model: fc.oneof({ weight: 5, arbitrary: fc.constant(MODEL) }, { weight: 1, arbitrary: fc.constantFrom('nope', '', `${MODEL}:nope`) }, { weight: 1, arbitrary: junk }),
  prompt: fc.oneof({ weight: 9, arbitrary: fc.constantFrom('Once upon a time', ['Once', 'The cat'], [1, 403, 407], [[1, 2], [3]]) }, { weight: 1, arbitrary: junk }),
  max_tokens: field(small),
  max_completion_tokens: field(small),
  n: field(fc.integer({ min: 1, max: 2 })),
  temperature: field(fc.double({ min: 0, max: 2, noNaN: true })),
  top_p: field(fc.double({ min: 0.1, max: 1, noNaN: true })),
  top_k: field(fc.integer({ min: -1, max: 50 })),
  min_p: field(fc.constantFrom(0, 0.1)),
  presence_penalty: field(fc.constantFrom(-2, 0, 1)),
  repetition_penalty: field(fc.constantFrom(0.01, 1, 1.2)),
  seed: field(fc.integer({ min: 0, max: 1000 })),
  stop: field(fc.constantFrom('.', ['a', 'b'])),
  stop_token_ids: field(fc.constant([2])),
  logit_bias: field(fc.constant({ 5: 1 })),
  logprobs: field(fc.integer({ min: 0, max: 3 })),
  echo: field(fc.boolean()),
  best_of: field(fc.constant(1)),
  suffix: field(fc.constant(null)),
  ignore_eos: field(fc.boolean()),
  user: fc.string({ maxLength: 4 }),
}, { requiredKeys: [] });
// and bodies of any keys and JSON values (but the fields the WebSocket API sets itself, or that pick
// the chat route there: stream, stream_options, messages, type, response_id)
const OWN = new Set(['stream', 'stream_options', 'messages', 'type', 'response_id']);
const anyBody = fc.dictionary(fc.oneof(fc.string({ maxLength: 10 }), fc.constantFrom('model', 'prompt', 'n', 'max_tokens', 'logit_bias', '__proto__')).filter((k) => !OWN.has(k)), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 5 });
const bodies = fc.oneof({ weight: 4, arbitrary: body }, { weight: 1, arbitrary: anyBody });

interface Outcome { status: number; param: string | null; body: unknown }

async function overHttp(b: Json): Promise<Outcome> {
  const r = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(b) });
  const j = await r.json() as { error?: { param: string | null } };
  return { status: r.status, param: j.error?.param ?? null, body: j };
}

function socket(): Promise<{ send: (id: string, b: Json) => Promise<Outcome>; close: () => void }> {
  const ws = new WebSocket(`${server.url.replace('http', 'ws')}${WS_PATH}`);
  const waiting = new Map<string, (o: Outcome) => void>();
  ws.on('message', (d) => {
    const e = JSON.parse(String(d)) as { type: string; response_id: string; status?: number; error?: { param: string | null } };
    const done = waiting.get(e.response_id);
    if (!done) return;
    if (e.type === 'error') done({ status: e.status!, param: e.error?.param ?? null, body: e });
    else if (e.type === 'response.completed') done({ status: 200, param: null, body: e });
    else if (e.type === 'response.incomplete') done({ status: -1, param: null, body: e });
  });
  return new Promise((resolve, reject) => {
    ws.once('error', reject);
    ws.once('open', () => resolve({
      send: (id, b) => new Promise<Outcome>((res, rej) => {
        const timer = setTimeout(() => rej(new Error(`no terminal WebSocket event for ${JSON.stringify(b)}`)), 20_000);
        waiting.set(id, (o) => { clearTimeout(timer); res(o); });
        ws.send(JSON.stringify({ ...b, type: 'response.create', response_id: id }));
      }),
      close: () => ws.close(),
    }));
  });
}

describe('random /v1/completions bodies', () => {
  it('200 or an OpenAI 4xx naming a field, never a 5xx; the WebSocket API gives the same status and param', async () => {
    const ws = await socket();
    let i = 0;
    const seen = { ok: 0, refused: 0 };
    try {
      await fc.assert(fc.asyncProperty(bodies, async (b: Json) => {
        const http = await overHttp(b);
        expect(http.status, JSON.stringify(b)).toBeLessThan(500);
        if (http.status !== 200) {
          expect(http.status, JSON.stringify(http.body)).toBeGreaterThanOrEqual(400);
          const e = (http.body as { error: Json }).error;
          expect(typeof e.message, JSON.stringify(http.body)).toBe('string');
          expect(typeof e.type).toBe('string');
          expect(typeof e.code).toBe('string');
          expect(typeof e.param, `${JSON.stringify(b)} → ${JSON.stringify(http.body)}`).toBe('string');
          seen.refused++;
        } else seen.ok++;
        const over = await ws.send(`r${i++}`, b);
        expect({ status: over.status, param: over.param }, `${JSON.stringify(b)}: HTTP ${JSON.stringify(http.body).slice(0, 300)}, WebSocket ${JSON.stringify(over.body).slice(0, 300)}`)
          .toEqual({ status: http.status, param: http.param });
      }), { seed: SEED, numRuns: 60 });
    } finally {
      ws.close();
    }
    expect(seen.ok).toBeGreaterThan(0);
    expect(seen.refused).toBeGreaterThan(0);
  }, 120_000);
});
