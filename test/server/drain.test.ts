// Graceful drain, as Kubernetes stops a pod: the real CLI server in a child process gets SIGTERM
// while streams are in flight. Readiness (GET /ready) turns 503 at once and a new request is refused
// with 503, while liveness (GET /health) stays 200; every stream in flight goes on to its [DONE]; then
// the process exits 0. Past --drain-timeout, what is left is cancelled and the process still exits 0.
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import WebSocket from 'ws';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BIN } from '../helpers/cli.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';
import { loadConfig } from '../../src/server/config.ts';
import { LONG_JOB, LORA_FAST, trainingJsonl, waitFor } from '../helpers/fine-tuning.ts';

interface Served { url: string; child: ChildProcess; exited: Promise<number | null>; log: () => string }

function serve(args: string[]): Promise<Served> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, 'serve', '--model', STORIES_DIR, '--port', '0', '--adapters', mkdtempSync(join(tmpdir(), 'loraserve-drain-')), '--log-level', 'info', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LORASERVE_THREADS: '1' },
    });
    let out = '';
    const killer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    const exited = new Promise<number | null>((res) => child.on('close', (code) => { clearTimeout(killer); res(code); }));
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /Server listening at (http:\/\/[\d.]+:\d+)/.exec(out);
      if (m) resolve({ url: m[1], child, exited, log: () => out });
    });
    child.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
    child.on('error', reject);
    void exited.then((code) => reject(new Error(`server exited (${code}) before listening:\n${out}`)));
  });
}

const completion = (url: string, body: Record<string, unknown>): Promise<Response> =>
  fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories260K', prompt: [1, 403], ...body }) });

// Reads an SSE body to its end: the text so far once the first chunk arrived, then all of it.
async function openStream(url: string, maxTokens: number): Promise<{ first: string; rest: Promise<string> }> {
  const r = await completion(url, { max_tokens: maxTokens, ignore_eos: true, stream: true, stream_options: { include_usage: true } });
  expect(r.status).toBe(200);
  const reader = r.body!.getReader();
  const dec = new TextDecoder();
  const first = await reader.read();
  const head = dec.decode(first.value);
  const rest = (async () => {
    let text = head;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return text;
      text += dec.decode(value, { stream: true });
    }
  })();
  return { first: head, rest };
}

// completion_tokens of the usage chunk (stream_options.include_usage)
function completionTokens(sse: string): number | undefined {
  const m = /"completion_tokens":(\d+)/.exec(sse);
  return m ? Number(m[1]) : undefined;
}

describe('graceful drain on SIGTERM', () => {
  it('readiness turns 503 at once and new requests are refused, 8 streams in flight finish with [DONE], the process exits 0', async () => {
    const s = await serve(['--max-batch', '8', '--drain-timeout', '60']);
    try {
      expect((await fetch(`${s.url}/ready`)).status).toBe(200);
      const streams = await Promise.all(Array.from({ length: 8 }, () => openStream(s.url, 400)));
      let ended = 0;
      const bodies = streams.map((st) => st.rest.then((t) => { ended++; return t; }));
      s.child.kill('SIGTERM');
      // readiness false at once (the first answer after the signal is handled), while the streams still run
      let ready = await fetch(`${s.url}/ready`);
      for (let i = 0; i < 100 && ready.status === 200; i++) { await new Promise((r) => setTimeout(r, 10)); ready = await fetch(`${s.url}/ready`); }
      expect(ready.status).toBe(503);
      expect(await ready.json()).toMatchObject({ status: 'draining' });
      expect(ended).toBeLessThan(8);
      // a new request is refused, with a Retry-After, and says why
      const refused = await completion(s.url, { max_tokens: 4 });
      expect(refused.status).toBe(503);
      expect(refused.headers.get('retry-after')).toBe('1');
      expect(((await refused.json()) as { error: { message: string } }).error.message).toMatch(/shutting down/);
      // liveness is not readiness: the process is healthy while it drains
      expect((await fetch(`${s.url}/health`)).status).toBe(200);
      expect(ended).toBeLessThan(8);
      // every stream in flight finishes, whole
      for (const body of await Promise.all(bodies)) {
        expect(body).not.toContain('"error"');
        expect(body.trimEnd().endsWith('data: [DONE]')).toBe(true);
        expect(completionTokens(body)).toBe(400);
        expect(body).toContain('"finish_reason":"length"');
      }
      expect(await s.exited).toBe(0);
      expect(s.log()).toMatch(/"drained":true/);
    } finally {
      s.child.kill('SIGKILL');
    }
  }, 120_000);

  it('past --drain-timeout the requests left are cancelled and the process still exits 0', async () => {
    // one row, eight long streams: about 8 × 0.5 s of work, far beyond a 1 s timeout
    const s = await serve(['--max-batch', '1', '--drain-timeout', '1']);
    try {
      const opened = await openStream(s.url, 480);
      const first = opened.rest.then((t) => ({ ok: true, t }), () => ({ ok: false, t: '' }));
      const others = Array.from({ length: 7 }, () => completion(s.url, { max_tokens: 480, ignore_eos: true, stream: true }).then((r) => r.text()).then((t) => ({ ok: true, t }), () => ({ ok: false, t: '' })));
      await new Promise((r) => setTimeout(r, 100)); // the seven are queued behind the first
      const t0 = Date.now();
      s.child.kill('SIGTERM');
      expect(await s.exited).toBe(0);
      expect(Date.now() - t0).toBeLessThan(15_000);
      const all = [await first, ...(await Promise.all(others))];
      const complete = all.filter((a) => a.ok && a.t.trimEnd().endsWith('data: [DONE]'));
      expect(complete.length).toBeLessThan(8);
      expect(s.log()).toMatch(/drain timeout passed: cancelling the requests left/);
      expect(s.log()).toMatch(/"drained":false/);
    } finally {
      s.child.kill('SIGKILL');
    }
  }, 120_000);

  it('--drain-timeout is in seconds, 30 by default', () => {
    expect(loadConfig(['--model', STORIES_DIR], {}).drainTimeoutMs).toBe(30_000);
    expect(loadConfig(['--model', STORIES_DIR, '--drain-timeout', '5'], {}).drainTimeoutMs).toBe(5_000);
    expect(loadConfig(['--model', STORIES_DIR], { LORASERVE_DRAIN_TIMEOUT: '0' }).drainTimeoutMs).toBe(0);
    expect(() => loadConfig(['--model', STORIES_DIR, '--drain-timeout', '-1'], {})).toThrow(/--drain-timeout/);
  });
});

// Found by the attack pass of 2026-12-04: a fine-tuning job went on training through the drain (and
// the queued one after it started and finished), and an open events stream held the process until
// --drain-timeout. Now the drain's start stops the running job at its next step (failed with
// server_restarted, as a restart finds it), starts nothing queued, and ends the event streams.
describe('a drain with a fine-tuning job running', () => {
  it('stops the job at once, ends its events stream, keeps the queued job queued; the process exits 0, drained', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'loraserve-drain-ft-'));
    const args = ['--drain-timeout', '60', '--data-dir', dataDir, '--enable-local-admin'];
    const s = await serve(args);
    const json = (r: Response) => r.json() as Promise<Record<string, unknown>>;
    const post = (path: string, body: unknown) => fetch(`${s.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    let exited = false;
    try {
      const form = new FormData();
      form.append('purpose', 'fine-tune');
      form.append('file', new Blob([trainingJsonl()]), 'train.jsonl');
      const file = await json(await fetch(`${s.url}/v1/files`, { method: 'POST', body: form }));
      const create = async () => json(await post('/v1/fine_tuning/jobs', { model: 'stories260K', training_file: file.id, ...LONG_JOB, lora: LORA_FAST }));
      const a = await create();
      const b = await create();
      await waitFor('job a running', async () => (await json(await fetch(`${s.url}/v1/fine_tuning/jobs/${a.id}`))).status === 'running');
      const events = await fetch(`${s.url}/v1/fine_tuning/jobs/${a.id}/events?stream=true`);
      expect(events.status).toBe(200);
      const streamed = events.text();
      // a WebSocket open before the drain, which subscribes to the queued job after it started; an
      // upload whose body never ends holds the drain open meanwhile (it is in flight until aborted)
      const ws = new WebSocket(`${s.url.replace('http', 'ws')}/v1/stream`);
      await new Promise((r, j) => { ws.on('open', r); ws.on('error', j); });
      const wsEvents: Record<string, unknown>[] = [];
      ws.on('message', (d) => wsEvents.push(JSON.parse(String(d))));
      const hold = new AbortController();
      const body = new ReadableStream({ start: (c) => c.enqueue(new TextEncoder().encode('--x\r\n')) });
      const held = fetch(`${s.url}/v1/files`, { method: 'POST', body, duplex: 'half', headers: { 'content-type': 'multipart/form-data; boundary=x' }, signal: hold.signal } as RequestInit).catch(() => null);
      await new Promise((r) => setTimeout(r, 300)); // its headers are in: the drain counts it
      s.child.kill('SIGTERM');
      const text = await streamed; // ends: it does not wait for --drain-timeout
      expect(text).toMatch(/The job failed/);
      ws.send(JSON.stringify({ type: 'fine_tuning.job.subscribe', fine_tuning_job_id: b.id }));
      const refused = await waitFor('the late subscription answered', async () => wsEvents.find((e) => e.type === 'error' || e.type === 'fine_tuning.job.done'), 20_000);
      expect(refused).toMatchObject({ type: 'error', status: 503 });
      expect(JSON.stringify(refused)).toMatch(/shutting down/);
      ws.close();
      hold.abort();
      await held;
      expect(await s.exited).toBe(0);
      exited = true;
      expect(s.log()).toMatch(/"drained":true/);
      expect(s.log()).toMatch(/"inFlight":\{"requests":[12]/); // the held upload (and the events stream) when it started

      const again = await serve(args);
      try {
        const ja = await json(await fetch(`${again.url}/v1/fine_tuning/jobs/${a.id}`));
        expect(ja.status).toBe('failed');
        expect((ja.error as { code: string }).code).toBe('server_restarted');
        const jb = await json(await fetch(`${again.url}/v1/fine_tuning/jobs/${b.id}`));
        expect(['queued', 'running']).toContain(jb.status); // had it started before the restart, it would be failed
        await fetch(`${again.url}/v1/fine_tuning/jobs/${b.id}/cancel`, { method: 'POST' });
      } finally {
        again.child.kill('SIGTERM');
        await again.exited;
      }
    } finally {
      if (!exited) { s.child.kill('SIGKILL'); await s.exited; }
    }
  }, 120_000);
});
