// Base-model embeddings through the engine (issue 14): each text's prompt is prefilled by the engine
// as an `embed` request (runtime/sequence.ts: the final hidden states, mean-pooled), sharing steps
// with generation. /v1/embeddings and semantic routing use it. Queue places are taken like any
// request's (429 beyond the limit).
import type { EngineClient } from '../runtime/engine-client.ts';
import type { GenerateRequest } from '../runtime/generate-request.ts';
import { DEFAULT_SAMPLING } from '../runtime/sampler.ts';
import { deserializeError, LoraserveError } from '../runtime/errors.ts';
import type { Admission } from './generation.ts';

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
