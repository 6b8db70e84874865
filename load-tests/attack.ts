// node --import tsx load-tests/attack.ts [--model DIR] [--seconds N]     (or: npm run load-test -- --only attack)
// Bounded attack scenarios against loraserve servers started on 127.0.0.1 (harness.ts). In every
// phase (and alone, first, in a short baseline phase 0) VICTIMS streaming clients (base model and a small adapter) keep streaming normal
// completions; every gap between two consecutive tokens of a victim stream is recorded on the
// client side, and the server's own loraserve_inter_token_latency_seconds histogram (victim series
// only) is read before and after the phase, for the fraction of gaps over 100 ms server-side.
//   1 huge-prompts  2 MB and 1 MB completion prompts, a 2 MB chat message (413 or 400), a 900 KB
//                   prompt (400 by its byte bound), and prompts of real words
//                   at ~0.9 × the server's byte bound (parsed from its 400), which are tokenized for
//                   real and refused by token count: 400s expected, never a 5xx
//   2 reload-churn  a second server with --host-cache-mb 1: rank-64 adapters on all seven targets,
//                   each bigger than the cache, so every request reloads one from disk; 2 clients
//                   loop on them while they are replaced, deleted and uploaded again
//   3 slow-readers  4 raw-TCP streaming completions (n=64, logprobs=20, max_tokens 400, ignore_eos)
//                   and 2 WebSocket responses whose clients stop reading, with
//                   --client-stall-timeout-ms 3000: /health must show paused > 0, then running +
//                   waiting back to 0 within the stall timeout + FREE_SLACK_MS of the phase's end
//                   (victims start no new request then), the slow sockets still open
//   4 path-and-host load_lora_adapter on symbolic links out of an --allow-adapter-dir, a FIFO and a
//                   directory named adapter_config.json (422, quickly), paths outside the allowed
//                   dirs (403 whether they exist or not), '' and NUL paths (400); a rebinding Host
//                   header (403), cross-origin uploads/deletes (403), cross-origin WebSocket (refused)
// The server's RSS (/proc/<pid>/status VmRSS) is sampled every 250 ms throughout. Prints one table
// and writes load-tests/results/attack.json. Exits non-zero on any 5xx, any hang (a request past
// its timeout), a symlink/FIFO load answering 200, a Host/Origin attack not refused, sequences not
// freed after the slow readers, or a peak RSS over PEAK_RSS_BOUND_MB.
// Every loop is bounded in count and in time; traffic goes to 127.0.0.1 only.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import { buildAdapter } from '../scripts/make-test-adapters.ts';
import type { AdapterFilesOnDisk } from '../scripts/make-test-adapters.ts';
import { parseModelConfig } from '../src/runtime/model-config.ts';
import type { ModelConfig } from '../src/runtime/model-config.ts';
import { encodeSafetensors } from '../src/runtime/safetensors.ts';
import { printTable, sseData, startServer } from './harness.ts';
import type { Server } from './harness.ts';

// Peak RSS of any server in any phase. Measured on stories260K (2-core VM, 4 runs): 215–235 MB
// at start, peaks of 300–355 MB (phase 2, the 1 MB-cache server reloading 1.4 MB rank-64
// adapters, and phase 3, 384 queued choices of 400 tokens with top-20 logprobs for slow readers).
// The bound is ~4× that: room for allocator and V8 slack, while a real leak or an unbounded
// buffer (2 MB prompts kept per request, reloaded adapters never freed) still crosses it.
export const PEAK_RSS_BOUND_MB = 1536;
const VICTIMS = 4;              // streaming clients in every phase: even ones base model, odd ones the adapter
const VICTIM_ADAPTER = 'victim';
const SLOW_ADAPTER = 'slow';    // the slow readers' model, so their paused gaps stay out of the victims' ITL series
const GAP_MS = 100;             // an inter-token gap over this counts as a stall
const STALL_MS = 3000;          // --client-stall-timeout-ms for phase 3
// After the stall timeout, how long the server may take to free every slow sequence. A slow request
// is dropped once its socket buffers are full and STALL_MS pass; with fair shares the 6 × 64 slow
// choices fill theirs a few rows at a time, so that takes tens of seconds. What others must not
// see meanwhile is a lock-out: VICTIM_TTFT_BOUND_MS bounds the victims' first tokens in the phase.
const FREE_SLACK_MS = 60_000;
const VICTIM_TTFT_BOUND_MS = 5000;
const REQ_TIMEOUT_MS = 30_000;  // any single non-streamed request; past it, a hang
const LOAD_TIMEOUT_MS = 10_000; // a load_lora_adapter / Host / Origin probe; past it, a hang
const VICTIM_TIMEOUT_MS = 60_000;
const MAX_LOOP_REQUESTS = 400;  // per client loop per phase, whatever the deadline
const RSS_SAMPLE_MS = 250;
const MAX_RSS_SAMPLES = 20_000;
const PROM_LAG_PRECISION_S = 0.01; // prom-client's p99 counts whole 10 ms timer intervals: the lag is the excess (run.ts)

type Row = Record<string, string | number>;
export interface AttackResult { rows: Row[]; failures: string[] }

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const mb = (kb: number): number => kb / 1024;

// ---------- bookkeeping ----------

class Tally {
  readonly statuses = new Map<string, number>();
  readonly fiveXX: string[] = [];
  readonly hangs: string[] = [];
  readonly unexpected: string[] = []; // any status not expected, 5xx included
  readonly refused: string[] = [];    // unexpected, but neither a 5xx nor a hang
  requests = 0;
  // `status` 0 = connection error, -1 = hang (timeout)
  note(status: number, what: string, expected: readonly number[], detail = ''): void {
    this.requests++;
    const key = status === -1 ? 'hang' : status === 0 ? 'conn-error' : String(status);
    this.statuses.set(key, (this.statuses.get(key) ?? 0) + 1);
    const line = `${what}: ${key}${detail ? ` ${detail.slice(0, 200)}` : ''}`;
    if (status >= 500) this.fiveXX.push(line);
    if (status === -1) this.hangs.push(line);
    else if (!expected.includes(status)) {
      this.unexpected.push(line);
      if (status < 500) this.refused.push(line);
    }
  }
  text(): string {
    return [...this.statuses].sort(([a], [b]) => a.localeCompare(b)).map(([s, n]) => `${s}×${n}`).join(' ') || '-';
  }
}

class RssSampler {
  private readonly samples = new Map<number, { t: number; mb: number }[]>();
  private count = 0;
  private readonly timer: NodeJS.Timeout;
  constructor(private readonly pids: () => number[]) {
    this.timer = setInterval(() => this.sample(), RSS_SAMPLE_MS);
  }
  sample(): void {
    for (const pid of this.pids()) {
      if (this.count >= MAX_RSS_SAMPLES) return;
      const v = rssMb(pid);
      if (!Number.isFinite(v)) continue;
      const list = this.samples.get(pid) ?? [];
      list.push({ t: performance.now(), mb: v });
      this.samples.set(pid, list);
      this.count++;
    }
  }
  window(pid: number, t0: number, t1 = Infinity): number[] {
    return (this.samples.get(pid) ?? []).filter((s) => s.t >= t0 && s.t <= t1).map((s) => s.mb);
  }
  peak(): number {
    return Math.max(0, ...[...this.samples.values()].flat().map((s) => s.mb));
  }
  stop(): void { clearInterval(this.timer); }
}

export function rssMb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? mb(Number(m[1])) : NaN;
  } catch {
    return NaN; // the process has exited
  }
}

// ---------- HTTP helpers ----------

interface HttpResult { status: number; body: string; ms: number; headers: http.IncomingHttpHeaders }

// One request with node:http (custom Host/Origin allowed). status -1: no answer within timeoutMs.
export function httpRequest(url: string, opts: { method?: string; path: string; headers?: Record<string, string>; body?: string | Buffer; timeoutMs?: number }): Promise<HttpResult> {
  const u = new URL(url);
  const t0 = performance.now();
  return new Promise((resolve) => {
    let settled = false;
    const done = (r: Omit<HttpResult, 'ms'>): void => { if (!settled) { settled = true; clearTimeout(timer); resolve({ ...r, ms: performance.now() - t0 }); } };
    const headers: Record<string, string | number> = { ...opts.headers };
    if (opts.body !== undefined) headers['content-length'] = Buffer.byteLength(opts.body);
    const req = http.request({ host: u.hostname, port: Number(u.port), method: opts.method ?? 'GET', path: opts.path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (d: Buffer) => { if (size < 1 << 20) { chunks.push(d); size += d.length; } });
      res.on('end', () => done({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), headers: res.headers }));
      res.on('error', (e) => done({ status: 0, body: e.message, headers: {} }));
    });
    const timer = setTimeout(() => { req.destroy(); done({ status: -1, body: `no answer within ${opts.timeoutMs ?? REQ_TIMEOUT_MS} ms`, headers: {} }); }, opts.timeoutMs ?? REQ_TIMEOUT_MS);
    req.on('error', (e) => done({ status: 0, body: e.message, headers: {} }));
    req.end(opts.body);
  });
}

const json = (body: unknown): { headers: Record<string, string>; body: string } => ({ headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

async function scrape(url: string): Promise<string> {
  const r = await httpRequest(url, { path: '/metrics', timeoutMs: REQ_TIMEOUT_MS });
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
  return r.body;
}

function metric(text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.split(' ').at(-1)) : NaN;
}

// Σ over the histogram's series whose adapter label is one of `adapters`: [count ≤ le, count].
function histogram(text: string, name: string, le: string, adapters: string[]): { under: number; total: number } {
  let under = 0;
  let total = 0;
  for (const l of text.split('\n')) {
    if (!l.startsWith(`${name}_bucket{`)) continue;
    const labels = Object.fromEntries([...l.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    if (!adapters.includes(labels.adapter)) continue;
    const v = Number(l.split(' ').at(-1));
    if (labels.le === le) under += v;
    if (labels.le === '+Inf') total += v;
  }
  return { under, total };
}

async function health(url: string): Promise<{ running: number; waiting: number; paused: number } | null> {
  const r = await httpRequest(url, { path: '/health', timeoutMs: 5000 });
  if (r.status !== 200) return null;
  return JSON.parse(r.body) as { running: number; waiting: number; paused: number };
}

// ---------- adapters ----------

function adapterFiles(cfg: ModelConfig, rank: number, seed: number, all: boolean): AdapterFilesOnDisk & { weights: Uint8Array } {
  const f = buildAdapter(cfg, all ? { rank, seed } : { rank, seed, targets: ['q_proj', 'v_proj', 'o_proj'] });
  return { ...f, weights: encodeSafetensors(f.tensors) };
}

function form(name: string, f: { config: Record<string, unknown>; weights: Uint8Array }, alpha?: number): FormData {
  const fd = new FormData();
  fd.append('name', name);
  fd.append('replace', 'true');
  // a new lora_alpha is a new version (the version hashes both files) without rebuilding the weights
  fd.append('adapter_config.json', new Blob([JSON.stringify(alpha === undefined ? f.config : { ...f.config, lora_alpha: alpha })]), 'adapter_config.json');
  fd.append('adapter_model.safetensors', new Blob([f.weights as Uint8Array<ArrayBuffer>]), 'adapter_model.safetensors');
  return fd;
}

// A multipart body as bytes, for node:http (custom headers).
async function multipart(fd: FormData): Promise<{ body: Buffer; contentType: string }> {
  const r = new Request('http://127.0.0.1/', { method: 'POST', body: fd });
  return { body: Buffer.from(await r.arrayBuffer()), contentType: r.headers.get('content-type')! };
}

async function upload(url: string, fd: FormData, tally: Tally, what: string): Promise<number> {
  const { body, contentType } = await multipart(fd);
  const r = await httpRequest(url, { method: 'POST', path: '/v1/adapters', headers: { 'content-type': contentType }, body, timeoutMs: REQ_TIMEOUT_MS });
  tally.note(r.status, what, [200, 201], r.status >= 300 ? r.body : '');
  return r.status;
}

// ---------- victims ----------

interface VictimStats { streams: number; gaps: number[]; ttft: number[]; tally: Tally }

// One streamed completion with logprobs (so every token is its own frame, even one with no text).
async function victimStream(url: string, body: Record<string, unknown>, v: VictimStats): Promise<void> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), VICTIM_TIMEOUT_MS);
  const t0 = performance.now();
  let last = -1;
  try {
    const r = await fetch(`${url}/v1/completions`, { method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }) });
    if (!r.ok || !r.body) { v.tally.note(r.status, `victim ${String(body.model)}`, [200], await r.text()); return; }
    let error = '';
    for await (const data of sseData(r.body)) {
      if (data === '[DONE]') continue;
      const j = JSON.parse(data) as { error?: { message: string }; choices?: { finish_reason: string | null }[] };
      if (j.error) error = j.error.message;
      else if (j.choices?.[0] && j.choices[0].finish_reason === null) {
        const now = performance.now();
        if (last < 0) v.ttft.push(now - t0); else v.gaps.push(now - last);
        last = now;
      }
    }
    v.streams++;
    v.tally.note(error ? 0 : 200, `victim ${String(body.model)}`, [200], error);
  } catch (e) {
    v.tally.note(ac.signal.aborted ? -1 : 0, `victim ${String(body.model)}`, [200], (e as Error).message);
  } finally {
    clearTimeout(timer);
  }
}

async function runVictims(url: string, deadline: number, baseModel: string): Promise<VictimStats> {
  const v: VictimStats = { streams: 0, gaps: [], ttft: [], tally: new Tally() };
  let seed = 1;
  await Promise.all(Array.from({ length: VICTIMS }, async (_, c) => {
    for (let k = 0; k < MAX_LOOP_REQUESTS && performance.now() < deadline; k++) {
      await victimStream(url, { model: c % 2 === 0 ? baseModel : VICTIM_ADAPTER, prompt: 'Once upon a time', max_tokens: 48, ignore_eos: true, temperature: 0.8, seed: seed++, logprobs: 0 }, v);
    }
  }));
  return v;
}

// ---------- phases ----------

interface PhaseCtx { server: Server; baseModel: string; seconds: number; rss: RssSampler; failures: string[]; details: Record<string, unknown>[] }

interface PhaseOut { tally: Tally; extra: Record<string, string | number>; failures: string[]; detail?: Record<string, unknown> }

// Runs `attack` and the victims until the deadline; reads the server's metrics around them.
async function phase(name: string, ctx: PhaseCtx, attack: (deadline: number) => Promise<PhaseOut>): Promise<Row> {
  const { server } = ctx;
  const pid = server.proc.pid!;
  const before = await scrape(server.url); // also resets prom-client's event-loop delay histogram
  const t0 = performance.now();
  const deadline = t0 + ctx.seconds * 1000;
  const rss0 = rssMb(pid);
  const [victims, out] = await Promise.all([runVictims(server.url, deadline, ctx.baseModel), attack(deadline)]);
  const afterText = await scrape(server.url);
  const t1 = performance.now();
  const rssEnd = rssMb(pid);
  const lagMs = Math.max(0, metric(afterText, 'loraserve_nodejs_eventloop_lag_p99_seconds') - PROM_LAG_PRECISION_S) * 1000;
  const series = ['base', VICTIM_ADAPTER]; // the victims' own series (the base model's label is 'base')
  const h0 = histogram(before, 'loraserve_inter_token_latency_seconds', '0.1', series);
  const h1 = histogram(afterText, 'loraserve_inter_token_latency_seconds', '0.1', series);
  const itlCount = h1.total - h0.total;
  const itlOver = itlCount - (h1.under - h0.under);
  const samples = ctx.rss.window(pid, t0, t1);
  const peak = Math.max(rss0, rssEnd, ...samples);
  const gapsOver = victims.gaps.filter((g) => g > GAP_MS).length;
  const t = out.tally;
  for (const f of out.failures) ctx.failures.push(`${name}: ${f}`);
  for (const x of t.refused) ctx.failures.push(`${name}: unexpected status: ${x}`);
  ctx.details.push({ phase: name, unexpected: t.unexpected.slice(0, 50), victimUnexpected: victims.tally.unexpected.slice(0, 50), victimGapsOver100Ms: victims.gaps.filter((g) => g > GAP_MS).map((g) => Math.round(g)).slice(0, 200), ...out.detail });
  for (const x of [...t.fiveXX, ...victims.tally.fiveXX]) ctx.failures.push(`${name}: 5xx: ${x}`);
  for (const x of [...t.hangs, ...victims.tally.hangs]) ctx.failures.push(`${name}: hang: ${x}`);
  for (const x of victims.tally.refused) ctx.failures.push(`${name}: victim failed: ${x}`);
  return {
    phase: name,
    seconds: (t1 - t0) / 1000,
    attack_requests: t.requests,
    attack_statuses: t.text(),
    unexpected: t.unexpected.length,
    '5xx': t.fiveXX.length + victims.tally.fiveXX.length,
    hangs: t.hangs.length + victims.tally.hangs.length,
    victim_streams: victims.streams,
    victim_ttft_max_ms: victims.ttft.length ? Math.max(...victims.ttft) : NaN,
    victim_gap_max_ms: victims.gaps.length ? Math.max(...victims.gaps) : NaN,
    victim_gaps_over_100ms: `${gapsOver}/${victims.gaps.length}`,
    server_itl_over_100ms: itlCount > 0 ? `${((100 * itlOver) / itlCount).toFixed(2)}% of ${itlCount}` : '-',
    loop_lag_p99_ms: lagMs,
    rss_start_mb: rss0,
    rss_peak_mb: peak,
    rss_end_mb: rssEnd,
    ...out.extra,
  };
}

// 1. huge prompts
function words(bytes: number): string {
  const text = 'Once upon a time there was a little girl named Lily. She loved to play outside in the park with her dog. One day she saw a big red ball under a tree and she wanted to play with it. ';
  const s = text.repeat(Math.ceil(bytes / text.length) + 1).slice(0, bytes);
  return s.slice(0, s.lastIndexOf(' '));
}

async function hugePrompts(ctx: PhaseCtx, deadline: number): Promise<PhaseOut> {
  const tally = new Tally();
  const failures: string[] = [];
  const url = ctx.server.url;
  const big2 = 'tell me a story '.repeat(2 * 1024 * 1024 / 16);
  const big1 = big2.slice(0, 1024 * 1024);
  const big900k = big2.slice(0, 900 * 1024);
  // bodies over the largest servable request are a 413 before they are read; a prompt under that
  // but over the byte bound is a 400 that states the bound
  const probe = await httpRequest(url, { method: 'POST', path: '/v1/completions', ...json({ model: ctx.baseModel, prompt: big900k, max_tokens: 8 }) });
  tally.note(probe.status, 'completion 900 KB', [400], probe.status === 400 ? '' : probe.body);
  const m = /no (?:text|prompt) over (\d+) bytes/.exec(probe.body);
  if (!m) failures.push(`the 400 for a 900 KB prompt does not state the byte bound: ${probe.body.slice(0, 200)}`);
  const bound = m ? Number(m[1]) : 8192;
  const near = words(Math.floor(0.9 * bound));
  const bodies: { what: string; path: string; body: string; expect: number[] }[] = [
    // 0 (conn-error): the server answered 413 from the content-length and closed while we still wrote
    { what: 'completion 2 MB', path: '/v1/completions', body: JSON.stringify({ model: ctx.baseModel, prompt: big2, max_tokens: 8 }), expect: [400, 413, 0] },
    { what: 'completion 1 MB', path: '/v1/completions', body: JSON.stringify({ model: VICTIM_ADAPTER, prompt: big1, max_tokens: 8 }), expect: [400, 413, 0] },
    { what: 'chat 2 MB', path: '/v1/chat/completions', body: JSON.stringify({ model: ctx.baseModel, messages: [{ role: 'user', content: big2 }], max_tokens: 8 }), expect: [400, 413, 0] },
    { what: 'completion 900 KB', path: '/v1/completions', body: JSON.stringify({ model: VICTIM_ADAPTER, prompt: big900k, max_tokens: 8 }), expect: [400] },
    { what: `completion 0.9×${bound} B of words`, path: '/v1/completions', body: JSON.stringify({ model: ctx.baseModel, prompt: near, max_tokens: 8 }), expect: [400] },
    { what: `chat 0.9×${bound} B of words`, path: '/v1/chat/completions', body: JSON.stringify({ model: VICTIM_ADAPTER, messages: [{ role: 'user', content: near }], max_tokens: 8 }), expect: [400] },
    { what: `completion 4 × 0.9×${bound} B`, path: '/v1/completions', body: JSON.stringify({ model: ctx.baseModel, prompt: [near, near, near, near], max_tokens: 8 }), expect: [400] },
  ];
  let maxMs = 0;
  let k = 0;
  await Promise.all([0, 1].map(async (c) => {
    for (let i = 0; i < MAX_LOOP_REQUESTS && performance.now() < deadline; i++) {
      const b = bodies[(k++ + c) % bodies.length];
      const r = await httpRequest(url, { method: 'POST', path: b.path, headers: { 'content-type': 'application/json' }, body: b.body });
      maxMs = Math.max(maxMs, r.ms);
      tally.note(r.status, b.what, b.expect, b.expect.includes(r.status) ? '' : r.body);
    }
  }));
  return { tally, failures, extra: { notes: `byte bound ${bound} B; slowest refusal ${maxMs.toFixed(0)} ms` } };
}

// 2. reload churn on a server with a 1 MB host cache
async function reloadChurn(ctx: PhaseCtx, deadline: number, files: ReturnType<typeof adapterFiles>[], names: string[]): Promise<PhaseOut> {
  const tally = new Tally();
  const url = ctx.server.url;
  const deleted = new Set<string>();
  let ops = 0;
  let served = 0;
  const clients = [0, 1].map(async (c) => {
    for (let i = 0; i < MAX_LOOP_REQUESTS && performance.now() < deadline; i++) {
      const name = names[(i + c) % names.length];
      const r = await httpRequest(url, { method: 'POST', path: '/v1/completions', ...json({ model: name, prompt: 'Once upon a time', max_tokens: 8, temperature: 0 }) });
      // a request racing a delete: 404 once it is gone; 503 + Retry-After while the delete waits
      // for requests in flight (registry.ts, documented there): both expected here, not counted as 5xx
      const unloading = r.status === 503 && r.headers['retry-after'] !== undefined && /is being unloaded/.test(r.body);
      if (unloading) { tally.statuses.set('503-unloading', (tally.statuses.get('503-unloading') ?? 0) + 1); tally.requests++; continue; }
      if (r.status === 200) served++;
      tally.note(r.status, `completion on ${name}`, [200, 404], r.status === 200 ? '' : r.body);
    }
  });
  const churn = (async () => {
    for (let k = 0; k < 100 && performance.now() < deadline; k++) {
      const name = names[k % names.length];
      const f = files[k % files.length];
      if (deleted.has(name)) {
        await upload(url, form(name, f, 64 + k), tally, `re-upload ${name}`);
        deleted.delete(name);
      } else if (k % 2 === 0) {
        await upload(url, form(name, f, 64 + k), tally, `replace ${name}`);
      } else {
        deleted.add(name);
        const r = await httpRequest(url, { method: 'DELETE', path: `/v1/adapters/${name}` });
        tally.note(r.status, `delete ${name}`, [200, 204, 409], r.status >= 300 ? r.body : '');
        if (r.status === 409) deleted.delete(name);
      }
      ops++;
      await sleep(150);
    }
  })();
  await Promise.all([...clients, churn]);
  for (const name of names) if (deleted.has(name)) await upload(url, form(name, files[0]), tally, `restore ${name}`);
  return { tally, failures: [], extra: { notes: `${ops} replace/delete/upload ops, ${served} completions on churned adapters` } };
}

// 3. slow readers: each writes its request and never reads a byte of the answer
interface Slow { close(): void; opened: boolean }

function slowHttp(url: string, body: Record<string, unknown>): Promise<Slow> {
  const u = new URL(url);
  const text = JSON.stringify({ ...body, stream: true });
  return new Promise((resolve) => {
    const sock = net.connect({ host: u.hostname, port: Number(u.port) });
    const close = (): void => { sock.destroy(); };
    const timer = setTimeout(() => resolve({ close, opened: false }), LOAD_TIMEOUT_MS);
    sock.on('error', () => undefined); // the server dropping us is expected
    sock.on('connect', () => {
      sock.write(`POST /v1/completions HTTP/1.1\r\nHost: ${u.host}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\n\r\n${text}`);
      sock.pause();
      clearTimeout(timer);
      resolve({ close, opened: true });
    });
  });
}

function slowWebSocket(url: string, body: Record<string, unknown>): Promise<Slow> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/v1/stream`);
    const close = (): void => { ws.terminate(); };
    const timer = setTimeout(() => resolve({ close, opened: false }), LOAD_TIMEOUT_MS);
    ws.on('error', () => undefined);
    ws.on('open', () => {
      ws.send(JSON.stringify({ type: 'response.create', response_id: 'r1', ...body }));
      (ws as unknown as { _socket: net.Socket })._socket.pause();
      clearTimeout(timer);
      resolve({ close, opened: true });
    });
  });
}

// After the deadline (victims start no new request), running + waiting must reach 0 within
// STALL_MS + FREE_SLACK_MS while the slow sockets are still open; then they are closed.
async function slowReaders(ctx: PhaseCtx, deadline: number): Promise<PhaseOut> {
  const tally = new Tally();
  const failures: string[] = [];
  const url = ctx.server.url;
  const body = { model: SLOW_ADAPTER, prompt: 'Once upon a time', n: 64, logprobs: 20, max_tokens: 400, ignore_eos: true, temperature: 1 };
  const t0 = performance.now();
  const slow = await Promise.all([
    ...Array.from({ length: 4 }, () => slowHttp(url, body)),
    ...Array.from({ length: 2 }, () => slowWebSocket(url, body)),
  ]);
  slow.forEach((s, i) => tally.note(s.opened ? (i < 4 ? 200 : 101) : -1, i < 4 ? 'slow SSE reader sent' : 'slow WebSocket reader sent', [i < 4 ? 200 : 101]));
  let pausedPeak = 0;
  let busyPeak = 0;
  let firstPaused = NaN;
  let left = -1;
  let freedAt = NaN;
  let tDeadline = NaN;
  let starved = 0; // samples where every running row is paused while others wait for one
  const timeline: { t: number; running: number; waiting: number; paused: number }[] = [];
  try {
    for (let i = 0; i < 5000; i++) {
      const now = performance.now();
      const h = await health(url);
      if (h) {
        pausedPeak = Math.max(pausedPeak, h.paused);
        busyPeak = Math.max(busyPeak, h.running + h.waiting);
        if (h.paused > 0 && Number.isNaN(firstPaused)) firstPaused = now - t0;
        left = h.running + h.waiting;
        if (h.running > 0 && h.paused >= h.running && h.waiting > 0) starved++;
        if (i % 5 === 0 && timeline.length < 400) timeline.push({ t: Math.round(now - t0), running: h.running, waiting: h.waiting, paused: h.paused });
      }
      if (now >= deadline) {
        if (Number.isNaN(tDeadline)) tDeadline = now;
        if (left === 0) { freedAt = now - t0; break; }
        if (now - tDeadline > STALL_MS + FREE_SLACK_MS) break;
      }
      await sleep(100);
    }
  } finally {
    for (const s of slow) s.close();
  }
  if (pausedPeak === 0) failures.push('/health never showed a paused sequence');
  if (Number.isNaN(freedAt)) failures.push(`${left} sequences still running or waiting ${STALL_MS + FREE_SLACK_MS} ms after the phase's deadline (stall timeout ${STALL_MS} ms), slow sockets still open; ${((performance.now() - t0) / 1000).toFixed(1)} s after the slow readers arrived`);
  const notes = `${slow.length} slow readers × 64 choices; busy peak ${busyPeak}, paused peak ${pausedPeak}${Number.isNaN(firstPaused) ? '' : ` (first at ${(firstPaused / 1000).toFixed(1)} s)`}; ${starved} /health samples with every running row paused and others waiting; ` +
    (Number.isNaN(freedAt) ? `NOT freed: ${left} left ${STALL_MS + FREE_SLACK_MS} ms after the deadline` : `all freed ${(freedAt / 1000).toFixed(1)} s after the slow readers arrived`);
  return { tally, failures, extra: { notes }, detail: { healthTimeline: timeline } };
}

// 4. symbolic links, FIFOs, paths and Host/Origin
async function pathAndHost(ctx: PhaseCtx, allowDir: string, outsideDir: string, secret: string, realAdapter: { config: Record<string, unknown>; weights: Uint8Array }): Promise<PhaseOut> {
  const tally = new Tally();
  const failures: string[] = [];
  const url = ctx.server.url;
  const u = new URL(url);
  const hostname = (() => { try { return readFileSync('/etc/hostname', 'utf8').trim(); } catch { return ''; } })();
  let slowest = 0;
  const load = async (what: string, path: unknown, expected: number[], mustNotBe200 = true): Promise<void> => {
    const r = await httpRequest(url, { method: 'POST', path: '/v1/load_lora_adapter', ...json({ lora_name: `probe-${what.replace(/\W+/g, '-')}`, lora_path: path }), timeoutMs: LOAD_TIMEOUT_MS });
    slowest = Math.max(slowest, r.ms);
    tally.note(r.status, `load_lora_adapter ${what}`, expected, expected.includes(r.status) ? '' : r.body);
    if (mustNotBe200 && r.status === 200) failures.push(`load_lora_adapter ${what} answered 200`);
    if (r.body.includes(secret) || (hostname.length >= 6 && r.body.includes(hostname))) failures.push(`load_lora_adapter ${what}: the response quotes a file's content`);
  };
  const dir = (n: string) => join(allowDir, n);
  // control: a real adapter inside the allowed dir loads
  await load('control (real adapter inside)', dir('ok'), [200], false);
  await load('files linked to an adapter outside', dir('link-files'), [422]);
  await load('config linked to /etc/hostname', dir('link-hostname'), [422]);
  await load('config linked to a secret outside', dir('link-secret'), [422]);
  await load('config is a FIFO', dir('fifo-config'), [422]);
  await load('weights are a FIFO', dir('fifo-weights'), [422]);
  await load('config is a directory', dir('dir-config'), [422]);
  await load('dir linked to an adapter outside', dir('link-dir'), [403]);
  await load('dir linked to /etc', dir('link-etc'), [403]);
  await load('missing dir inside', dir('missing'), [404]);
  await load('outside, exists', join(outsideDir, 'real'), [403]);
  await load('outside, /etc', '/etc', [403]);
  await load('outside, missing', join(outsideDir, 'no-such-dir'), [403]);
  await load('outside via ..', `${allowDir}/../${outsideDir.split('/').at(-1)}/real`, [403]);
  await load('empty path', '', [400]);
  await load('NUL in path', `${dir('ok')}\0/etc`, [400]);
  await load('path is a number', 42, [400]);
  const unload = await httpRequest(url, { method: 'POST', path: '/v1/unload_lora_adapter', ...json({ lora_name: 'probe-control-real-adapter-inside-' }), timeoutMs: LOAD_TIMEOUT_MS });
  tally.note(unload.status, 'unload control', [200], unload.status === 200 ? '' : unload.body);

  // Host and Origin
  const evilHost = 'rebind.evil.example';
  const refused = async (what: string, r: HttpResult): Promise<void> => {
    tally.note(r.status, what, [403], r.status === 403 ? '' : r.body);
    if (r.status !== 403 && r.status !== -1) failures.push(`${what} not refused: ${r.status}`);
  };
  const probe = (o: { method?: string; path: string; headers: Record<string, string>; body?: string | Buffer }) => httpRequest(url, { ...o, timeoutMs: LOAD_TIMEOUT_MS });
  await refused('Host rebind: GET /v1/models', await probe({ path: '/v1/models', headers: { host: evilHost } }));
  await refused('Host rebind: GET /metrics', await probe({ path: '/metrics', headers: { host: `${evilHost}:${u.port}` } }));
  await refused('Host rebind: GET /v1/adapters', await probe({ path: '/v1/adapters', headers: { host: evilHost } }));
  await refused('Host rebind: POST /v1/completions', await probe({ method: 'POST', path: '/v1/completions', headers: { host: evilHost, 'content-type': 'application/json' }, body: JSON.stringify({ model: ctx.baseModel, prompt: 'Once', max_tokens: 4 }) }));
  const up = await multipart(form('evil-upload', realAdapter));
  await refused('Host rebind: multipart upload', await probe({ method: 'POST', path: '/v1/adapters', headers: { host: evilHost, 'content-type': up.contentType }, body: up.body }));
  const up2 = await multipart(form('evil-upload', realAdapter));
  await refused('Origin evil: multipart upload', await probe({ method: 'POST', path: '/v1/adapters', headers: { origin: 'https://evil.example', 'content-type': up2.contentType }, body: up2.body }));
  await refused('Origin evil: load_lora_adapter', await probe({ method: 'POST', path: '/v1/load_lora_adapter', headers: { origin: 'https://evil.example', 'content-type': 'application/json' }, body: JSON.stringify({ lora_name: 'evil-load', lora_path: dir('ok') }) }));
  await refused('Origin evil: DELETE victim adapter', await probe({ method: 'DELETE', path: `/v1/adapters/${VICTIM_ADAPTER}`, headers: { origin: 'https://evil.example' } }));
  await refused('Origin null: POST /v1/completions', await probe({ method: 'POST', path: '/v1/completions', headers: { origin: 'null', 'content-type': 'application/json' }, body: JSON.stringify({ model: ctx.baseModel, prompt: 'Once', max_tokens: 4 }) }));
  for (const name of ['evil-upload', 'evil-load']) {
    const r = await probe({ path: `/v1/adapters/${name}`, headers: {} });
    tally.note(r.status, `GET /v1/adapters/${name} after refused attacks`, [404]);
    if (r.status !== 404) failures.push(`adapter ${name} exists after a refused cross-origin/rebinding request (${r.status})`);
  }
  const victim = await probe({ path: `/v1/adapters/${VICTIM_ADAPTER}`, headers: {} });
  tally.note(victim.status, 'victim adapter still there', [200]);
  // same-origin control: a browser page served by this server may POST
  const same = await probe({ method: 'POST', path: '/v1/completions', headers: { origin: url, 'content-type': 'application/json' }, body: JSON.stringify({ model: ctx.baseModel, prompt: 'Once', max_tokens: 4 }) });
  tally.note(same.status, 'same-origin POST (control)', [200], same.status === 200 ? '' : same.body);
  const wsRefused = (what: string, opts: WebSocket.ClientOptions): Promise<void> => new Promise((resolve) => {
    const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/v1/stream`, opts);
    let settled = false;
    const finish = (status: number, opened: boolean): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      ws.terminate();
      tally.note(status, what, [403]);
      if (opened) failures.push(`${what} was accepted`);
      resolve();
    };
    const timer = setTimeout(() => finish(-1, false), LOAD_TIMEOUT_MS);
    ws.on('unexpected-response', (_req, res) => { res.resume(); finish(res.statusCode ?? 0, false); });
    ws.on('open', () => finish(101, true));
    ws.on('error', () => finish(0, false));
  });
  await wsRefused('cross-origin WebSocket upgrade', { origin: 'https://evil.example' });
  await wsRefused('WebSocket upgrade with a rebinding Host', { headers: { host: evilHost } });
  return { tally, failures, extra: { notes: `slowest load_lora_adapter ${slowest.toFixed(0)} ms` } };
}

function layoutAdapterDirs(root: string, real: { config: Record<string, unknown>; weights: Uint8Array }, secret: string): { allowDir: string; outsideDir: string } {
  const allowDir = join(root, 'allowed');
  const outsideDir = join(root, 'outside');
  const write = (d: string, cfg = true, weights = true): void => {
    mkdirSync(d, { recursive: true });
    if (cfg) writeFileSync(join(d, 'adapter_config.json'), JSON.stringify(real.config));
    if (weights) writeFileSync(join(d, 'adapter_model.safetensors'), real.weights);
  };
  write(join(outsideDir, 'real'));
  writeFileSync(join(outsideDir, 'secret.json'), JSON.stringify({ peft_type: 'LORA', r: 8, note: secret }));
  write(join(allowDir, 'ok'));
  mkdirSync(join(allowDir, 'link-files'));
  symlinkSync(join(outsideDir, 'real', 'adapter_config.json'), join(allowDir, 'link-files', 'adapter_config.json'));
  symlinkSync(join(outsideDir, 'real', 'adapter_model.safetensors'), join(allowDir, 'link-files', 'adapter_model.safetensors'));
  write(join(allowDir, 'link-hostname'), false);
  symlinkSync('/etc/hostname', join(allowDir, 'link-hostname', 'adapter_config.json'));
  write(join(allowDir, 'link-secret'), false);
  symlinkSync(join(outsideDir, 'secret.json'), join(allowDir, 'link-secret', 'adapter_config.json'));
  write(join(allowDir, 'fifo-config'), false);
  execFileSync('mkfifo', [join(allowDir, 'fifo-config', 'adapter_config.json')]);
  write(join(allowDir, 'fifo-weights'), true, false);
  execFileSync('mkfifo', [join(allowDir, 'fifo-weights', 'adapter_model.safetensors')]);
  write(join(allowDir, 'dir-config'), false);
  mkdirSync(join(allowDir, 'dir-config', 'adapter_config.json'));
  symlinkSync(join(outsideDir, 'real'), join(allowDir, 'link-dir'));
  symlinkSync('/etc', join(allowDir, 'link-etc'));
  return { allowDir, outsideDir };
}

// ---------- the run ----------

export async function runAttack(opts: { model: string; seconds: number }): Promise<AttackResult> {
  const cfg = parseModelConfig(JSON.parse(readFileSync(join(opts.model, 'config.json'), 'utf8')));
  const baseModel = opts.model.split('/').filter(Boolean).at(-1)!;
  const rows: Row[] = [];
  const failures: string[] = [];
  const details: Record<string, unknown>[] = [];
  const root = mkdtempSync(join(tmpdir(), 'loraserve-attack-'));
  const secret = `SECRET-${randomBytes(12).toString('hex')}`;
  const small = adapterFiles(cfg, 8, 11, false);
  const { allowDir, outsideDir } = layoutAdapterDirs(root, small, secret);
  const servers: Server[] = [];
  const rss = new RssSampler(() => servers.filter((s) => s.proc.exitCode === null && s.proc.pid !== undefined).map((s) => s.proc.pid!));
  const setup = new Tally();
  try {
    const main = await startServer(opts.model, ['--client-stall-timeout-ms', String(STALL_MS), '--allow-adapter-dir', allowDir, '--max-queue', '1024']);
    servers.push(main);
    for (const name of [VICTIM_ADAPTER, SLOW_ADAPTER]) await upload(main.url, form(name, small), setup, `upload ${name}`);
    const ctx = (server: Server): PhaseCtx => ({ server, baseModel, seconds: opts.seconds, rss, failures, details });

    // 0: the victims alone, for reference (this VM is shared: its noise shows here)
    rows.push(await phase('0 baseline (no attack)', { ...ctx(main), seconds: Math.min(opts.seconds, 6) }, async () => ({ tally: new Tally(), failures: [], extra: { notes: 'victims only' } })));
    rows.push(await phase('1 huge prompts', ctx(main), (deadline) => hugePrompts(ctx(main), deadline)));

    // 2: a second server with a 1 MB host cache; the main one idles meanwhile
    const tiny = await startServer(opts.model, ['--host-cache-mb', '1', '--max-queue', '1024']);
    servers.push(tiny);
    try {
      await upload(tiny.url, form(VICTIM_ADAPTER, small), setup, `upload ${VICTIM_ADAPTER}`);
      const big = [1, 2, 3].map((seed) => adapterFiles(cfg, 64, 100 + seed, true));
      const names = ['churn-0', 'churn-1', 'churn-2'];
      for (let i = 0; i < names.length; i++) await upload(tiny.url, form(names[i], big[i]), setup, `upload ${names[i]}`);
      const loads0 = metric(await scrape(tiny.url), 'loraserve_adapter_host_cache_loads_total');
      const row = await phase('2 reload churn (1 MB cache)', ctx(tiny), (deadline) => reloadChurn(ctx(tiny), deadline, big, names));
      const loads1 = metric(await scrape(tiny.url), 'loraserve_adapter_host_cache_loads_total');
      row.notes = `${row.notes}; rank-64 adapter ${(big[0].weights.length / 1024 / 1024).toFixed(2)} MB; ${loads1 - loads0} host-cache loads`;
      rows.push(row);
    } finally {
      await tiny.stop();
    }

    // 3: slow readers on the main server (stall timeout STALL_MS)
    const slowRow = await phase('3 slow readers', ctx(main), (deadline) => slowReaders(ctx(main), deadline));
    rows.push(slowRow);
    if (Number(slowRow.victim_ttft_max_ms) > VICTIM_TTFT_BOUND_MS) failures.push(`3 slow readers: a victim waited ${Number(slowRow.victim_ttft_max_ms).toFixed(0)} ms for its first token (bound ${VICTIM_TTFT_BOUND_MS} ms): slow readers lock others out`);

    // 4: paths and Host/Origin, one pass (each probe with its own timeout); the victims stream for the phase
    rows.push(await phase('4 symlinks, paths, Host/Origin', ctx(main), () => pathAndHost(ctx(main), allowDir, outsideDir, secret, small)));
    for (const x of setup.fiveXX) failures.push(`setup: 5xx: ${x}`);
    for (const x of setup.unexpected) failures.push(`setup: ${x}`);
  } finally {
    rss.sample();
    rss.stop();
    for (const s of servers) {
      if (s.proc.exitCode === null && s.proc.signalCode === null) await s.stop();
      rmSync(s.adapters, { recursive: true, force: true });
    }
    rmSync(root, { recursive: true, force: true });
  }
  const peak = rss.peak();
  if (peak > PEAK_RSS_BOUND_MB) failures.push(`peak RSS ${peak.toFixed(0)} MB over the bound of ${PEAK_RSS_BOUND_MB} MB`);
  const lagMax = Math.max(...rows.map((r) => Number(r.loop_lag_p99_ms)));
  printTable(`attack scenarios (${VICTIMS} victim streams per phase; server-side ITL: victim series only)`, rows.map(({ notes: _n, ...r }) => r));
  for (const r of rows) console.log(`  ${r.phase}: ${r.notes ?? ''}`);
  console.log(`\nacross phases: event-loop lag p99 max ${lagMax.toFixed(1)} ms, peak RSS ${peak.toFixed(0)} MB (bound ${PEAK_RSS_BOUND_MB} MB), 5xx ${rows.reduce((a, r) => a + Number(r['5xx']), 0)}`);
  const dir = fileURLToPath(new URL('./results/', import.meta.url));
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'attack.json'), JSON.stringify({ date: new Date().toISOString(), model: baseModel, seconds: opts.seconds, peakRssMb: peak, peakRssBoundMb: PEAK_RSS_BOUND_MB, eventLoopLagP99MaxMs: lagMax, rows, failures, details }, null, 2));
  return { rows, failures };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({ options: {
    model: { type: 'string', default: fileURLToPath(new URL('../../shared/fixtures/stories260K', import.meta.url)) },
    seconds: { type: 'string', default: '10' },
  } });
  const seconds = Number(values.seconds);
  if (!Number.isFinite(seconds) || seconds <= 0 || seconds > 600) throw new Error('--seconds must be in (0, 600]');
  const { failures } = await runAttack({ model: values.model!, seconds });
  if (failures.length) {
    console.error(`\nFAILED:\n${[...new Set(failures)].slice(0, 40).join('\n')}`);
    process.exit(1);
  }
  console.log('\nattack load test passed');
}
