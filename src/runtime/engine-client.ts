// The main thread's handle on the engine worker: generate(request, signal) → AsyncIterable<TokenEvent>.
// Inference never runs on this thread, so HTTP stays responsive while the model computes.
//
// Supervision: if the worker dies (an exit or an uncaught error), every sequence in flight ends at
// once with a 503 `unavailable` error event, pending calls are refused the same way, and a new
// worker is started with the same options (the model is loaded again; adapters come back from
// their directories, warmed by `onRestarted`). Until it is ready, generate() ends at once with the
// same 503, and `state` says 'restarting'. Nothing waits on a dead worker.
//
// The worker's entry module is its creator's choice (EngineStartOptions.entry): the engine thread's
// composition root wires the adapter tiers in (src/engine-thread.ts, started by src/start-engine.ts),
// so this module names no file outside src/runtime.
//
// Flow control: each stream's unread events are bounded. Past PAUSE_AT unread events the worker
// is told to pause the sequence (it keeps its KV but takes no steps); below RESUME_AT it resumes.
import { Worker } from 'node:worker_threads';
import { randomUUID } from 'node:crypto';
import { deserializeError, LoraserveError, serializeError } from './errors.ts';
import type { AdapterRef, GenerateRequest, ModelInfo, TokenEvent } from './generate-request.ts';
import type { AdapterOptions, EngineCall, EngineFault, EngineOptions, EngineStats, FromWorker, ToWorker } from './engine-messages.ts';
import type { SchedulerLimits, StepStats } from './scheduler.ts';
import type { AdapterWeights } from './adapter-source.ts';

export const DEFAULT_SCHEDULER: SchedulerLimits = { maxRunning: 32, prefillChunk: 512, kvBudgetBytes: 2 * 1024 ** 3 };
export const DEFAULT_ADAPTERS: AdapterOptions = { loraMode: 'auto', maxLoraRank: 64, hostCacheBytes: 1024 ** 3, mergedCacheBytes: 2 * 1024 ** 3 };

export const PAUSE_AT = 64;    // unread events of one stream before its sequence is paused
export const RESUME_AT = 16;
const RESTART_BACKOFF_MS = [0, 1000, 2000, 5000, 10_000, 30_000];

export interface EngineStartOptions {
  entry: URL;       // the engine thread's entry module (a file: URL), which runs runEngineWorker (engine-worker.ts)
  runtime: EngineOptions['runtime'];
  scheduler?: Partial<SchedulerLimits>;
  adapters?: Partial<AdapterOptions>;
  faults?: boolean; // tests only: accept injectFault()
}

export type EngineState = 'ready' | 'restarting' | 'closed';

interface Stream {
  push(events: TokenEvent[]): void;
}

const unavailable = (why: string): LoraserveError =>
  new LoraserveError('unavailable', `the engine is not available (${why}); retry shortly`, { retryAfterSeconds: 2 });

export class EngineClient {
  private worker!: Worker;
  private readonly streams = new Map<string, Stream>();
  private readonly calls = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private nextCall = 0;
  private closing = false;
  state: EngineState = 'restarting';
  restarts = 0;
  info!: ModelInfo;
  onStep?: (s: StepStats, running: number, waiting: number, kvBytes: number) => void;
  onRestart?: (reason: string) => void;          // the worker died; a new one is starting
  onRestarted?: () => void;                      // the new worker is ready
  onAdapterFailed?: (name: string, version: string, error: LoraserveError) => void;

  private constructor(private readonly entry: URL, private readonly workerData: EngineOptions) {}

  static async start(opts: EngineStartOptions): Promise<EngineClient> {
    const client = new EngineClient(opts.entry, { runtime: opts.runtime, scheduler: { ...DEFAULT_SCHEDULER, ...opts.scheduler }, adapters: { ...DEFAULT_ADAPTERS, ...opts.adapters }, faults: opts.faults });
    await client.spawn(); // a model that cannot start is fatal at start-up
    return client;
  }

  // A worker, until its 'ready' (resolves) or its start failing (rejects).
  private spawn(): Promise<void> {
    const worker = new Worker(this.entry, { workerData: this.workerData, env: { ...process.env } });
    this.worker = worker;
    return new Promise<void>((resolve, reject) => {
      let ready = false;
      worker.on('message', (msg: FromWorker) => {
        if (msg.type === 'ready') { ready = true; this.info = msg.info; this.state = 'ready'; resolve(); return; }
        if (msg.type === 'fatal') { reject(deserializeError(msg.error)); void worker.terminate(); return; }
        this.onMessage(msg);
      });
      const died = (why: string): void => {
        if (this.worker !== worker) return;
        if (!ready) reject(new LoraserveError('internal', `engine worker failed to start: ${why}`));
        if (this.closing) { this.state = 'closed'; this.failAll(unavailable('shutting down')); return; }
        if (ready) this.restart(why);
      };
      worker.on('error', (err) => died(err.message));
      worker.on('exit', (code) => died(`exited with code ${code}`));
    });
  }

  private onMessage(msg: FromWorker): void {
    switch (msg.type) {
      case 'events': for (const { id, events } of msg.batch) this.streams.get(id)?.push(events); break;
      case 'step': this.onStep?.(msg.stats, msg.running, msg.waiting, msg.kvBytes); break;
      case 'adapter.failed': this.onAdapterFailed?.(msg.name, msg.version, deserializeError(msg.error)); break;
      case 'result': {
        const c = this.calls.get(msg.callId);
        this.calls.delete(msg.callId);
        if (msg.error) c?.reject(deserializeError(msg.error));
        else c?.resolve(msg.value);
        break;
      }
    }
  }

  // The worker died: end everything in flight now, then start a new one (with backoff if it
  // keeps failing to start).
  private restart(why: string): void {
    this.state = 'restarting';
    this.restarts++;
    this.failAll(unavailable(`engine worker ${why}; restarting`));
    this.onRestart?.(why);
    void (async () => {
      for (let attempt = 0; !this.closing; attempt++) {
        await new Promise((r) => setTimeout(r, RESTART_BACKOFF_MS[Math.min(attempt, RESTART_BACKOFF_MS.length - 1)]));
        if (this.closing) return;
        try {
          await this.spawn();
          this.onRestarted?.();
          return;
        } catch { /* try again after the next backoff */ }
      }
    })();
  }

  private post(msg: ToWorker): void {
    if (this.state === 'ready') this.worker.postMessage(msg);
  }

  private call<T>(call: EngineCall, transfer: ArrayBuffer[] = []): Promise<T> {
    if (this.state !== 'ready') return Promise.reject(unavailable(this.state));
    const callId = this.nextCall++;
    return new Promise<T>((resolve, reject) => {
      this.calls.set(callId, { resolve: resolve as (v: unknown) => void, reject });
      this.worker.postMessage({ type: 'call', callId, call } satisfies ToWorker, transfer);
    });
  }

  // Hands a validated adapter to the engine's host cache: its buffers move to the worker
  // (transferred, not copied).
  putAdapter(adapter: AdapterWeights): Promise<void> {
    const buffers = adapter.targets.flatMap((t) => [t.a.buffer, t.b.buffer, ...(t.magnitude ? [t.magnitude.buffer] : []), ...(t.delta ? [t.delta.buffer] : [])]);
    const transfer = buffers.filter((b): b is ArrayBuffer => b instanceof ArrayBuffer);
    return this.call({ op: 'adapter.put', adapter }, [...new Set(transfer)]);
  }

  dropAdapter(version: string): Promise<void> {
    return this.call({ op: 'adapter.drop', version });
  }

  // Starts loading these adapter versions from their directories (after a restart).
  warmAdapters(refs: AdapterRef[]): Promise<void> {
    return this.call({ op: 'adapter.warm', refs });
  }

  buildMerged(version: string): Promise<number> {
    return this.call({ op: 'merged.build', version });
  }

  hasMerged(version: string): Promise<boolean> {
    return this.call({ op: 'merged.has', version });
  }

  // Runs a full garbage collection on the engine thread (collect-garbage.ts; benchmarks measure memory after it).
  gc(): Promise<void> {
    return this.call({ op: 'gc' });
  }

  // The engine's counters; refused after `timeoutMs` if the worker does not answer (a stuck
  // step), so a health check never hangs.
  stats(timeoutMs = 5000): Promise<EngineStats> {
    return withTimeout(this.call<EngineStats>({ op: 'stats' }), timeoutMs, () => unavailable(`no answer within ${timeoutMs} ms`));
  }

  // Tests only (EngineStartOptions.faults): make the worker fail the next step, sequence, or die.
  injectFault(fault: EngineFault): void {
    this.post({ type: 'fault', fault });
  }

  private failAll(err: LoraserveError): void {
    for (const c of this.calls.values()) c.reject(err);
    this.calls.clear();
    const error = serializeError(err);
    for (const s of this.streams.values()) s.push([{ type: 'error', error }]);
    this.streams.clear();
  }

  // Events until 'done' or 'error'. Aborting the signal (or breaking out of the loop) cancels the
  // sequence in the worker, which frees its KV cache before the next step.
  async *generate(request: GenerateRequest, signal?: AbortSignal): AsyncGenerator<TokenEvent> {
    if (this.state !== 'ready') {
      yield { type: 'error', error: serializeError(unavailable(this.state)) };
      return;
    }
    const id = randomUUID();
    const queue: TokenEvent[] = [];
    let wake: (() => void) | null = null;
    let finished = false;
    let paused = false;
    this.streams.set(id, {
      push: (events) => {
        queue.push(...events);
        if (!paused && queue.length > PAUSE_AT) { paused = true; this.post({ type: 'pause', id }); }
        wake?.();
      },
    });
    const onAbort = (): void => { wake?.(); };
    signal?.addEventListener('abort', onAbort);
    this.post({ type: 'generate', id, request });
    try {
      while (true) {
        if (signal?.aborted) return;
        const ev = queue.shift();
        if (!ev) {
          await new Promise<void>((r) => { wake = r; });
          wake = null;
          continue;
        }
        if (paused && queue.length < RESUME_AT) { paused = false; this.post({ type: 'resume', id }); }
        yield ev;
        if (ev.type === 'done' || ev.type === 'error') { finished = true; return; }
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      this.streams.delete(id);
      if (!finished) this.post({ type: 'cancel', id });
    }
  }

  // Graceful: the worker cancels its sequences and exits after the step in flight (terminating it
  // during a session run would abort the whole process); terminate only if it does not within 10 s.
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.state !== 'ready') { this.state = 'closed'; await this.worker.terminate(); return; }
    const worker = this.worker;
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    worker.postMessage({ type: 'shutdown' } satisfies ToWorker);
    const timer = setTimeout(() => void worker.terminate(), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, error: () => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(error()), ms);
    p.then((v) => { clearTimeout(timer); resolve(v); }, (e: unknown) => { clearTimeout(timer); reject(e as Error); });
  });
}
