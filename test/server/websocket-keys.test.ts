// With both --api-key and --admin-key, a WebSocket opens with either: job subscriptions need the
// admin key and a socket carries one Authorization header (found by the attack pass of 2026-12-04:
// a subscriber could not open a socket at all). The API key still cannot subscribe; no key, or a
// wrong one, is refused as before.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { RunningServer } from '../../src/server/serve.ts';
import { startTestServer } from '../helpers/server.ts';

let server: RunningServer;
beforeAll(async () => { server = await startTestServer({ apiKey: 'sk-user', adminKey: 'sk-admin', enableLocalAdmin: false }); });
afterAll(async () => { await server?.close(); });

type Ev = Record<string, unknown>;

// Opens a socket with a key, sends one message, and returns the first event (or how it closed).
function exchange(key: string | null, msg: Ev): Promise<{ event?: Ev; closed?: number }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${server.url.replace('http', 'ws')}/v1/stream`, { headers: key ? { authorization: `Bearer ${key}` } : {} });
    const done = (r: { event?: Ev; closed?: number }) => { resolve(r); ws.terminate(); };
    ws.on('open', () => ws.send(JSON.stringify(msg)));
    ws.on('message', (d) => {
      const ev = JSON.parse(d.toString()) as Ev;
      if (ev.type === 'error' && (ev.error as { code?: string })?.code === 'unauthorized' && ws.readyState !== ws.OPEN) return;
      done({ event: ev });
    });
    ws.on('close', (code) => resolve({ closed: code }));
    ws.on('error', () => resolve({ closed: -1 }));
  });
}

const SUBSCRIBE = { type: 'fine_tuning.job.subscribe', fine_tuning_job_id: 'ftjob-000000000000000000000000' };
const CREATE = { type: 'response.create', response_id: 'r1', model: 'stories260K', prompt: 'Once', max_tokens: 2 };

describe('WebSocket keys', () => {
  it('the admin key opens a socket whose subscription gets past auth (a 404 for the unknown job)', async () => {
    const { event } = await exchange('sk-admin', SUBSCRIBE);
    expect(event?.type).toBe('error');
    expect(event?.status).toBe(404);
  });

  it('the API key opens a socket, but its subscription is refused (401: the admin key)', async () => {
    const { event } = await exchange('sk-user', SUBSCRIBE);
    expect(event?.status).toBe(401);
    expect(JSON.stringify(event)).toMatch(/admin key/);
  });

  it('the API key still generates on it', async () => {
    const { event } = await exchange('sk-user', CREATE);
    expect(event?.type).not.toBe('error');
  });

  it('no key, or a wrong one, is refused', async () => {
    for (const key of [null, 'sk-wrong']) {
      const r = await exchange(key, SUBSCRIBE);
      const refused = r.closed === 1008 || r.event?.status === 401;
      expect(refused, JSON.stringify(r)).toBe(true);
    }
  });
});
