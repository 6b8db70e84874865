// Server-sent events as OpenAI streams them: `data: {json}\n\n` per chunk, then `data: [DONE]`.
// An error after the stream started travels in-band as `data: {"error": …}`, then [DONE].
import type { FastifyReply } from 'fastify';
import { errorBody } from './http-errors.ts';

export async function writeSse(reply: FastifyReply, frames: AsyncIterable<Record<string, unknown>>): Promise<void> {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
    'x-request-id': String(reply.request.id),
  });
  const send = (data: string): void => { if (!res.destroyed) res.write(`data: ${data}\n\n`); };
  try {
    for await (const f of frames) {
      if (res.destroyed) break; // the client went away: leaving the loop cancels the generation
      send(JSON.stringify(f));
    }
  } catch (err) {
    send(JSON.stringify(errorBody(err).body));
  }
  send('[DONE]');
  res.end();
}
