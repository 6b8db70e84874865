// POST /v1/completions and POST /v1/chat/completions.
//   1. parse    body → GenerationJob (openai-request.ts; chat: template + tokenize here)
//   2. admit    model name → adapter, queue places (generation.ts; 404 / 429 before any output)
//   3. generate every choice on the engine, events merged (generation.ts)
//   4. respond  SSE chunks (sse.ts) or one collected response (openai-response.ts)
// Errors map through http-errors.ts, the same way for JSON and in-band SSE.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { parseChatBody, parseCompletionBody } from './openai-request.ts';
import type { GenerationJob, RequestLimits } from './openai-request.ts';
import { runJob } from './generation.ts';
import type { ChoiceEvent, GenerationDeps } from './generation.ts';
import { ResponseBuilder } from './openai-response.ts';
import { writeSse } from './sse.ts';
import type { TextTokenizer } from '../runtime/tokenizer.ts';
import type { ChatTemplate } from './chat-template.ts';
import { deserializeError } from '../runtime/errors.ts';

export interface CompletionDeps extends GenerationDeps {
  tokenizer: TextTokenizer;
  chatTemplate: ChatTemplate;
  limits: RequestLimits;
}

export function completionsHandler(deps: CompletionDeps, kind: 'completion' | 'chat') {
  return async (req: FastifyRequest, reply: FastifyReply): Promise<unknown> => {
    const job = kind === 'chat' ? parseChatBody(req.body, deps.tokenizer, deps.chatTemplate, deps.limits) : parseCompletionBody(req.body, deps.tokenizer, deps.limits);
    const aborted = abortOnClose(req, reply);
    const events = runJob(job, deps, aborted);
    const first = await events.next(); // 404 / 429 / bad input surface here, before any output
    const all = prepend(first, events);
    return job.stream ? writeSse(reply, streamFrames(job, all)) : collect(job, all);
  };
}

async function collect(job: GenerationJob, events: AsyncIterable<ChoiceEvent>): Promise<Record<string, unknown>> {
  const all: ChoiceEvent[] = [];
  for await (const e of events) {
    if (e.event.type === 'error') throw deserializeError(e.event.error);
    all.push(e);
  }
  return new ResponseBuilder(job).collect(all);
}

async function* streamFrames(job: GenerationJob, events: AsyncIterable<ChoiceEvent>): AsyncGenerator<Record<string, unknown>> {
  const b = new ResponseBuilder(job);
  const started = new Set<number>();
  for await (const e of events) {
    if (e.event.type === 'error') throw deserializeError(e.event.error);
    yield* b.chunksFor(e, started);
  }
  if (job.includeUsage) yield b.chunk([], b.totals());
}

// The client going away (socket closed before the response ended) cancels the generation.
function abortOnClose(req: FastifyRequest, reply: FastifyReply): AbortSignal {
  const ac = new AbortController();
  reply.raw.on('close', () => { if (!reply.raw.writableFinished) ac.abort(); });
  req.raw.on('aborted', () => ac.abort());
  return ac.signal;
}

async function* prepend<T>(first: IteratorResult<T>, rest: AsyncGenerator<T>): AsyncGenerator<T> {
  try {
    if (first.done) return;
    yield first.value;
    yield* rest;
  } finally {
    await rest.return(undefined); // however the consumer stops, the generation is cancelled and released
  }
}
