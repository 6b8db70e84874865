// The one request validator: every route's JSON schemas (request-schemas.ts) compiled by one Ajv,
// used as Fastify's validatorCompiler for bodies, query strings and path parameters, and called
// as is by the WebSocket API for its messages (websocket.ts), so both paths refuse the same input
// with the same 400. Ajv neither coerces types, nor drops or adds fields, nor fills defaults: a
// value is accepted as sent or refused. The first failure is reported, as LoraserveError
// (invalid_request, 400) naming the field in `param` the way OpenAI does (`max_tokens`,
// `messages[1].role`, `prompt[1]`) and the limit in the message ("'max_tokens' must be ≤ 512").
// Rules between fields stay in code (openai-request.ts, sampling-fields.ts, …).
import { Ajv } from 'ajv';
import type { ErrorObject, ValidateFunction } from 'ajv';
import type { FastifySchemaCompiler } from 'fastify';
import { invalidField } from '../runtime/errors.ts';
import type { LoraserveError } from '../runtime/errors.ts';
import { describeValue } from './sampling-fields.ts';

// Fastify's own Ajv gets the same options (app.ts), though every route is compiled here.
export const STRICT_AJV_OPTIONS = { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false } as const;

// verbose: errors carry the value and the schema at fault, for the messages below.
const ajv = new Ajv({ ...STRICT_AJV_OPTIONS, verbose: true, allowUnionTypes: true, strict: true });

export type Validator = (data: unknown) => LoraserveError | null;

// Where a value sits in the request: its refusals name the field from here (the body's own
// failures are 'body', a query string's 'query', path parameters' 'params').
export type RequestPart = 'body' | 'query' | 'params' | 'message';

const compiled = new WeakMap<object, Map<RequestPart, Validator>>();

// The validator of one schema (compiled once per schema object).
export function validatorFor(schema: object, part: RequestPart = 'body'): Validator {
  let byPart = compiled.get(schema);
  if (!byPart) { byPart = new Map(); compiled.set(schema, byPart); }
  let v = byPart.get(part);
  if (!v) {
    const validate = ajv.compile(schema);
    v = (data) => (validate(data) ? null : schemaError(validate, data, part));
    byPart.set(part, v);
  }
  return v;
}

// Fastify's validatorCompiler: a refusal is the LoraserveError itself (app.ts's error handler).
export const schemaCompiler: FastifySchemaCompiler<unknown> = ({ schema, httpPart }) => {
  const part: RequestPart = httpPart === 'querystring' ? 'query' : httpPart === 'params' ? 'params' : 'body';
  const v = validatorFor(schema as object, part);
  return (data: unknown) => {
    const err = v(data);
    return err ? { error: err } : true;
  };
};

// A docs-only schema (a multipart upload, checked part by part as it streams): never refuses.
export const acceptAll: FastifySchemaCompiler<unknown> = () => () => true;

// Ajv's errors (allErrors off: one failure, whose last error is the deciding one; the errors
// before it are the branches of a failed anyOf) → one LoraserveError.
function schemaError(validate: ValidateFunction, data: unknown, part: RequestPart): LoraserveError {
  const errors = validate.errors ?? [];
  const e = errors[errors.length - 1];
  if (!e) return invalidField(part, `the ${part} is invalid`);
  const at = locate(e.instancePath, data);
  const child = (key: string): { param: string; name: string } => {
    const c = childName(at, key);
    return { param: at.collapsed ? at.param : c, name: c };
  };
  switch (e.keyword) {
    case 'required': {
      const key = (e.params as { missingProperty: string }).missingProperty;
      const { param, name } = child(key);
      const desc = propertyDescription(e.parentSchema, key);
      return invalidField(param, `'${name}' is required${desc ? `: ${desc}` : ''}`);
    }
    case 'additionalProperties': {
      const key = (e.params as { additionalProperty: string }).additionalProperty;
      const known = Object.keys((e.parentSchema as { properties?: object } | undefined)?.properties ?? {});
      const where = at.name ? ` in '${at.name}'` : '';
      return invalidField(child(key).param, `unknown field ${JSON.stringify(key)}${where}${known.length ? `; the fields are ${known.join(', ')}` : ''}`);
    }
    case 'propertyNames': {
      const key = (e.params as { propertyName: string }).propertyName;
      const inner = errors.find((x) => x.keyword === 'pattern');
      const rule = inner ? ` (keys must match ${(inner.params as { pattern: string }).pattern})` : '';
      return invalidField(at.param, `'${at.name}' has the key ${JSON.stringify(key.length > 40 ? `${key.slice(0, 40)}…` : key)}, which is not allowed${rule}`);
    }
  }
  if (at.name === '') {
    const what = part === 'message' ? 'each message' : part === 'body' ? 'the request body' : part === 'query' ? 'the query string' : 'the path';
    if (e.keyword === 'type' && e.schema === 'object') return invalidField(part, `${what} must be a JSON object`);
    return invalidField(part, `${what} ${requirement(e)}`);
  }
  return invalidField(at.param, `'${at.name}' ${requirement(e)}`);
}

// What the value at fault should have been, and what it was.
function requirement(e: ErrorObject): string {
  const v = e.data;
  const got = `, got ${describeValue(v)}`;
  const s = e.schema as unknown;
  switch (e.keyword) {
    case 'type':
      if (typeof v === 'number' && !Number.isFinite(v)) return `must be a finite number, got ${v} (a number too large for a double)`;
      return `must be ${typeWords(s)}${got}`;
    case 'minimum': case 'maximum': case 'exclusiveMinimum': case 'exclusiveMaximum': {
      const op = { minimum: '≥', maximum: '≤', exclusiveMinimum: '>', exclusiveMaximum: '<' }[e.keyword];
      const range = interval(e.parentSchema);
      return `must be ${op} ${s as number}${range ? ` (in ${range})` : ''}${got}`;
    }
    case 'enum':
      return `must be one of ${(s as unknown[]).map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join(', ')}${got}`;
    case 'minItems':
      return (s as number) === 1 ? `must not be empty (at least one item)` : `must hold at least ${s as number} items, got ${(v as unknown[]).length}`;
    case 'maxItems':
      return `must hold at most ${s as number} items, got ${(v as unknown[]).length}`;
    case 'minLength':
      return (s as number) === 1 ? `must not be empty` : `must hold at least ${s as number} characters`;
    case 'maxLength':
      return `must hold at most ${s as number} characters, got ${(v as string).length}`;
    case 'pattern':
      return `must match ${s as string}${got}`;
    case 'anyOf': case 'oneOf': {
      const desc = (e.parentSchema as { description?: string } | undefined)?.description;
      return `must be ${desc ?? 'one of the allowed forms'}${got}`;
    }
    default:
      return `${e.message ?? 'is invalid'}${got}`;
  }
}

function typeWords(t: unknown): string {
  const words: Record<string, string> = { integer: 'an integer', number: 'a number', string: 'a string', boolean: 'a boolean', object: 'an object', array: 'an array', null: 'null' };
  const list = (Array.isArray(t) ? t : [t]).map((x) => words[String(x)] ?? String(x));
  const named = list.filter((w) => w !== 'null');
  const text = named.length <= 1 ? (named[0] ?? 'null') : `${named.slice(0, -1).join(', ')} or ${named[named.length - 1]}`;
  return list.includes('null') && named.length ? `${text} (or null)` : text;
}

// A number schema's range, when it has both ends: "[0, 512)", "(0, 1]".
function interval(schema: unknown): string | null {
  const s = (schema ?? {}) as { minimum?: number; maximum?: number; exclusiveMinimum?: number; exclusiveMaximum?: number };
  const lo = s.minimum !== undefined ? `[${s.minimum}` : s.exclusiveMinimum !== undefined ? `(${s.exclusiveMinimum}` : null;
  const hi = s.maximum !== undefined ? `${s.maximum}]` : s.exclusiveMaximum !== undefined ? `${s.exclusiveMaximum})` : null;
  return lo && hi ? `${lo}, ${hi}` : null;
}

function propertyDescription(schema: unknown, key: string): string | undefined {
  const d = (schema as { properties?: Record<string, { description?: unknown }> } | undefined)?.properties?.[key]?.description;
  return typeof d === 'string' ? d : undefined;
}

// An Ajv instancePath ("/messages/1/role") → the field's name as OpenAI writes it
// ("messages[1].role"), walking the value to tell array indexes from object keys. Past an object
// key that is not a plain name (a logit_bias token id), `param` stays at the object
// ('logit_bias'); the message names the whole path ('logit_bias["50256"]').
interface Located { name: string; param: string; collapsed: boolean }

function locate(instancePath: string, data: unknown): Located {
  let name = '';
  let param = '';
  let collapsed = false;
  let cur: unknown = data;
  for (const raw of instancePath.split('/').slice(1)) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(cur)) {
      name += `[${seg}]`;
    } else {
      const plain = /^[A-Za-z_][A-Za-z0-9_]*$/.test(seg);
      if (!plain) collapsed = true;
      name = plain ? (name ? `${name}.${seg}` : seg) : `${name}[${JSON.stringify(seg)}]`;
    }
    if (!collapsed) param = name;
    cur = cur !== null && typeof cur === 'object' ? (cur as Record<string, unknown>)[seg] : undefined;
  }
  return { name, param, collapsed };
}

function childName(at: Located, key: string): string {
  if (!at.name) return key;
  if (/^[A-Za-z_][A-Za-z0-9_.]*$/.test(key)) return at.name ? `${at.name}.${key}` : key;
  return `${at.name}[${JSON.stringify(key)}]`;
}
