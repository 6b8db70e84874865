// Request bodies of /v1/completions and /v1/chat/completions → a GenerationJob of typed domain
// values. JSON never goes past this file; every refusal names the field and the limit. Every
// cheap check comes first; tokenizing and chat templates run in the prompt worker.
import { invalidField } from '../runtime/errors.ts';
import type { GenerateRequest } from '../runtime/generate-request.ts';
import { booleanField, describeValue, numberField, parseSampling } from './sampling-fields.ts';
import { parseMessages } from './chat-messages.ts';
import type { PromptPreparer } from './prompt-preparer.ts';

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
  adapters: unknown;             // the `adapters` field (a per-request mixture), as sent: model-selector.ts reads it
  routingText: string;           // what "auto" routing embeds: the prompt, or a chat's user messages
  request: Omit<GenerateRequest, 'promptTokens' | 'adapter'>;
}

export interface RequestLimits {
  vocabSize: number;
  maxContext: number;
  defaultMaxTokens: number;
  maxPrompts: number;
  maxChoices: number;
}

export const MAX_N = 128;

export async function parseCompletionBody(body: unknown, prep: PromptPreparer, limits: RequestLimits): Promise<GenerationJob> {
  const b = asObject(body);
  const model = modelField(b);
  refuseUnsupported(b, ['suffix', 'use_beam_search']);
  if (b.best_of != null && b.best_of !== 1 && b.best_of !== b.n) throw invalidField('best_of', `'best_of' other than n is not supported`);
  const logprobs = b.logprobs == null ? null : numberField(b, 'logprobs', 0, 0, 20, { int: true });
  const list = promptList(b.prompt, limits);
  const fields = promptFreeFields(b, list.length, limits, limits.defaultMaxTokens);
  const { ids, texts } = await encodePrompts(list, prep);
  return finishJob('completion', model, b, fields, ids, texts, logprobs, limits);
}

export async function parseChatBody(body: unknown, prep: PromptPreparer, limits: RequestLimits): Promise<GenerationJob> {
  const b = asObject(body);
  const model = modelField(b);
  refuseUnsupported(b, ['tools', 'functions', 'tool_choice', 'use_beam_search', 'audio', 'prediction']);
  const rf = b.response_format;
  if (rf != null && (typeof rf !== 'object' || Array.isArray(rf))) throw invalidField('response_format', `'response_format' must be an object such as {"type": "text"}, got ${describeValue(rf)}`);
  if (rf != null && (rf as { type?: unknown }).type !== 'text') throw invalidField('response_format', `'response_format.type' ${describeValue((rf as { type?: unknown }).type)} is not supported (only "text")`);
  const wantLogprobs = booleanField(b, 'logprobs', false);
  const top = numberField(b, 'top_logprobs', 0, 0, 20, { int: true });
  if (b.top_logprobs != null && !wantLogprobs) throw invalidField('top_logprobs', `'top_logprobs' requires 'logprobs': true`);
  const messages = parseMessages(b.messages);
  const addGenerationPrompt = booleanField(b, 'add_generation_prompt', true);
  const fields = promptFreeFields(b, 1, limits, null);
  const { text, ids } = await prep.renderChat(messages, addGenerationPrompt); // the template adds BOS itself
  if (ids.length === 0) throw invalidField('messages', `the rendered prompt is empty`);
  const job = finishJob('chat', model, b, fields, [ids], [text], wantLogprobs ? top : null, limits);
  job.routingText = messages.filter((m) => m.role === 'user').map((m) => m.content).join('\n') || text;
  return job;
}

type Sampling = ReturnType<typeof parseSampling>;
interface PromptFreeFields { n: number; stream: boolean; includeUsage: boolean; echo: boolean; tokenIdsAsText: boolean; sampling: Sampling; maxTokensSet: boolean; defaultMax: number | null }

// Every field that needs no prompt, checked before any tokenizing.
function promptFreeFields(b: Record<string, unknown>, prompts: number, limits: RequestLimits, defaultMax: number | null): PromptFreeFields {
  const n = numberField(b, 'n', 1, 1, MAX_N, { int: true });
  if (prompts * n > limits.maxChoices) throw invalidField('n', `${prompts} prompt(s) × n=${n} choices exceeds the limit of ${limits.maxChoices} sequences per request`);
  const stream = booleanField(b, 'stream', false);
  const so = b.stream_options;
  if (so != null && !stream) throw invalidField('stream_options', `'stream_options' is only allowed with 'stream': true`);
  if (so != null && (typeof so !== 'object' || Array.isArray(so))) throw invalidField('stream_options', `'stream_options' must be an object`);
  const includeUsage = so != null && booleanField(so as Record<string, unknown>, 'include_usage', false);
  const sampling = parseSampling(b, { vocabSize: limits.vocabSize, maxContext: limits.maxContext, defaultMaxTokens: defaultMax ?? 0 });
  return {
    n, stream, includeUsage, sampling, defaultMax,
    echo: booleanField(b, 'echo', false),
    tokenIdsAsText: booleanField(b, 'return_tokens_as_token_ids', false),
    maxTokensSet: b.max_tokens != null || b.max_completion_tokens != null,
  };
}

function finishJob(kind: GenerationJob['kind'], model: string, b: Record<string, unknown>, f: PromptFreeFields, prompts: number[][], texts: string[], logprobs: number | null, limits: RequestLimits): GenerationJob {
  const longest = Math.max(...prompts.map((p) => p.length));
  const room = limits.maxContext - longest;
  if (room < 0) throw invalidField(kind === 'chat' ? 'messages' : 'prompt', `the prompt is ${longest} tokens, more than the context of ${limits.maxContext}`);
  const maxTokens = f.maxTokensSet || f.defaultMax !== null ? f.sampling.maxTokens : room; // chat's default: the rest of the context
  if (maxTokens > room) {
    const field = b.max_completion_tokens != null ? 'max_completion_tokens' : b.max_tokens != null ? 'max_tokens' : 'prompt';
    throw invalidField(field, `${f.maxTokensSet ? `'${field}' ${maxTokens}` : `the default of ${maxTokens} new tokens`} plus the ${longest}-token prompt exceeds the context of ${limits.maxContext} tokens`);
  }
  const echo = kind === 'completion' && f.echo;
  return {
    kind, model, prompts, promptTexts: texts, n: f.n, stream: f.stream, includeUsage: f.includeUsage, logprobs, echo,
    tokenIdsAsText: f.tokenIdsAsText, adapters: b.adapters ?? null, routingText: texts[0] ?? '',
    request: { ...f.sampling, maxTokens, logprobs, promptLogprobs: echo && logprobs !== null ? logprobs : null },
  };
}

export function asObject(body: unknown): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw invalidField('body', 'the request body must be a JSON object');
  return body as Record<string, unknown>;
}

export function modelField(b: Record<string, unknown>): string {
  if (typeof b.model !== 'string' || b.model.length === 0) throw invalidField('model', `'model' is required: the base model's id or an adapter's name (see GET /v1/models)`);
  return b.model;
}

export function refuseUnsupported(b: Record<string, unknown>, fields: string[]): void {
  for (const f of fields) {
    const v = b[f];
    if (v != null && v !== false && !(Array.isArray(v) && v.length === 0)) throw invalidField(f, `'${f}' is not supported by this server`);
  }
}

// prompt: string | string[] | int[] | int[][]. Token-id prompts are checked here, text prompts
// by byte length (encodePrompts), then tokenized in the prompt worker.
type PromptEntry = { i: number; name: string; text: string } | { i: number; name: string; ids: number[] };

function promptList(v: unknown, limits: RequestLimits): PromptEntry[] {
  const isTokens = (x: unknown): x is number[] => Array.isArray(x) && x.length > 0 && x.every((t) => Number.isInteger(t));
  let list: (string | number[])[];
  if (typeof v === 'string') list = [v];
  else if (isTokens(v)) list = [v];
  else if (Array.isArray(v) && v.length > 0 && v.every((p) => typeof p === 'string' || isTokens(p))) list = v as (string | number[])[];
  else throw invalidField('prompt', `'prompt' must be a string, an array of strings, an array of token ids, or an array of token-id arrays (non-empty)`);
  if (list.length > limits.maxPrompts) throw invalidField('prompt', `'prompt' holds ${list.length} prompts; the limit is ${limits.maxPrompts}`);
  return list.map((p, i) => {
    const name = list.length === 1 ? 'prompt' : `prompt[${i}]`;
    if (typeof p === 'string') return { i, name, text: p };
    if (p.length > limits.maxContext) throw invalidField(name, `'${name}' is ${p.length} tokens, more than the context of ${limits.maxContext}`);
    const at = p.findIndex((t) => t < 0 || t >= limits.vocabSize);
    if (at !== -1) throw invalidField(name, `'${name}[${at}]' is token id ${p[at]}, outside [0, ${limits.vocabSize})`);
    return { i, name, ids: p };
  });
}

async function encodePrompts(list: PromptEntry[], prep: PromptPreparer): Promise<{ ids: number[][]; texts: string[] }> {
  const strings = list.filter((e): e is Extract<PromptEntry, { text: string }> => 'text' in e);
  const tokenLists = list.filter((e): e is Extract<PromptEntry, { ids: number[] }> => 'ids' in e);
  const [encoded, decoded] = await Promise.all([
    strings.length ? prep.encode(strings.map((s) => s.text), true, 'prompt') : [],
    tokenLists.length ? prep.decode(tokenLists.map((t) => t.ids)) : [],
  ]);
  const ids: number[][] = new Array(list.length);
  const texts: string[] = new Array(list.length);
  strings.forEach((s, k) => {
    if (encoded[k].length === 0) throw invalidField(s.name, `'${s.name}' encodes to no tokens`);
    ids[s.i] = encoded[k];
    texts[s.i] = s.text;
  });
  tokenLists.forEach((t, k) => { ids[t.i] = t.ids; texts[t.i] = decoded[k]; });
  return { ids, texts };
}
