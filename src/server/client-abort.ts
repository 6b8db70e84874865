// The client going away (its socket closed before the response ended) aborts the returned signal:
// completions, chat, embeddings and routing cancel their engine work by it.
import type { FastifyReply, FastifyRequest } from 'fastify';

export function abortOnClose(req: FastifyRequest, reply: FastifyReply): AbortSignal {
  const ac = new AbortController();
  reply.raw.on('close', () => { if (!reply.raw.writableFinished) ac.abort(); });
  req.raw.on('aborted', () => ac.abort());
  return ac.signal;
}
