// Base-model embeddings through the engine (issue 14): each text's prompt is prefilled by the engine
// as an `embed` request (runtime/sequence.ts: the final hidden states, mean-pooled), sharing steps
// with generation. /v1/embeddings and semantic routing use it. Queue places are taken like any
// request's (429 beyond the limit).
import type { EngineClient } from '../runtime/engine-client.ts';
import type { GenerateRequest } from '../runtime/generate-request.ts';
import { DEFAULT_SAMPLING } from '../runtime/sampler.ts';
import { deserializeError, LoraserveError } from '../runtime/errors.ts';
import type { Admission } from './generation.ts';
import type { PromptPreparer } from './prompt-preparer.ts';

export interface EmbedDeps {
  engine: EngineClient;
  admission: Admission;
}

export async function embedTokens(deps: EmbedDeps, prompts: number[][], signal?: AbortSignal): Promise<number[][]> {
  deps.admission.acquire(prompts.length);
  try {
    return await Promise.all(prompts.map((promptTokens) => embedOne(deps.engine, promptTokens, signal)));
  } finally {
    deps.admission.release(prompts.length);
  }
}

async function embedOne(engine: EngineClient, promptTokens: number[], signal?: AbortSignal): Promise<number[]> {
  if (promptTokens.length === 0) throw new LoraserveError('invalid_request', 'an empty input has no embedding', { param: 'input' });
  const req: GenerateRequest = {
    promptTokens, maxTokens: 0, sampling: { ...DEFAULT_SAMPLING }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true,
    logprobs: null, adapter: null, embed: true,
  };
  for await (const ev of engine.generate(req, signal)) {
    if (ev.type === 'embedding') return ev.vector;
    if (ev.type === 'error') throw deserializeError(ev.error);
  }
  throw new LoraserveError('client_closed', 'the embedding was cancelled before it was computed');
}

// What routing embeds of a text (a prompt, a chat's user turns, an adapter's example): its opening,
// at most the model's context. Routing judges a text, it does not run it: a prompt that fits as
// token ids may be longer once spelled out and tokenized again ("auto" routes by the text), and an
// example may be longer than the context. So each text is cut to the bytes one context can hold and
// its tokens to the context, rather than refused for a field the client did not send or sent to
// the engine too long (which refuses it: runtime/sequence.ts).
export async function routingTokens(prompts: PromptPreparer, texts: string[], maxContext: number, param: string): Promise<number[][]> {
  const cut = texts.map((t) => truncateUtf8(t, prompts.maxPromptBytes));
  return (await prompts.encode(cut, true, param)).map((ids) => ids.slice(0, maxContext));
}

// The longest prefix of `text` whose UTF-8 encoding has at most `maxBytes` bytes (never half a
// character).
export function truncateUtf8(text: string, maxBytes: number): string {
  if (text.length <= maxBytes / 3 || Buffer.byteLength(text, 'utf8') <= maxBytes) return text;
  const bytes = Buffer.from(text, 'utf8');
  let end = maxBytes;
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--; // bytes[end] continues a character: cut before it
  return bytes.subarray(0, end).toString('utf8');
}
