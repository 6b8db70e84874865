// A WebSocket subscription to a job's events is sent as the client reads it: the replay of a long
// job (thousands of events, megabytes) waits for room on the socket before each event, and stops
// once the socket has dropped a client that read nothing (websocket.ts roomToSend). Found by the
// attack pass of 2026-12-04: a subscriber that never read grew the server's memory without bound.
import { describe, expect, it } from 'vitest';
import { fineTuningWs } from '../../src/server/fine-tuning-ws.ts';
import type { WsContext } from '../../src/server/fine-tuning-ws.ts';
import type { FineTuningManager, JobUpdate } from '../../src/train/jobs/manager.ts';

const JOB = 'ftjob-0123456789abcdef01234567';
const EVENTS = Array.from({ length: 5000 }, (_, i) => ({ id: `ftevent-${i}`, object: 'fine_tuning.job.event', created_at: 0, level: 'info', message: `step ${i}`, type: 'metrics', data: null }));

function fakeManager(): FineTuningManager {
  return {
    get: () => ({ id: JOB, status: 'succeeded' }),
    eventsOldestFirst: () => EVENTS,
    subscribe: (_id: string, _fn: (u: JobUpdate) => void) => () => undefined,
  } as unknown as FineTuningManager;
}

async function subscribe(room: () => Promise<boolean>): Promise<Record<string, unknown>[]> {
  const sent: Record<string, unknown>[] = [];
  const ctx: WsContext = {
    req: { headers: { authorization: 'Bearer k' }, socket: { remoteAddress: '127.0.0.1' } } as never,
    send: (ev) => { sent.push(ev); },
    fail: (_id, err) => { throw err; },
    roomToSend: room,
  };
  const session = fineTuningWs(fakeManager, { adminKey: 'k', enableLocalAdmin: false }).open(ctx);
  session.message({ type: 'fine_tuning.job.subscribe', fine_tuning_job_id: JOB });
  await new Promise((r) => setTimeout(r, 50));
  return sent;
}

describe('job event subscriptions over a WebSocket', () => {
  it('a client that reads: every event, then done', async () => {
    const sent = await subscribe(async () => true);
    expect(sent.filter((e) => e.type === 'fine_tuning.job.event')).toHaveLength(EVENTS.length);
    expect(sent.at(-1)?.type).toBe('fine_tuning.job.done');
  });

  it('a client dropped for not reading: the replay stops where the socket had no room', async () => {
    let calls = 0;
    const sent = await subscribe(async () => ++calls <= 100);
    expect(sent).toHaveLength(100);
    expect(sent.every((e) => e.type === 'fine_tuning.job.event')).toBe(true);
  });
});
