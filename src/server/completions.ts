// POST /v1/completions and POST /v1/chat/completions.
//   1. parse    body → GenerationJob: the route's schema first (request-schemas.ts), then
//               openai-request.ts (rules between fields; chat: template + tokenize here)
//   2. admit    model name → adapter, queue places (generation.ts; 404 / 429 before any output)
//   3. generate every choice on the engine, events merged (generation.ts)
//   4. respond  SSE chunks (sse.ts) or one collected response (openai-response.ts)
// Errors map through http-errors.ts, the same way for JSON and in-band SSE.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { parseChatBody, parseCompletionBody } from './openai-request.ts';
import type { GenerationJob, RequestLimits } from './openai-request.ts';
import { resolveTarget, runJob } from './generation.ts';
import type { ChoiceEvent, GenerationDeps, Target } from './generation.ts';
import { ResponseBuilder } from './openai-response.ts';
import { writeSse } from './sse.ts';
import { abortOnClose } from './client-abort.ts';
import type { PromptPreparer } from './prompt-preparer.ts';
import type { inferenceSchemas } from './request-schemas.ts';
import { deserializeError, LoraserveError } from '../runtime/errors.ts';

export interface CompletionDeps extends GenerationDeps {
  prompts: PromptPreparer;       // tokenizing and chat templates, off the event loop
  limits: RequestLimits;
  stallTimeoutMs: number;        // a client that reads nothing for this long is dropped
  schemas: ReturnType<typeof inferenceSchemas>; // the routes' schemas: the WebSocket API validates with them too
}

export function completionsHandler(deps: CompletionDeps, kind: 'completion' | 'chat') {
  return async (req: FastifyRequest, reply: FastifyReply): Promise<unknown> => {
    const aborted = abortOnClose(req, reply);
    const job = kind === 'chat' ? await parseChatBody(req.body, deps.prompts, deps.limits) : await parseCompletionBody(req.body, deps.prompts, deps.limits);
    // what it runs on: base, an adapter, a mixture, or what "auto" routing chose (reported back)
    const target = await resolveTarget(job, deps);
    reply.header('x-loraserve-adapter', target.label);
    if (target.routed) job.model = target.label;
    const events = runJob(job, deps, aborted, target);
    const first = await events.next(); // 404 / 429 / 503 / bad input surface here, before any output
    if (!first.done && first.value.event.type === 'error') {
      await events.return(undefined);
      throw deserializeError(first.value.event.error);
    }
    const all = prepend(first, events);
    if (job.stream) return writeSse(reply, streamFrames(job, all), deps.stallTimeoutMs);
    const body = await collectResponse(job, all, aborted);
    return target.routed ? { ...body, routing: routingReport(target) } : body;
  };
}

// What "auto" routing chose and why: the adapter (null: base) or the mixture's weights, and every score.
export function routingReport(t: Target): Record<string, unknown> {
  return { adapter: t.adapter, mixture: t.mixture, scores: t.routed?.scores.map((s) => ({ adapter: s.name, score: s.score })) ?? [] };
}

export async function collectResponse(job: GenerationJob, events: AsyncIterable<ChoiceEvent>, aborted: AbortSignal): Promise<Record<string, unknown>> {
  const all: ChoiceEvent[] = [];
  for await (const e of events) {
    if (e.event.type === 'error') throw deserializeError(e.event.error);
    all.push(e);
  }
  // the client left before the end: nobody reads this answer, and the choices never finished
  if (aborted.aborted) throw new LoraserveError('client_closed', 'the client closed the connection before the response was complete');
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


async function* prepend<T>(first: IteratorResult<T>, rest: AsyncGenerator<T>): AsyncGenerator<T> {
  try {
    if (first.done) return;
    yield first.value;
    yield* rest;
  } finally {
    await rest.return(undefined); // however the consumer stops, the generation is cancelled and released
  }
}
