// SSE framing, and an error after the stream has started: sent in-band, then [DONE].
import { describe, expect, it } from 'vitest';
import Fastify from 'fastify';
import { writeSse } from '../../src/server/sse.ts';
import { LoraserveError } from '../../src/runtime/errors.ts';

describe('writeSse', () => {
  it('frames chunks as data lines, reports a mid-stream failure in-band, then [DONE]', async () => {
    const app = Fastify();
    app.get('/s', async (_req, reply) => writeSse(reply, (async function* () {
      yield { n: 1 };
      yield { n: 2 };
      throw new LoraserveError('internal', 'the engine stopped');
    })(), 1000));
    const r = await app.inject({ method: 'GET', url: '/s' });
    expect(r.statusCode).toBe(200);
    expect(r.headers['content-type']).toMatch(/^text\/event-stream/);
    expect(r.body).toBe([
      'data: {"n":1}', '',
      'data: {"n":2}', '',
      'data: {"error":{"message":"the engine stopped","type":"server_error","param":null,"code":"internal"}}', '',
      'data: [DONE]', '', '',
    ].join('\n'));
    await app.close();
  });
});
