// Request bodies of /v1/completions and /v1/chat/completions → a GenerationJob of typed domain
// values. JSON never goes past this file; every refusal names the field and the limit.
import { invalidField } from '../runtime/errors.ts';
import type { GenerateRequest } from '../runtime/generate-request.ts';
import type { TextTokenizer } from '../runtime/tokenizer.ts';
import { booleanField, numberField, parseSampling } from './sampling-fields.ts';
import { parseMessages } from './chat-template.ts';
import type { ChatTemplate } from './chat-template.ts';

export interface GenerationJob {
  kind: 'completion' | 'chat';
  model: string;                 // the `model` field as sent (echoed in responses)
  prompts: number[][];           // token ids of each prompt
  promptTexts: string[];         // text of each prompt (echo)
  n: number;                     // choices per prompt
  stream: boolean;
  includeUsage: boolean;
  logprobs: number | null;       // top alternatives per token; null: no logprobs
  echo: boolean;
  tokenIdsAsText: boolean;       // vLLM's return_tokens_as_token_ids
  request: Omit<GenerateRequest, 'promptTokens' | 'adapter'>;
}

export interface RequestLimits {
  vocabSize: number;
  maxContext: number;
  defaultMaxTokens: number;
  maxPrompts: number;
  maxChoices: number;
}

const MAX_N = 128;

export function parseCompletionBody(body: unknown, tok: TextTokenizer, limits: RequestLimits): GenerationJob {
  const b = asObject(body);
  const model = modelField(b);
  refuseUnsupported(b, ['suffix', 'use_beam_search']);
  if (b.best_of != null && b.best_of !== 1 && b.best_of !== b.n) throw invalidField('best_of', `'best_of' other than n is not supported`);
  const { ids, texts } = promptField(b.prompt, tok, limits);
  const logprobs = b.logprobs == null ? null : numberField(b, 'logprobs', 0, 0, 20, { int: true });
  return finishJob('completion', model, b, ids, texts, logprobs, limits, limits.defaultMaxTokens);
}

export function parseChatBody(body: unknown, tok: TextTokenizer, template: ChatTemplate, limits: RequestLimits): GenerationJob {
  const b = asObject(body);
  const model = modelField(b);
  refuseUnsupported(b, ['tools', 'functions', 'tool_choice', 'use_beam_search', 'audio', 'prediction']);
  const rf = b.response_format as { type?: unknown } | undefined;
  if (rf != null && rf.type !== 'text') throw invalidField('response_format', `'response_format' ${JSON.stringify(rf.type)} is not supported (only "text")`);
  const text = template.render(parseMessages(b.messages), booleanField(b, 'add_generation_prompt', true));
  const ids = tok.encode(text, false); // the template adds BOS itself
  if (ids.length === 0) throw invalidField('messages', `the rendered prompt is empty`);
  const wantLogprobs = booleanField(b, 'logprobs', false);
  const top = numberField(b, 'top_logprobs', 0, 0, 20, { int: true });
  if (b.top_logprobs != null && !wantLogprobs) throw invalidField('top_logprobs', `'top_logprobs' requires 'logprobs': true`);
  return finishJob('chat', model, b, [ids], [text], wantLogprobs ? top : null, limits, null);
}

function finishJob(kind: GenerationJob['kind'], model: string, b: Record<string, unknown>, prompts: number[][], texts: string[], logprobs: number | null, limits: RequestLimits, defaultMax: number | null): GenerationJob {
  const n = numberField(b, 'n', 1, 1, MAX_N, { int: true });
  if (prompts.length * n > limits.maxChoices) throw invalidField('n', `${prompts.length} prompt(s) × n=${n} choices exceeds the limit of ${limits.maxChoices} sequences per request`);
  const stream = booleanField(b, 'stream', false);
  const so = b.stream_options;
  if (so != null && !stream) throw invalidField('stream_options', `'stream_options' is only allowed with 'stream': true`);
  if (so != null && (typeof so !== 'object' || Array.isArray(so))) throw invalidField('stream_options', `'stream_options' must be an object`);
  const includeUsage = so != null && booleanField(so as Record<string, unknown>, 'include_usage', false);
  const longest = Math.max(...prompts.map((p) => p.length));
  const room = limits.maxContext - longest;
  if (room < 0) throw invalidField(kind === 'chat' ? 'messages' : 'prompt', `the prompt is ${longest} tokens, more than the context of ${limits.maxContext}`);
  const sampling = parseSampling(b, { vocabSize: limits.vocabSize, maxContext: limits.maxContext, defaultMaxTokens: defaultMax ?? room });
  if (sampling.maxTokens > room) {
    const field = b.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
    throw invalidField(field, `'${field}' ${sampling.maxTokens} plus the ${longest}-token prompt exceeds the context of ${limits.maxContext} tokens`);
  }
  const echo = kind === 'completion' && booleanField(b, 'echo', false);
  return {
    kind, model, prompts, promptTexts: texts, n, stream, includeUsage, logprobs, echo,
    tokenIdsAsText: booleanField(b, 'return_tokens_as_token_ids', false),
    request: { ...sampling, logprobs, promptLogprobs: echo && logprobs !== null ? logprobs : null },
  };
}

function asObject(body: unknown): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw invalidField('body', 'the request body must be a JSON object');
  return body as Record<string, unknown>;
}

function modelField(b: Record<string, unknown>): string {
  if (typeof b.model !== 'string' || b.model.length === 0) throw invalidField('model', `'model' is required: the base model's id or an adapter's name (see GET /v1/models)`);
  return b.model;
}

function refuseUnsupported(b: Record<string, unknown>, fields: string[]): void {
  for (const f of fields) {
    const v = b[f];
    if (v != null && v !== false && !(Array.isArray(v) && v.length === 0)) throw invalidField(f, `'${f}' is not supported by this server`);
  }
}

// prompt: string | string[] | int[] | int[][]
function promptField(v: unknown, tok: TextTokenizer, limits: RequestLimits): { ids: number[][]; texts: string[] } {
  const isTokens = (x: unknown): x is number[] => Array.isArray(x) && x.length > 0 && x.every((t) => Number.isInteger(t));
  let list: (string | number[])[];
  if (typeof v === 'string') list = [v];
  else if (isTokens(v)) list = [v];
  else if (Array.isArray(v) && v.length > 0 && v.every((p) => typeof p === 'string' || isTokens(p))) list = v as (string | number[])[];
  else throw invalidField('prompt', `'prompt' must be a string, an array of strings, an array of token ids, or an array of token-id arrays (non-empty)`);
  if (list.length > limits.maxPrompts) throw invalidField('prompt', `'prompt' holds ${list.length} prompts; the limit is ${limits.maxPrompts}`);
  const ids: number[][] = [];
  const texts: string[] = [];
  for (const [i, p] of list.entries()) {
    if (typeof p === 'string') {
      const encoded = tok.encode(p, true);
      if (encoded.length === 0) throw invalidField('prompt', `'prompt'[${i}] encodes to no tokens`);
      ids.push(encoded);
      texts.push(p);
    } else {
      const bad = p.find((t) => t < 0 || t >= limits.vocabSize);
      if (bad !== undefined) throw invalidField('prompt', `'prompt'[${i}] holds token id ${bad}, outside [0, ${limits.vocabSize})`);
      ids.push(p);
      texts.push(tok.decode(p, false));
    }
  }
  return { ids, texts };
}
