// Property-based fuzz of request bodies against the real server (stories260K on 127.0.0.1, plus one
// uploaded adapter): POST /v1/completions and /v1/chat/completions (JSON and SSE), the WebSocket
// GET /v1/stream, and raw malformed bodies. Every field gets valid values, boundary values and junk
// (wrong types, raw JSON number text such as 1e400, __proto__/constructor keys, unknown keys), mixed
// three ways: a valid body, a valid body with one field mutated, and chaos (every field random).
//
// Invariants, for every case:
//   1. never a 5xx: not as the HTTP status, not as an in-band SSE error frame (type server_error or
//      code internal), not as a WebSocket `error` event with status ≥ 500; no connection dropped
//      without a response;
//   2. never a hang: the whole body / the whole stream up to `data: [DONE]` / a terminal WebSocket
//      event (response.completed, response.incomplete or error) for every message, within 20 s;
//   3. the engine still serves afterwards: /health goes idle (running = waiting = 0) and the plain
//      greedy request {"model":"stories260K","prompt":"Once upon a time","max_tokens":4,"temperature":0}
//      answers 200 with 4 completion tokens;
//   4. every 4xx (and every in-band error) has OpenAI's body {"error": {"message", "type", "param",
//      "code"}} with a non-empty message that does not misreport the request: no `undefined`, `NaN` or
//      `[object Object]` the request did not contain, no "got null" for a field that was not null, no
//      "not valid JSON" for a body that JSON.parse accepts; a non-empty body sent with a non-JSON
//      content type (application/octet-stream, …) is a 415.
//
// Raw cases also include requests written by hand on a socket whose content-length does not match the
// body. Before the generated cases, every property runs its regression examples (EXAMPLES below):
// minimal reproducers of the failures this fuzzer has found.
//
// Seeded and reproducible. FUZZ_SEED seeds every property (default 20250611, DEFAULT_SEED below);
// a failure reports the seed, the failing case (the request and the observed response) and the
// command that replays it:
//   FUZZ_SEED=<seed> npx vitest run test/server/fuzz.test.ts --reporter=verbose
// FUZZ_SCALE=k multiplies the number of cases (soak runs with other seeds). FUZZ_COLLECT=1 keeps going
// after a failure (restarting the server when it no longer serves) and lists every distinct failure
// at the end, instead of stopping at the first one.
//
// Generated work is bounded so the file runs in well under a minute: a case whose valid n × prompts
// × max_tokens would exceed WORK_CAP generated tokens gets its max_tokens lowered to fit (boundary
// values such as max_tokens 511 or n = 128 still appear, just not multiplied together).
import { afterEach, beforeEach, describe, it } from 'vitest';
import fc from 'fast-check';
import WebSocket from 'ws';
import net from 'node:net';
import type { RunningServer } from '../../src/server/serve.ts';
import { adapterFiles, startTestServer, upload } from '../helpers/server.ts';

// ------------------------------------------------------------------------------------------ settings
const DEFAULT_SEED = 20250611;
const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : DEFAULT_SEED;
if (!Number.isInteger(SEED)) throw new Error(`FUZZ_SEED must be an integer, got ${process.env.FUZZ_SEED}`);
const SCALE = Number(process.env.FUZZ_SCALE ?? '1') || 1;
const COLLECT = process.env.FUZZ_COLLECT === '1';
const runs = (n: number): number => Math.max(1, Math.round(n * SCALE));
const REPLAY = `FUZZ_SEED=${SEED} npx vitest run test/server/fuzz.test.ts --reporter=verbose`;

const BASE = 'stories260K';
const ADAPTER = 'fuzz-lora';
const VOCAB = 512;             // stories260K
const CONTEXT = 512;           // testConfig's maxContext
const BOUND_MS = 20_000;       // a whole response, stream or WebSocket exchange
const IDLE_MS = 10_000;        // the engine idle again after a case
const WORK_CAP = 1024;         // generated tokens per request at most (n × prompts × max_tokens)
const LIVE_BODY = JSON.stringify({ model: BASE, prompt: 'Once upon a time', max_tokens: 4, temperature: 0 });

// ------------------------------------------------------------------------- JSON with raw number text
// Bodies are built as ordered entries and serialized by hand, so they can hold what JSON.stringify
// cannot write: number text such as 1e400 or -0, own `__proto__` keys, duplicate keys.
class Raw {
  constructor(readonly text: string) {}
}
type J = null | boolean | number | string | Raw | J[] | { [k: string]: J };
type Entry = [string, J];
const raw = (text: string): Raw => new Raw(text);

function obj(entries: Entry[]): { [k: string]: J } {
  const o: { [k: string]: J } = {};
  for (const [k, v] of entries) Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
  return o;
}

function json(v: J): string {
  if (v instanceof Raw) return v.text;
  if (Array.isArray(v)) return `[${v.map(json).join(',')}]`;
  if (v !== null && typeof v === 'object') return `{${Object.keys(v).map((k) => `${JSON.stringify(k)}:${json(v[k])}`).join(',')}}`;
  return JSON.stringify(v);
}

const bodyText = (entries: Entry[]): string => `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${json(v)}`).join(',')}}`;

// ------------------------------------------------------------------------------- value arbitraries
const RAW_NUMBERS: J[] = ['1e400', '-1e400', '-0', '1.0', '1e1', '5e-324', '1.7976931348623157e308', '9007199254740993', '1E+2', '0.1e1'].map(raw);
const junk: fc.Arbitrary<J> = fc.oneof(
  fc.constantFrom<J>(null, true, false, 0, -1, 1.5, '', 'x', '1', 'null', [], {}, [null], [1, 'a'], { a: 1 }, ...RAW_NUMBERS),
  fc.jsonValue({ maxDepth: 2 }) as fc.Arbitrary<J>,
  fc.string({ unit: 'binary', maxLength: 16 }),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.integer(),
);
// Boundary values of one field, and now and then any junk.
const edges = (...vals: J[]): fc.Arbitrary<J> => fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...vals) }, { weight: 1, arbitrary: junk });
const bool: fc.Arbitrary<J> = fc.boolean();
const boolEdges = edges('true', 'false', 1, 0, null, [], {}, raw('1e400'));

const text: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom('Once upon a time', 'Lily', 'The cat sat', ' ', 'Hi'),
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'grapheme', maxLength: 12 }),
);
// Long text, from one character to ~64 KB (UTF-8), around the 512-token context and far beyond it.
const longText: fc.Arbitrary<string> = fc.tuple(
  fc.oneof(fc.constantFrom(1, 509, 510, 511, 512, 513, 4096, 65_536), fc.integer({ min: 1, max: 65_536 })),
  fc.constantFrom('a', 'é', '😀', 'ab ', ' ', '\n', '<s>', 'Once upon a time '),
).map(([bytes, s]) => s.repeat(Math.max(1, Math.floor(bytes / Buffer.byteLength(s)))));
const tokenId = fc.integer({ min: 0, max: VOCAB - 1 });
const tokenIds = fc.array(tokenId, { minLength: 1, maxLength: 24 });
const ids = (n: number): number[] => Array.from({ length: n }, (_, i) => i % VOCAB);

const maxTokensValid: fc.Arbitrary<J> = fc.oneof({ weight: 5, arbitrary: fc.integer({ min: 0, max: 24 }) }, { weight: 1, arbitrary: fc.constantFrom(0, 1) });
const maxTokensEdges = edges(0, 1, CONTEXT - 2, CONTEXT - 1, CONTEXT, CONTEXT + 1, 100_000, 2 ** 31, 2 ** 53, -1, -0.5, 0.5, 1.5, 16.000001, '16', '', null, true,
  raw('1e400'), raw('-1e400'), raw('1.0'), raw('16.0'), raw('1e1'), raw('-0'), raw('9007199254740993'), raw('5e-324'));

const protoObj = (inner: J): J => obj([['__proto__', inner]]);
const unknownKey = fc.oneof(
  fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'valueOf', 'hasOwnProperty', 'isPrototypeOf', '__defineGetter__',
    'user', 'metadata', 'store', 'service_tier', 'priority', 'guided_json', 'lora_request', 'Model', 'PROMPT', 'max-tokens', ''),
  fc.string({ maxLength: 12 }),
);
const unknownValue: fc.Arbitrary<J> = fc.oneof(junk, fc.constantFrom<J>({ n: 3 }, { polluted: true }, { prototype: { polluted: true } }, { toString: 'x' }, protoObj({ polluted: true })));
const extras: fc.Arbitrary<Entry[]> = fc.array(fc.tuple(unknownKey, unknownValue), { minLength: 1, maxLength: 3 });

// ------------------------------------------------------------------------------------------ fields
interface Field {
  key: string;
  valid: fc.Arbitrary<J>;
  edge: fc.Arbitrary<J>;
  presence?: number;   // chance the field is sent in a valid body (default 0.25)
}
const field = (key: string, valid: fc.Arbitrary<J>, edge: fc.Arbitrary<J>, presence?: number): Field => ({ key, valid, edge, presence });

const modelField = field('model', fc.constantFrom<J>(BASE, ADAPTER, `${BASE}:${ADAPTER}`), fc.oneof(
  edges('', 'nope', `${BASE}:`, `:${ADAPTER}`, `${BASE}:nope`, `${ADAPTER}:${BASE}`, ` ${BASE}`, BASE.toUpperCase(), `${BASE}:${ADAPTER}:x`, `${BASE}::${ADAPTER}`,
    '__proto__', 'constructor', 'toString', 'hasOwnProperty', `${BASE}:__proto__`, `${BASE}:constructor`, `${BASE}\u0000`, [BASE], { id: BASE }, null),
  fc.constant('m'.repeat(100_000)),
  fc.string({ unit: 'binary', maxLength: 30 }),
));

// The sampling fields, shared by completions, chat and the WebSocket.
const samplingFields: Field[] = [
  field('max_tokens', maxTokensValid, maxTokensEdges, 0.5),
  field('n', fc.oneof({ weight: 4, arbitrary: fc.constant(1) }, { weight: 2, arbitrary: fc.integer({ min: 1, max: 4 }) }),
    edges(0, 1, 2, 11, 127, 128, 129, 256, -1, 1.5, '2', null, 2 ** 31, raw('1e400'), raw('2.0'), raw('1e2'))),
  field('temperature', fc.oneof(fc.constantFrom(0, 1, 0.7), fc.double({ min: 0, max: 2, noNaN: true })),
    edges(0, 2, -0.0001, 2.0001, -1, 3, 1e308, 5e-324, raw('1e400'), raw('-0'), '0.7', true)),
  field('top_p', fc.oneof(fc.constantFrom(1, 0.9), fc.double({ min: 1e-6, max: 1, noNaN: true })),
    edges(0, 1, -0.1, 1.0000001, 5e-324, 1e-300, 2, raw('-0'), raw('1e400'), '1')),
  field('top_k', fc.oneof(fc.constantFrom(-1, 0, 1, 40), fc.integer({ min: 0, max: 600 })),
    edges(-1, 0, 1, VOCAB - 1, VOCAB, VOCAB + 1, 1_000_000, 1_000_001, -2, 1.5, 2 ** 53, raw('1e400'), raw('40.0'), '40')),
  field('min_p', fc.oneof(fc.constantFrom(0, 0.05), fc.double({ min: 0, max: 1, noNaN: true })),
    edges(0, 1, -0.0001, 1.0001, 5e-324, 0.9999999, raw('1e400'), '0.1')),
  field('seed', fc.oneof(fc.constantFrom(0, 42), fc.integer()),
    edges(0, -1, Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER, 2 ** 53, -(2 ** 53), 2 ** 32, 1.5, '42', true, raw('1e400'), raw('9007199254740993'), raw('42.0'))),
  field('stop', fc.oneof(fc.constantFrom<J>('.', 'Lily', ' the', '\n'), fc.string({ minLength: 1, maxLength: 4 }), fc.array(fc.string({ minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 4 })),
    edges('', [''], [], ['a', ''], Array.from({ length: 16 }, (_, i) => `s${i}`), Array.from({ length: 17 }, (_, i) => `s${i}`), [null], ['.', 5], 42, {}, true,
      'x'.repeat(65_536), Array.from({ length: 16 }, () => 'y'.repeat(4096)), ['\ud800'], ['😀'], [' '], ['<s>', '</s>'])),
  field('presence_penalty', fc.double({ min: -2, max: 2, noNaN: true }), edges(-2, 2, -2.0001, 2.0001, 1e308, -1e308, raw('1e400'), raw('-0'), '1')),
  field('frequency_penalty', fc.double({ min: -2, max: 2, noNaN: true }), edges(-2, 2, -2.0001, 2.0001, 1e308, -1e308, raw('1e400'), raw('-0'), '1')),
  field('repetition_penalty', fc.oneof(fc.constant(1), fc.double({ min: 0.01, max: 2, noNaN: true })),
    edges(0, -1, 1, 100, 100.0001, 5e-324, 1e-300, 1e-30, raw('-0'), raw('1e400'), '1.1')),
  field('logit_bias', fc.dictionary(tokenId.map(String), fc.double({ min: -100, max: 100, noNaN: true }), { maxKeys: 4 }) as fc.Arbitrary<J>,
    edges(obj([['512', 1]]), obj([['-1', 1]]), obj([['1.5', 1]]), obj([['01', 100]]), obj([[' 1', 1]]), obj([['', 1]]), obj([['abc', 1]]), obj([['1e2', 1]]),
      obj([['99999999999999999999', 1]]), obj([['__proto__', 1]]), obj([['constructor', 1]]), obj([['0', 100.0001]]), obj([['0', -101]]), obj([['0', '5']]),
      obj([['0', null]]), obj([['0', raw('1e400')]]), obj([['0', raw('-0')]]), obj([['2', 100]]), obj([['2', -100]]),
      obj(ids(VOCAB).map((i) => [String(i), 100] as Entry)), obj(ids(VOCAB).map((i) => [String(i), -100] as Entry)), [], 'x', 5, null, [[0, 1]])),
  field('stream', bool, boolEdges),
  field('stream_options', fc.record({ include_usage: fc.boolean() }) as fc.Arbitrary<J>,
    edges({}, null, 'x', [], true, 0, { include_usage: 'yes' }, { include_usage: null }, { continuous_usage_stats: true }, { include_usage: true, extra: 1 }, protoObj({ include_usage: true })), 0.1),
  field('ignore_eos', bool, boolEdges),
  field('stop_token_ids', fc.array(tokenId, { maxLength: 3 }) as fc.Arbitrary<J>,
    edges([512], [-1], [1.5], [2], [0, 1, 2], 'x', 2, [], [null], {}, [raw('1e400')], [raw('2.0')], ids(10_000))),
  field('return_tokens_as_token_ids', bool, boolEdges),
  field('use_beam_search', fc.constant(false), edges(true, 'x', 1, [], null), 0.1),
];

const completionFields: Field[] = [
  modelField,
  field('prompt', fc.oneof(
    { weight: 4, arbitrary: text },
    { weight: 1, arbitrary: fc.array(text, { minLength: 1, maxLength: 4 }) },
    { weight: 2, arbitrary: tokenIds },
    { weight: 1, arbitrary: fc.array(tokenIds, { minLength: 1, maxLength: 3 }) },
  ) as fc.Arbitrary<J>, fc.oneof(
    fc.constantFrom<J>('', '\u0000', '\ud800', '\udfff\ud800x', '\r\n', '<s>', '</s>', '<unk>', '<s></s><s>', '\u202e\u0301', '\ufeff', 'token_id:5'),
    longText,
    fc.string({ unit: 'binary', maxLength: 300 }),
    fc.constantFrom<J>([0], [1], [2], [511], [512], [-1], [1, 2, 512], [1.5], [1, 2.0000001], [raw('1e400')], [raw('1.0')], [raw('-0')], [2 ** 31], [2 ** 53],
      [-(2 ** 53)], [1e308], ['1'], [true], [null], [1, 'a'], ['a', 1], ['a', [1]], ['', 'x'], [''], [[]], [[1], []], [[[1]]], [[1, [2]]], [[512]], [[-1]],
      [], [{}], { text: 'x' }, null, 42, true),
    fc.constantFrom(CONTEXT - 1, CONTEXT, CONTEXT + 1).map((n) => ids(n)),
    fc.constantFrom(64, 65).map((k) => Array.from({ length: k }, () => 'x')),
    fc.constantFrom(64, 65).map((k) => Array.from({ length: k }, () => [1, 2])),
    fc.integer({ min: 10, max: 100_000 }).map((d) => raw(`${'['.repeat(d)}${']'.repeat(d)}`)),
    junk,
  )),
  ...samplingFields,
  field('logprobs', fc.oneof({ weight: 3, arbitrary: fc.constant(null) }, { weight: 2, arbitrary: fc.integer({ min: 0, max: 5 }) }),
    edges(0, 1, 5, 20, 21, -1, true, false, 1.5, '1', raw('1e400'), raw('2.0'))),
  field('echo', bool, boolEdges),
  field('suffix', fc.constant(null), edges('', 'x', false, [], {}, 0, true), 0.1),
  field('best_of', fc.constantFrom<J>(null, 1), edges(0, 2, 3, -1, 1.5, '1', raw('1e400')), 0.1),
];

const role = fc.constantFrom('system', 'developer', 'user', 'assistant', 'tool');
const content: fc.Arbitrary<J> = fc.oneof({ weight: 4, arbitrary: text }, { weight: 1, arbitrary: fc.array(text.map((t) => ({ type: 'text', text: t })), { maxLength: 3 }) });
const chatFields: Field[] = [
  modelField,
  field('messages', fc.array(fc.record({ role, content }), { minLength: 1, maxLength: 4 }) as fc.Arbitrary<J>, fc.oneof(
    fc.constantFrom<J>([], null, 'hi', 42, {}, [{}], [null], ['hi'], [[]], [{ role: 'user' }], [{ content: 'x' }], [{ role: 'bogus', content: 'x' }],
      [{ role: 'User', content: 'x' }], [{ role: 'function', content: 'x' }], [{ role: 'user', content: null }], [{ role: 'assistant', content: null }],
      [{ role: 'user', content: 42 }], [{ role: 'user', content: {} }], [{ role: 'user', content: [] }],
      [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x' } }] }], [{ role: 'user', content: [{ type: 'text' }] }],
      [{ role: 'user', content: [{ type: 'text', text: 5 }] }], [{ role: 'user', content: [null] }], [{ role: 'user', content: ['x'] }],
      [{ role: 'user', content: 'x', name: 'bob' }], [{ role: 'tool', content: 'x', tool_call_id: 'c' }],
      [{ role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{}' } }] }],
      [{ role: '__proto__', content: 'x' }], [{ role: 'constructor', content: 'x' }], [obj([['role', 'user'], ['content', 'x'], ['__proto__', { role: 'system' }]])],
      [{ role: 'user', content: '{{ 7*7 }}{% for x in range(10) %}{{ x }}{% endfor %}' }], [{ role: 'user', content: '<s></s><unk>' }],
      [{ role: 'user', content: raw('1e400') }]),
    longText.map((t) => [{ role: 'user', content: t }]),
    fc.integer({ min: 100, max: 2000 }).map((k) => Array.from({ length: k }, () => ({ role: 'user', content: 'x' }))),
    fc.array(fc.record({ role: junk, content: junk }), { maxLength: 3 }),
    junk,
  )),
  ...samplingFields,
  field('max_completion_tokens', maxTokensValid, maxTokensEdges, 0.3),
  field('logprobs', bool, edges(0, 1, 5, 'true', null, raw('1e400'))),
  field('top_logprobs', fc.integer({ min: 0, max: 5 }), edges(0, 1, 20, 21, -1, 1.5, '2', null, true, raw('1e400'))),
  field('response_format', fc.constant({ type: 'text' }), edges('x', 'text', 5, null, {}, [], true, { type: 'json_object' },
    { type: 'json_schema', json_schema: { name: 'x', schema: {} } }, { type: 5 }, { type: null }, { type: 'TEXT' }, protoObj({ type: 'text' }), [{ type: 'text' }])),
  field('tools', fc.constant([]), edges([{ type: 'function', function: { name: 'f', parameters: {} } }], 'x', {}, null, true, [null], 0), 0.1),
  field('add_generation_prompt', bool, boolEdges),
];

// ----------------------------------------------------------------------------------------- bodies
// Three ways: valid (every field valid or absent), one field mutated (boundary, junk, or removed; or
// unknown keys added), chaos (every field absent, valid or boundary/junk). `required` fields are
// always sent in a valid body.
function bodies(fields: Field[], required: string[]): fc.Arbitrary<Entry[]> {
  const slot = (arbs: { weight: number; arbitrary: fc.Arbitrary<J | undefined> }[]): fc.Arbitrary<J | undefined> => fc.oneof(...arbs.filter((a) => a.weight > 0));
  const entriesOf = (arbs: fc.Arbitrary<J | undefined>[]): fc.Arbitrary<Entry[]> =>
    fc.tuple(...arbs).map((vals) => vals.flatMap((v, i): Entry[] => (v === undefined ? [] : [[fields[i].key, v]])));
  const absent = fc.constant(undefined);
  const validBody = entriesOf(fields.map((f) => {
    if (required.includes(f.key)) return f.valid;
    const p = Math.round((f.presence ?? 0.25) * 20);
    return slot([{ weight: 20 - p, arbitrary: absent }, { weight: p, arbitrary: f.valid }]);
  }));
  const valid = fc.tuple(validBody, fc.option(extras, { freq: 10 })).map(([e, x]) => (x ? [...e, ...x] : e));
  const mutation: fc.Arbitrary<{ key: string; value: J | undefined } | Entry[]> = fc.oneof(
    { weight: fields.length, arbitrary: fc.integer({ min: 0, max: fields.length - 1 }).chain((i) =>
      slot([{ weight: 8, arbitrary: fields[i].edge }, { weight: 1, arbitrary: absent }]).map((value) => ({ key: fields[i].key, value }))) },
    { weight: 3, arbitrary: extras },
  );
  const mutated = fc.tuple(validBody, mutation).map(([e, m]): Entry[] => {
    if (Array.isArray(m)) return [...e, ...m];
    const rest = e.filter(([k]) => k !== m.key);
    return m.value === undefined ? rest : [...rest, [m.key, m.value]];
  });
  const chaos = fc.tuple(entriesOf(fields.map((f) => required.includes(f.key)
    ? slot([{ weight: 1, arbitrary: absent }, { weight: 5, arbitrary: f.valid }, { weight: 2, arbitrary: f.edge }])
    : slot([{ weight: 6, arbitrary: absent }, { weight: 2, arbitrary: f.valid }, { weight: 2, arbitrary: f.edge }]))), fc.option(extras, { freq: 3 }))
    .map(([e, x]) => (x ? [...e, ...x] : e));
  return fc.oneof({ weight: 3, arbitrary: valid }, { weight: 5, arbitrary: mutated }, { weight: 2, arbitrary: chaos });
}

// Bounds the generated tokens of a body the server would accept: n × prompts × max_tokens ≤ WORK_CAP.
function capWork(entries: Entry[], kind: 'completion' | 'chat' | 'auto'): Entry[] {
  let b: unknown;
  try { b = JSON.parse(bodyText(entries)); } catch { return entries; }
  if (typeof b !== 'object' || b === null || Array.isArray(b)) return entries;
  const body = b as Record<string, unknown>;
  const isChat = kind === 'chat' || (kind === 'auto' && 'messages' in body);
  const int = (v: unknown, lo: number, hi: number): v is number => typeof v === 'number' && Number.isInteger(v) && v >= lo && v <= hi;
  const n = int(body.n, 1, 128) ? body.n : 1;
  const p = body.prompt;
  const prompts = !isChat && Array.isArray(p) && p.length > 0 && p.some((x) => typeof x !== 'number') ? p.length : 1;
  const key = body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
  const m = body[key];
  const max = int(m, 0, CONTEXT) ? m : m == null ? (isChat ? CONTEXT : 16) : 0;
  if (n * prompts * max <= WORK_CAP) return entries;
  return [...entries.filter(([k]) => k !== key), [key, Math.max(1, Math.floor(WORK_CAP / (n * prompts)))]];
}

const completionBodies = bodies(completionFields, ['model', 'prompt']);
const chatBodies = bodies(chatFields, ['model', 'messages']);

// ------------------------------------------------------------------------------------------ cases
interface HttpCase {
  path: string;
  contentType: string | null;      // null: no content-type header
  body: string | Uint8Array<ArrayBuffer>;
  abort: number | 'first-chunk' | null; // the client goes away after this many ms / after the first chunk
  // Sent over a plain socket with this content-length instead of the body's own (raw cases only):
  // fewer bytes than declared, then the client half-closes; or more bytes than declared.
  socket?: { contentLength: number };
}
interface WsMessage { text: string; binary: boolean }
interface WsCase { messages: WsMessage[] }

const clip = (s: string, max = 1200): string => (s.length <= max ? s : `${s.slice(0, max - 300)} …(${s.length} chars in all)… ${s.slice(-250)}`);
const bodyString = (b: string | Uint8Array): string => (typeof b === 'string' ? b : `<${b.length} bytes: ${Buffer.from(b).toString('hex').slice(0, 200)}> ${Buffer.from(b).toString('utf8')}`);
const showHttp = (c: HttpCase): string =>
  `POST ${c.path} content-type: ${c.contentType ?? '(none)'}${c.socket ? `, content-length: ${c.socket.contentLength} (raw socket)` : ''}${c.abort === null ? '' : `, client aborts ${c.abort === 'first-chunk' ? 'after the first chunk' : `after ${c.abort} ms`}`}\n    body: ${clip(bodyString(c.body))}`;
const WS_PATH = '/v1/stream';
const showWs = (c: WsCase): string => `WebSocket ${WS_PATH}, messages in order:\n${c.messages.map((m, i) => `    [${i}]${m.binary ? ' (binary frame)' : ''} ${clip(m.text, 800)}`).join('\n')}`;

// Values print in fast-check's counterexample as the request they stand for.
function printable<T extends object>(c: T, show: (c: T) => string): T {
  Object.defineProperty(c, fc.toStringMethod, { value: () => show(c), enumerable: false });
  return c;
}
const shown = (c: unknown): string => (c as { [fc.toStringMethod]: () => string })[fc.toStringMethod]();

const abortArb: fc.Arbitrary<number | 'first-chunk' | null> = fc.oneof(
  { weight: 14, arbitrary: fc.constant(null) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 150 }) },
  { weight: 1, arbitrary: fc.constant('first-chunk' as const) },
);
const jsonType = fc.oneof({ weight: 20, arbitrary: fc.constant('application/json') }, { weight: 1, arbitrary: fc.constantFrom('application/json; charset=utf-8', 'Application/JSON') });

const httpCases = (path: string, kind: 'completion' | 'chat', arb: fc.Arbitrary<Entry[]>): fc.Arbitrary<HttpCase> =>
  fc.tuple(arb, jsonType, abortArb).map(([e, contentType, abort]) => printable({ path, contentType, body: bodyText(capWork(e, kind)), abort }, showHttp));

// Raw bodies: not JSON, truncated JSON, empty, odd encodings, deep nesting; and content types that are
// not JSON. A valid body sent as application/octet-stream must be a 415.
const validCompletionText = completionBodies.map((e) => bodyText(capWork(e, 'completion')));
const validChatText = chatBodies.map((e) => bodyText(capWork(e, 'chat')));
const NON_JSON_TYPES = ['application/octet-stream', 'application/x-www-form-urlencoded', 'application/xml', 'text/event-stream', 'image/png'];
const rawCases: fc.Arbitrary<HttpCase> = fc.tuple(
  fc.constantFrom('/v1/completions', '/v1/chat/completions'),
  fc.oneof(
    fc.constantFrom<string | Uint8Array<ArrayBuffer>>('', ' ', '\n', 'not json', 'null', '[]', '"x"', '42', 'true', '{', '}', '{"model":', '{"model":"stories260K","prompt":"x",}',
      "{'model':'stories260K','prompt':'x'}", '{"model":"stories260K","prompt":"x"}garbage', '{"model":"stories260K","prompt":"x"}{"model":"stories260K"}',
      '\ufeff{"model":"stories260K","prompt":"x","max_tokens":2}', '{"model":"stories260K","prompt":"x","max_tokens":NaN}',
      '{"model":"stories260K","prompt":"x","max_tokens":Infinity}', '{"model":"stories260K","prompt":"x","max_tokens":2,"max_tokens":3}',
      '{"model":"stories260K","prompt":"\\ud800","max_tokens":2}', '{"model":"stories260K","prompt":"x\\u0000y","max_tokens":2}',
      '{"model":"stories260K","prompt":"x","max_tokens":2,"__proto__":{"max_tokens":600}}',
      '{"model":"stories260K","prompt":"x","max_tokens":2,"constructor":{"prototype":{"polluted":true}}}',
      '{"model":"stories260K","messages":[{"role":"user","content":"x","__proto__":{"role":"system"}}],"max_tokens":2}',
      new Uint8Array([0xff, 0xfe, 0xfd]), new Uint8Array([0x7b, 0xc3, 0x28, 0x7d]), Buffer.from('{"model":"stories260K","prompt":"x","max_tokens":2}', 'utf16le')),
    fc.tuple(fc.oneof(validCompletionText, validChatText), fc.double({ min: 0, max: 1, noNaN: true })).map(([t, f]) => t.slice(0, Math.floor(t.length * f))),
    validCompletionText,
    validChatText,
    fc.integer({ min: 10, max: 200_000 }).map((d) => `{"model":"stories260K","prompt":${'['.repeat(d)}${']'.repeat(d)}}`),
    fc.integer({ min: 10, max: 200_000 }).map((d) => `${'{"a":'.repeat(d)}1${'}'.repeat(d)}`),
    fc.string({ unit: 'binary', maxLength: 200 }),
    fc.uint8Array({ maxLength: 64 }),
  ),
  fc.oneof(
    { weight: 3, arbitrary: fc.constant<string | null>('application/json') },
    { weight: 3, arbitrary: fc.constantFrom<string | null>(...NON_JSON_TYPES) },
    { weight: 2, arbitrary: fc.constantFrom<string | null>('text/plain', 'application/json; charset=utf-16', 'application/vnd.api+json', 'multipart/form-data; boundary=x', 'application/json;', '', null) },
  ),
  // One in six over a raw socket whose content-length is not the body's length.
  fc.oneof({ weight: 5, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.integer({ min: -20, max: 20 }).filter((d) => d !== 0) }),
).map(([path, body, contentType, lengthOff]) => {
  const c: HttpCase = { path, contentType, body, abort: null };
  const length = typeof body === 'string' ? Buffer.byteLength(body) : body.length;
  if (lengthOff !== null) c.socket = { contentLength: Math.max(0, length + lengthOff) };
  return printable(c, showHttp);
});

// WebSocket messages: response.create (a completion or chat body plus type and response_id, each
// sometimes wrong), response.cancel (of one of this socket's ids, or of junk), and malformed text.
const wsType: fc.Arbitrary<J | undefined> = fc.oneof({ weight: 12, arbitrary: fc.constant('response.create') },
  { weight: 1, arbitrary: fc.constantFrom<J | undefined>(undefined, 'response.cancel', 'response.created', 'RESPONSE.CREATE', '', null, 5, ['response.create'], { a: 1 }) });
const wsId = (i: number): fc.Arbitrary<J | undefined> => fc.oneof({ weight: 12, arbitrary: fc.constant(`r${i}`) },
  { weight: 1, arbitrary: fc.constantFrom<J | undefined>(undefined, 'r0', '', 'x'.repeat(256), 'x'.repeat(257), '😀'.repeat(128), '😀'.repeat(129),
    '__proto__', 'constructor', 'toString', 5, null, true, {}, ['r0'], raw('1e400')) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 10 }) });
const wsCreate = (i: number): fc.Arbitrary<string> => fc.tuple(fc.oneof(completionBodies, chatBodies), wsType, wsId(i)).map(([body, type, id]) => bodyText([
  ...(type === undefined ? [] : [['type', type] as Entry]),
  ...(id === undefined ? [] : [['response_id', id] as Entry]),
  ...capWork(body, 'auto'),
]));
const wsMessage = (i: number): fc.Arbitrary<WsMessage> => fc.tuple(fc.oneof(
  { weight: 7, arbitrary: wsCreate(i) },
  { weight: 2, arbitrary: fc.constantFrom<J>('r0', 'r1', 'r2', 'nope', '', 5, null).map((id) => bodyText([['type', 'response.cancel'], ['response_id', id]])) },
  { weight: 1, arbitrary: fc.constantFrom('not json', '', '{', '}', '[]', '[1]', 'null', '42', '"x"', 'true', '{"type":"response.create"', '{"type":"response.create","response_id":"z"') },
  { weight: 1, arbitrary: fc.tuple(wsCreate(i), fc.double({ min: 0, max: 1, noNaN: true })).map(([t, f]) => t.slice(0, Math.floor(t.length * f))) },
), fc.integer({ min: 0, max: 9 })).map(([t, b]) => ({ text: t, binary: b === 0 })); // one in ten as a binary frame
const wsCases: fc.Arbitrary<WsCase> = fc.integer({ min: 1, max: 3 })
  .chain((k) => fc.tuple(...Array.from({ length: k }, (_, i) => wsMessage(i))))
  .map((messages) => printable({ messages }, showWs));

// ------------------------------------------------------------------------------------- the checks
interface Observed {
  status: number | null;
  contentType: string;
  text: string;
  ms: number;
  timedOut: boolean;
  aborted: boolean;
  networkError: string | null;
}
const showObserved = (o: Observed): string => (o.timedOut ? `no complete response after ${BOUND_MS / 1000} s (status ${o.status ?? 'none'}, ${o.text.length} chars so far: ${clip(o.text, 600)})`
  : o.networkError ? `connection failed without a response: ${o.networkError}` : `${o.status} ${o.contentType} in ${o.ms} ms: ${clip(o.text)}`);

async function send(url: string, c: HttpCase): Promise<Observed> {
  if (c.socket) return sendOverSocket(url, c, c.socket.contentLength);
  const ac = new AbortController();
  const o: Observed = { status: null, contentType: '', text: '', ms: 0, timedOut: false, aborted: false, networkError: null };
  const t0 = Date.now();
  const timer = setTimeout(() => { o.timedOut = true; ac.abort(); }, BOUND_MS);
  const abortTimer = typeof c.abort === 'number' ? setTimeout(() => { o.aborted = true; ac.abort(); }, c.abort) : null;
  // A string body gets text/plain from fetch unless a content type is given: send bytes for "none".
  const body = c.contentType === null && typeof c.body === 'string' ? Buffer.from(c.body) : c.body;
  try {
    const r = await fetch(`${url}${c.path}`, { method: 'POST', body, headers: c.contentType === null ? {} : { 'content-type': c.contentType }, signal: ac.signal });
    o.status = r.status;
    o.contentType = r.headers.get('content-type') ?? '';
    const reader = r.body!.getReader();
    const dec = new TextDecoder();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      o.text += dec.decode(value, { stream: true });
      if (c.abort === 'first-chunk') { o.aborted = true; ac.abort(); break; }
    }
  } catch (e) {
    if (!o.timedOut && !o.aborted) o.networkError = `${(e as Error).message}${(e as Error).cause ? ` (${String((e as Error).cause)})` : ''}`;
  } finally {
    clearTimeout(timer);
    if (abortTimer) clearTimeout(abortTimer);
  }
  o.ms = Date.now() - t0;
  return o;
}

// One HTTP/1.1 request written by hand (so the content-length can lie), with connection: close; the
// first response is read. A body shorter than declared is followed by a half-close: nothing more comes.
// The server may answer or close the connection (the request is broken), but must not hang.
function sendOverSocket(url: string, c: HttpCase, contentLength: number): Promise<Observed> {
  const u = new URL(url);
  const body = typeof c.body === 'string' ? Buffer.from(c.body) : Buffer.from(c.body);
  const head = `POST ${c.path} HTTP/1.1\r\nhost: ${u.host}\r\nconnection: close\r\n${c.contentType === null ? '' : `content-type: ${c.contentType}\r\n`}content-length: ${contentLength}\r\n\r\n`;
  const o: Observed = { status: null, contentType: '', text: '', ms: 0, timedOut: false, aborted: false, networkError: null };
  const t0 = Date.now();
  return new Promise<Observed>((resolve) => {
    let buf = Buffer.alloc(0);
    let settled = false;
    const sock = net.connect(Number(u.port), u.hostname);
    const parse = (): boolean => { // true once the first response is complete
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return false;
      const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
      o.status = Number(lines[0].split(' ')[1]);
      const header = (name: string): string | undefined => lines.find((l) => l.toLowerCase().startsWith(`${name}:`))?.slice(name.length + 1).trim();
      o.contentType = header('content-type') ?? '';
      const rest = buf.subarray(end + 4);
      const cl = header('content-length');
      if (cl !== undefined) { o.text = rest.subarray(0, Number(cl)).toString('utf8'); return rest.length >= Number(cl); }
      o.text = rest.toString('utf8').replace(/^[0-9a-f]+\r\n|\r\n[0-9a-f]+\r\n/gi, ''); // chunked: good enough for the checks
      return /(^|\r\n)0\r\n\r\n$/.test(rest.toString('latin1'));
    };
    const finish = (): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      o.ms = Date.now() - t0;
      if (o.status === null && !o.timedOut) o.aborted = true; // closed without an answer: allowed for a broken request
      resolve(o);
    };
    const timer = setTimeout(() => { o.timedOut = true; finish(); }, BOUND_MS);
    sock.on('connect', () => {
      sock.write(Buffer.concat([Buffer.from(head), body]));
      if (body.length < contentLength) sock.end();
    });
    sock.on('data', (d: Buffer) => { buf = Buffer.concat([buf, d]); if (parse()) finish(); });
    sock.on('close', () => { parse(); finish(); });
    sock.on('error', () => { /* ECONNRESET after the server gave up on the request: judged by what arrived */ });
  });
}

function errorShape(j: unknown): string | null {
  const e = (j as { error?: unknown } | null)?.error as Record<string, unknown> | undefined;
  if (!e || typeof e !== 'object') return 'the error body has no {"error": {…}} object';
  if (typeof e.message !== 'string' || e.message.trim() === '') return 'error.message is missing or empty';
  if (typeof e.type !== 'string' || e.type === '') return 'error.type is missing';
  if (!('param' in e) || (e.param !== null && typeof e.param !== 'string')) return 'error.param is missing (string or null)';
  if (!('code' in e) || (e.code !== null && typeof e.code !== 'string')) return 'error.code is missing (string or null)';
  return null;
}

// The message must not misreport the request that was sent (`sent`: its text, null when unknown).
function misreport(e: { message: string; param: unknown }, sent: string | null): string | null {
  for (const word of ['undefined', 'NaN', '[object Object]']) {
    if (e.message.includes(word) && !(sent ?? '').includes(word)) return `the error message shows "${word}", which the request did not hold`;
  }
  if (sent === null) return null;
  let parsed: unknown;
  try { parsed = JSON.parse(sent); } catch { return null; }
  if (/not valid JSON|invalid JSON|Unexpected (token|end)/i.test(e.message)) return 'the error message calls the body invalid JSON, but JSON.parse accepts it';
  const p = e.param;
  if (/\bgot null\b/.test(e.message) && typeof p === 'string' && parsed !== null && typeof parsed === 'object' && Object.prototype.hasOwnProperty.call(parsed, p)
    && (parsed as Record<string, unknown>)[p] !== null) {
    return `the error message says "got null", but '${p}' was ${String((parsed as Record<string, unknown>)[p])} (${JSON.stringify(sent.match(new RegExp(`"${p}":\\s*([^,}]*)`))?.[1] ?? '?')} in the body)`;
  }
  return null;
}

function errorProblems(j: unknown, sent: string | null): string | null {
  const shape = errorShape(j);
  if (shape) return shape;
  return misreport((j as { error: { message: string; param: unknown } }).error, sent);
}

function sseProblems(text: string): string | null {
  const frames = text.split('\n\n').filter((f) => f.length > 0);
  let done = false;
  for (const f of frames) {
    if (!f.startsWith('data: ')) return `an SSE frame is not "data: …": ${clip(f, 300)}`;
    const d = f.slice(6);
    if (d === '[DONE]') { done = true; continue; }
    if (done) return 'data after data: [DONE]';
    let j: Record<string, unknown>;
    try { j = JSON.parse(d) as Record<string, unknown>; } catch { return `an SSE frame is not JSON: ${clip(d, 300)}`; }
    if (j.error !== undefined) {
      const e = j.error as { type?: unknown; code?: unknown };
      if (e.type === 'server_error' || e.code === 'internal') return `in-band server error in the stream: ${clip(d, 600)}`;
      const p = errorShape(j);
      if (p) return `in-band error frame: ${p}: ${clip(d, 300)}`;
    }
  }
  return done ? null : 'the stream ended without data: [DONE]';
}

const baseType = (ct: string | null): string => (ct ?? '').split(';')[0].trim().toLowerCase();
// The body as the server should read it: UTF-8 (JSON's encoding); null when not UTF-8 or declared
// in another charset (then no claim about "valid JSON" is checked).
function sentText(b: string | Uint8Array, contentType: string | null): string | null {
  const charset = /charset=([^;]*)/i.exec(contentType ?? '')?.[1]?.trim().toLowerCase();
  if (charset && charset !== 'utf-8' && charset !== 'utf8') return null;
  if (typeof b === 'string') return b;
  try { return new TextDecoder('utf-8', { fatal: true }).decode(b); } catch { return null; }
}

function checkHttp(c: HttpCase, o: Observed): string | null {
  if (o.timedOut) return `hang: ${showObserved(o)}`;
  if (o.networkError) return `no response: ${showObserved(o)}`;
  if (o.status !== null && o.status >= 500) return `5xx: ${showObserved(o)}`;
  if (o.aborted) return null; // the client went away: whatever came before was checked above
  const status = o.status!;
  const bodyLength = typeof c.body === 'string' ? Buffer.byteLength(c.body) : c.body.length;
  if (NON_JSON_TYPES.includes(baseType(c.contentType)) && bodyLength > 0 && status !== 415) return `a body sent as ${baseType(c.contentType)} is not answered 415: ${showObserved(o)}`;
  if (status >= 400) {
    let j: unknown;
    try { j = JSON.parse(o.text); } catch { return `a ${status} whose body is not JSON: ${showObserved(o)}`; }
    const p = errorProblems(j, sentText(c.body, c.contentType));
    return p ? `${status}: ${p}: ${showObserved(o)}` : null;
  }
  if (o.contentType.startsWith('text/event-stream')) {
    const p = sseProblems(o.text);
    return p ? `${p}: ${showObserved(o)}` : null;
  }
  try {
    const j = JSON.parse(o.text) as { choices?: unknown };
    if (!Array.isArray(j.choices)) return `a ${status} without choices: ${showObserved(o)}`;
  } catch {
    return `a ${status} whose body is not JSON: ${showObserved(o)}`;
  }
  return null;
}

// What a WebSocket message must get: a terminal event for its response_id, an error with
// response_id null (not JSON, not an object, bad response_id), or nothing (response.cancel).
function wsExpectation(t: string): { key: string | null } | null {
  let m: unknown;
  try { m = JSON.parse(t); } catch { return { key: null }; }
  if (typeof m !== 'object' || m === null) return { key: null };
  const id = (m as { response_id?: unknown }).response_id;
  if (typeof id !== 'string' || id.length === 0 || id.length > 256) return { key: null };
  if ((m as { type?: unknown }).type === 'response.cancel') return null;
  return { key: id };
}

async function runWs(url: string, c: WsCase): Promise<string | null> {
  const need = new Map<string | null, number>();
  const sentById = new Map<string | null, string>();
  for (const m of c.messages) {
    const x = wsExpectation(m.text);
    if (x) { need.set(x.key, (need.get(x.key) ?? 0) + 1); sentById.set(x.key, m.text); }
  }
  const seen = new Map<string | null, number>();
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}${WS_PATH}`);
  const events: string[] = [];
  return new Promise<string | null>((resolve) => {
    let settled = false;
    const missing = (): string => [...need].filter(([k, n]) => (seen.get(k) ?? 0) < n).map(([k, n]) => `${JSON.stringify(k)}: ${seen.get(k) ?? 0} of ${n}`).join(', ');
    const finish = (v: string | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      ws.removeAllListeners();
      ws.on('error', () => {});
      ws.close();
      resolve(v === null ? null : `${v}\n    events received: ${clip(events.join('\n      '), 1500)}`);
    };
    const timer = setTimeout(() => finish(`hang: no terminal event within ${BOUND_MS / 1000} s (terminal events per response_id — ${missing()})`), BOUND_MS);
    const check = (): void => { if (missing() === '') finish(null); };
    ws.on('open', () => {
      for (const m of c.messages) ws.send(m.binary ? Buffer.from(m.text) : m.text);
      check();
    });
    ws.on('message', (d) => {
      const s = String(d);
      events.push(clip(s, 400));
      let e: Record<string, unknown>;
      try { e = JSON.parse(s) as Record<string, unknown>; } catch { finish(`an event is not JSON: ${clip(s, 300)}`); return; }
      const id = (e.response_id ?? null) as string | null;
      if (e.type === 'error') {
        if (typeof e.status !== 'number') { finish(`an error event without a status: ${clip(s, 600)}`); return; }
        if (e.status >= 500) { finish(`5xx: error event with status ${e.status}: ${clip(s, 600)}`); return; }
        const p = errorProblems(e, sentById.get(id) ?? null) ?? (e.status < 400 ? `status ${e.status} is not an error status` : null);
        if (p) { finish(`error event: ${p}: ${clip(s, 600)}`); return; }
      }
      if (e.type === 'error' || e.type === 'response.completed' || e.type === 'response.incomplete') seen.set(id, (seen.get(id) ?? 0) + 1);
      check();
    });
    ws.on('close', (code, reason) => finish(`the server closed the socket (${code} ${String(reason)}) before every message was answered (${missing()})`));
    ws.on('error', (err) => finish(`socket error: ${err.message}`));
  });
}

async function fetchJson(url: string): Promise<{ status: number; body: unknown } | string> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), BOUND_MS);
  try {
    const r = await fetch(url, { signal: ac.signal });
    return { status: r.status, body: await r.json() };
  } catch (e) {
    return ac.signal.aborted ? `no answer within ${BOUND_MS / 1000} s` : (e as Error).message;
  } finally {
    clearTimeout(timer);
  }
}

// Invariant 3: the engine goes idle and still serves the plain request.
async function stillServes(url: string): Promise<string | null> {
  const t0 = Date.now();
  for (;;) {
    const h = await fetchJson(`${url}/health`);
    if (typeof h === 'string') return `afterwards, GET /health fails: ${h}`;
    const b = h.body as { running?: number; waiting?: number };
    if (h.status === 200 && b.running === 0 && b.waiting === 0) break;
    if (Date.now() - t0 > IDLE_MS) return `afterwards, the engine is not idle after ${IDLE_MS / 1000} s: GET /health → ${h.status} ${JSON.stringify(b)}`;
    await new Promise((r) => setTimeout(r, 20));
  }
  const o = await send(url, { path: '/v1/completions', contentType: 'application/json', body: LIVE_BODY, abort: null });
  if (o.status !== 200) return `afterwards, the plain request ${LIVE_BODY} fails: ${showObserved(o)}`;
  const tokens = (JSON.parse(o.text) as { usage?: { completion_tokens?: number } }).usage?.completion_tokens;
  return tokens === 4 ? null : `afterwards, the plain request gives ${tokens} tokens, not 4: ${showObserved(o)}`;
}

// ---------------------------------------------------------------------------------- the properties
let server: RunningServer;
async function start(): Promise<RunningServer> {
  const s = await startTestServer();
  const r = await upload(s.url, ADAPTER, adapterFiles({ rank: 4, seed: 11, scaleB: 2 }));
  if (r.status !== 201) throw new Error(`adapter upload: ${r.status} ${await r.text()}`);
  return s;
}
beforeEach(async () => { server = await start(); });
afterEach(async () => { await server?.close(); });

async function fuzz<T>(name: string, arb: fc.Arbitrary<T>, numRuns: number, examples: T[], runCase: (url: string, c: T) => Promise<string | null>): Promise<void> {
  const collected: { violation: string; case: string }[] = [];
  let cases = 0;
  const property = fc.asyncProperty(arb, async (c) => {
    cases++;
    const violation = (await runCase(server.url, c)) ?? (await stillServes(server.url));
    if (violation === null) return;
    if (!COLLECT) throw new Error(`${violation}\n  the case: ${shown(c)}\n  replay: ${REPLAY}\n`);
    collected.push({ violation, case: shown(c) });
    if ((await stillServes(server.url)) !== null) {
      await Promise.race([server.close(), new Promise((r) => setTimeout(r, 15_000))]);
      server = await start();
    }
  });
  try {
    await fc.assert(property, { seed: SEED, numRuns: numRuns + examples.length, endOnFailure: true, examples: examples.map((e) => [e] as [T]) });
  } catch (err) {
    // fast-check's message holds the seed, the path and the counterexample; the predicate's own error
    // (the violated invariant, the request, the observed response) is its cause.
    const cause = (err as Error).cause;
    throw new Error(`fuzz "${name}" failed at case ${cases} of ${numRuns + examples.length}, seed ${SEED}. Replay: ${REPLAY}\n${
      cause instanceof Error ? `${cause.message}\n` : ''}${(err as Error).message}`);
  }
  if (collected.length > 0) {
    const kinds = new Map<string, { count: number; first: { violation: string; case: string } }>();
    for (const v of collected) {
      const sig = v.violation.split('\n')[0].replace(/\d+(\.\d+)?/g, 'N').replace(/"[^"]*"/g, '"…"').replace(/'[^']*'/g, "'…'").slice(0, 160);
      const k = kinds.get(sig);
      if (k) k.count++; else kinds.set(sig, { count: 1, first: v });
    }
    throw new Error(`fuzz "${name}": ${collected.length} of ${cases} cases failed, ${kinds.size} distinct (seed ${SEED}; replay: ${REPLAY})\n\n${
      [...kinds.values()].map((k) => `× ${k.count}  ${k.first.violation}\n  first case: ${k.first.case}`).join('\n\n')}`);
  }
}

const N_COMPLETIONS = runs(130);
const N_CHAT = runs(100);
const N_WS = runs(50);
const N_RAW = runs(45);

// Regression examples: reproducers this fuzzer found, run before the generated cases of every seed.
const post = (path: string, body: string, more: Partial<HttpCase> = {}): HttpCase =>
  printable({ path, contentType: 'application/json', body, abort: null, ...more }, showHttp);
const completion = (fields: string): HttpCase => post('/v1/completions', `{"model":"stories260K","prompt":"hi",${fields}}`);
const chat = (fields: string): HttpCase => post('/v1/chat/completions', `{"model":"stories260K","messages":[{"role":"user","content":"hi"}],${fields}}`);
const ws = (...messages: string[]): WsCase => printable({ messages: messages.map((text) => ({ text, binary: false })) }, showWs);
const wsCreate1 = (fields: string): string => `{"type":"response.create","response_id":"r0","model":"stories260K","prompt":"hi",${fields}}`;
const EXAMPLES = {
  completions: [
    completion('"max_tokens":3,"logprobs":0'),                               // engine worker crashed: 500, then every request hung
    completion('"max_tokens":3,"repetition_penalty":5e-324'),                // 500 "token_ids must be a non-empty array of integers."
    completion('"max_tokens":3,"repetition_penalty":5e-324,"top_p":0.5'),    // the engine hangs for good
    completion('"max_tokens":1e400'),                                        // 400 "'max_tokens' must be a number, got null"
    completion('"max_tokens":3,"__proto__":{"n":3}'),                       // 400 "Body is not valid JSON"
    post('/v1/completions', '{"model":"stories260K","prompt":"hi","max_tokens":400,"ignore_eos":true,"n":4,"stream":true}', { abort: 'first-chunk' }),
    post('/v1/completions', '{"model":"fuzz-lora","prompt":"hi","max_tokens":400,"ignore_eos":true,"n":2}', { abort: 30 }),
  ],
  chat: [
    chat('"max_tokens":3,"logprobs":true'),                                  // 500, engine worker crashed
    chat('"max_tokens":3,"response_format":"x"'),                            // 400 "'response_format' undefined is not supported"
    chat('"max_tokens":3,"repetition_penalty":1e-300'),                      // 500
  ],
  websocket: [
    ws(wsCreate1('"max_tokens":3,"logprobs":0'), '{"type":"response.create","response_id":"r1","model":"stories260K","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"logprobs":true}'),
    ws(wsCreate1('"max_tokens":3,"top_p":1e400'), 'not json', '{"type":"response.cancel","response_id":"r0"}'),
    ws(wsCreate1('"max_tokens":3,"repetition_penalty":5e-324')),
  ],
  raw: [
    post('/v1/completions', '{"model":"stories260K","prompt":"hi","max_tokens":2}', { contentType: 'application/octet-stream' }), // 400, not 415
    post('/v1/completions', '{"model":"stories260K","prompt":"hi","max_tokens":2}', { socket: { contentLength: 60 } }),        // Fastify's own 400 body
    post('/v1/chat/completions', '', { contentType: 'application/json' }),
  ],
};

describe(`fuzz request bodies against the real server (seed ${SEED})`, () => {
  it(`completions: ${N_COMPLETIONS} bodies, JSON and SSE`, async () => {
    await fuzz('completions', httpCases('/v1/completions', 'completion', completionBodies), N_COMPLETIONS, EXAMPLES.completions, async (url, c) => checkHttp(c, await send(url, c)));
  }, 600_000);

  it(`chat: ${N_CHAT} bodies, JSON and SSE`, async () => {
    await fuzz('chat', httpCases('/v1/chat/completions', 'chat', chatBodies), N_CHAT, EXAMPLES.chat, async (url, c) => checkHttp(c, await send(url, c)));
  }, 600_000);

  it(`WebSocket: ${N_WS} sockets of 1–3 messages`, async () => {
    await fuzz('websocket', wsCases, N_WS, EXAMPLES.websocket, runWs);
  }, 600_000);

  it(`raw bodies: ${N_RAW} malformed bodies and content types`, async () => {
    await fuzz('raw', rawCases, N_RAW, EXAMPLES.raw, async (url, c) => checkHttp(c, await send(url, c)));
  }, 600_000);
});
