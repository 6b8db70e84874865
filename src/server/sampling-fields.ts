// The OpenAI/vLLM sampling fields of a request body → SamplingParams and the rest of a GenerateRequest.
// Shared by the HTTP API, the WebSocket API and the CLI (whose flags are these names in kebab case).
import { invalidField } from '../runtime/errors.ts';
import type { GenerateRequest } from '../runtime/generate-request.ts';
import type { SamplingParams } from '../runtime/sampler.ts';

export interface SamplingFields {
  max_tokens?: unknown;
  max_completion_tokens?: unknown;
  temperature?: unknown;
  top_p?: unknown;
  top_k?: unknown;
  min_p?: unknown;
  seed?: unknown;
  stop?: unknown;
  stop_token_ids?: unknown;
  ignore_eos?: unknown;
  presence_penalty?: unknown;
  frequency_penalty?: unknown;
  repetition_penalty?: unknown;
  logit_bias?: unknown;
}

// A value as an error message shows it: short, and never "null" for a number JSON cannot hold.
export function describeValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (v === undefined) return 'nothing';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object' && v !== null) return 'an object';
  return String(v);
}

export function numberField(body: Record<string, unknown>, field: string, def: number, min: number, max: number, opts: { int?: boolean; exclusiveMin?: boolean } = {}): number {
  const v = body[field];
  if (v === undefined || v === null) return def;
  if (typeof v !== 'number') throw invalidField(field, `'${field}' must be a number, got ${describeValue(v)}`);
  if (!Number.isFinite(v)) throw invalidField(field, `'${field}' must be a finite number, got ${v} (a number too large for a double)`);
  if (opts.int && !Number.isInteger(v)) throw invalidField(field, `'${field}' must be an integer, got ${v}`);
  if (opts.exclusiveMin ? v <= min : v < min) throw invalidField(field, `'${field}' must be ${opts.exclusiveMin ? '>' : '≥'} ${min}, got ${v}`);
  if (v > max) throw invalidField(field, `'${field}' must be ≤ ${max}, got ${v}`);
  return v;
}

export function booleanField(body: Record<string, unknown>, field: string, def: boolean): boolean {
  const v = body[field];
  if (v === undefined || v === null) return def;
  if (typeof v !== 'boolean') throw invalidField(field, `'${field}' must be a boolean, got ${describeValue(v)}`);
  return v;
}

export interface SamplingLimits {
  vocabSize: number;
  maxContext: number;
  defaultMaxTokens: number;
}

export function parseSampling(body: Record<string, unknown>, limits: SamplingLimits): Omit<GenerateRequest, 'promptTokens' | 'logprobs' | 'adapter'> {
  const temperature = numberField(body, 'temperature', 1, 0, 2);
  const sampling: SamplingParams = {
    temperature,
    topP: numberField(body, 'top_p', 1, 0, 1, { exclusiveMin: true }),
    topK: topKField(body),
    minP: numberField(body, 'min_p', 0, 0, 1),
    repetitionPenalty: numberField(body, 'repetition_penalty', 1, 0.01, 100),
    frequencyPenalty: numberField(body, 'frequency_penalty', 0, -2, 2),
    presencePenalty: numberField(body, 'presence_penalty', 0, -2, 2),
    logitBias: logitBiasField(body, limits.vocabSize),
  };
  const maxField = body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
  const maxTokens = numberField(body, maxField, limits.defaultMaxTokens, 0, limits.maxContext, { int: true });
  const seedRaw = body.seed;
  if (seedRaw != null && (typeof seedRaw !== 'number' || !Number.isSafeInteger(seedRaw))) throw invalidField('seed', `'seed' must be a safe integer (|seed| < 2^53), got ${describeValue(seedRaw)}`);
  return {
    sampling,
    maxTokens,
    seed: (seedRaw as number | undefined) ?? null,
    stop: stopField(body),
    stopTokenIds: stopTokenIdsField(body, limits.vocabSize),
    ignoreEos: booleanField(body, 'ignore_eos', false),
  };
}

function topKField(body: Record<string, unknown>): number {
  const v = numberField(body, 'top_k', 0, -1, 1_000_000, { int: true });
  return v === -1 ? 0 : v; // −1 means disabled in older vLLM
}

function stopField(body: Record<string, unknown>): string[] {
  const v = body.stop;
  if (v == null) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || !list.every((s) => typeof s === 'string')) throw invalidField('stop', `'stop' must be a string or an array of strings`);
  if (list.length > 16) throw invalidField('stop', `'stop' may hold at most 16 strings, got ${list.length}`);
  if (list.some((s) => s.length === 0)) throw invalidField('stop', `'stop' strings must not be empty`);
  return list as string[];
}

function stopTokenIdsField(body: Record<string, unknown>, vocab: number): number[] {
  const v = body.stop_token_ids;
  if (v == null) return [];
  if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x) && x >= 0 && x < vocab)) {
    throw invalidField('stop_token_ids', `'stop_token_ids' must be an array of token ids in [0, ${vocab})`);
  }
  return v as number[];
}

function logitBiasField(body: Record<string, unknown>, vocab: number): Map<number, number> {
  const v = body.logit_bias;
  const out = new Map<number, number>();
  if (v == null) return out;
  if (typeof v !== 'object' || Array.isArray(v)) throw invalidField('logit_bias', `'logit_bias' must be an object mapping token ids to numbers`);
  for (const [k, b] of Object.entries(v as Record<string, unknown>)) {
    const id = Number(k);
    if (!/^\d+$/.test(k) || id >= vocab) throw invalidField('logit_bias', `'logit_bias' key ${JSON.stringify(k)} is not a token id in [0, ${vocab})`);
    if (typeof b !== 'number' || !Number.isFinite(b) || b < -100 || b > 100) throw invalidField('logit_bias', `'logit_bias' value for token ${k} must be a number in [-100, 100]`);
    out.set(id, b);
  }
  return out;
}
