// Load-test harness: starts a loraserve server as a child process on 127.0.0.1 (any free port),
// a streaming SSE client that records TTFT and inter-token latency, and report helpers.
// Every loop here is bounded in count and time; traffic goes to 127.0.0.1 only.
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { percentile, printTable } from '../bench/stats.ts';

export interface Server { url: string; proc: ChildProcess; adapters: string; stop(): Promise<void> }

export async function startServer(model: string, extra: string[] = []): Promise<Server> {
  const adapters = mkdtempSync(join(tmpdir(), 'loraserve-load-'));
  const bin = fileURLToPath(new URL('../bin/loraserve.js', import.meta.url));
  const proc = spawn(process.execPath, [bin, 'serve', '--model', model, '--host', '127.0.0.1', '--port', '0', '--adapters', adapters, '--enable-local-admin', '--log-level', 'info', ...extra], { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error('server did not start within 120 s (it must log "listening at" at --log-level info)')); }, 120_000);
    let buf = '';
    proc.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(buf);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    proc.on('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  proc.stdout!.resume();
  return {
    url, proc, adapters,
    stop: () => new Promise<void>((resolve) => { proc.once('exit', () => resolve()); proc.kill('SIGTERM'); setTimeout(() => proc.kill('SIGKILL'), 5000).unref(); }),
  };
}

// The data payloads of a server-sent event stream, in order ('[DONE]' included).
export async function* sseData(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const reader = body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) !== -1) {
      const frame = buf.slice(0, i).trim();
      buf = buf.slice(i + 2);
      if (frame.startsWith('data:')) yield frame.slice(5).trim();
    }
  }
}

export interface StreamStats { ok: boolean; status: number; ttftMs: number | null; itlMs: number[]; tokens: number; error?: string }

// One streamed completion; `abortAfterTokens` disconnects mid-stream.
export async function streamCompletion(url: string, body: Record<string, unknown>, opts: { abortAfterTokens?: number; timeoutMs?: number } = {}): Promise<StreamStats> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), opts.timeoutMs ?? 60_000);
  const t0 = performance.now();
  const times: number[] = [];
  try {
    const r = await fetch(`${url}/v1/completions`, { method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }) });
    if (!r.ok || !r.body) return { ok: false, status: r.status, ttftMs: null, itlMs: [], tokens: 0, error: await r.text() };
    let error: string | undefined;
    for await (const data of sseData(r.body)) {
      if (data === '[DONE]') continue;
      const j = JSON.parse(data);
      if (j.error) error = j.error.message;
      else if (j.choices?.[0]?.text) times.push(performance.now());
      if (opts.abortAfterTokens !== undefined && times.length >= opts.abortAfterTokens) { ac.abort(); break; }
    }
    return { ok: !error, status: r.status, ttftMs: times.length ? times[0] - t0 : null, itlMs: times.slice(1).map((t, k) => t - times[k]), tokens: times.length, error };
  } catch (e) {
    if (opts.abortAfterTokens !== undefined && ac.signal.aborted) return { ok: true, status: 200, ttftMs: times.length ? times[0] - t0 : null, itlMs: times.slice(1).map((t, k) => t - times[k]), tokens: times.length };
    return { ok: false, status: 0, ttftMs: null, itlMs: [], tokens: times.length, error: (e as Error).message };
  } finally {
    clearTimeout(timer);
  }
}

// Zipf(s) over n items: item k (0-based) with probability ∝ 1/(k+1)^s (S-LoRA's power-law popularity).
export function zipf(n: number, s: number, rand: () => number): () => number {
  const w = Array.from({ length: n }, (_, k) => 1 / (k + 1) ** s);
  const total = w.reduce((a, b) => a + b, 0);
  const cdf: number[] = [];
  let acc = 0;
  for (const x of w) { acc += x / total; cdf.push(acc); }
  return () => { const u = rand(); const k = cdf.findIndex((c) => u < c); return k === -1 ? n - 1 : k; };
}

export async function metricValue(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.split(' ').at(-1)) : NaN;
}

export function latencyRow(name: string, results: StreamStats[], wallMs: number): Record<string, string | number> {
  const ok = results.filter((r) => r.ok);
  const ttft = ok.map((r) => r.ttftMs).filter((x): x is number => x !== null);
  const itl = ok.flatMap((r) => r.itlMs);
  const tokens = ok.reduce((a, r) => a + r.tokens, 0);
  const byStatus = new Map<number, number>();
  for (const r of results) if (!r.ok) byStatus.set(r.status, (byStatus.get(r.status) ?? 0) + 1);
  return {
    scenario: name, requests: results.length, errors: results.length - ok.length,
    error_statuses: [...byStatus].map(([s, n]) => `${s}×${n}`).join(' ') || '-',
    tok_s: (tokens * 1000) / wallMs,
    ttft_p50_ms: percentile(ttft, 50), ttft_p99_ms: percentile(ttft, 99),
    itl_p50_ms: percentile(itl, 50), itl_p99_ms: percentile(itl, 99),
  };
}

export { printTable };
