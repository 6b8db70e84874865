// Server-sent events as OpenAI streams them: `data: {json}\n\n` per chunk, then `data: [DONE]`.
// An error after the stream started travels in-band as `data: {"error": …}`, then [DONE].
// Backpressure: past SOCKET_HIGH_BYTES unsent, the writer stops pulling frames (so the generation
// pauses, engine-client.ts) until the socket drains; a client that reads nothing for
// `stallTimeoutMs` is dropped, which cancels its generation and frees its KV cache.
import type { FastifyReply } from 'fastify';
import type { ServerResponse } from 'node:http';
import { errorBody } from './http-errors.ts';

export const SOCKET_HIGH_BYTES = 256 * 1024;

export async function writeSse(reply: FastifyReply, frames: AsyncIterable<Record<string, unknown>>, stallTimeoutMs: number): Promise<void> {
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
      if (res.writableLength > SOCKET_HIGH_BYTES && !(await drained(res, stallTimeoutMs))) {
        reply.request.log.warn({ unsentBytes: res.writableLength, stallTimeoutMs }, 'client stopped reading its stream; dropped');
        res.destroy();
        break;
      }
    }
  } catch (err) {
    send(JSON.stringify(errorBody(err).body));
  }
  send('[DONE]');
  res.end();
}

// Whether the socket drained within `ms` (false: timed out, or the socket closed).
export function drained(res: ServerResponse, ms: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      res.off('drain', onDrain);
      res.off('close', onClose);
      resolve(ok);
    };
    const onDrain = (): void => done(true);
    const onClose = (): void => done(false);
    const timer = setTimeout(() => done(false), ms);
    res.on('drain', onDrain);
    res.on('close', onClose);
  });
}
