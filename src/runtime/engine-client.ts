// The main thread's handle on the engine worker: generate(request, signal) → AsyncIterable<TokenEvent>.
// Inference never runs on this thread, so HTTP stays responsive while the model computes.
import { Worker } from 'node:worker_threads';
import { randomUUID } from 'node:crypto';
import { deserializeError, LoraserveError } from './errors.ts';
import type { GenerateRequest, ModelInfo, TokenEvent } from './generate-request.ts';
import type { AdapterOptions, EngineCall, EngineOptions, EngineStats, FromWorker, ToWorker } from './engine-messages.ts';
import type { SchedulerLimits, StepStats } from './scheduler.ts';
import type { LoraAdapter } from '../adapters/lora-adapter.ts';

export const DEFAULT_SCHEDULER: SchedulerLimits = { maxRunning: 32, prefillChunk: 256, kvBudgetBytes: 2 * 1024 ** 3 };
export const DEFAULT_ADAPTERS: AdapterOptions = { loraMode: 'auto', maxLoraRank: 64, hostCacheBytes: 1024 ** 3, mergedCacheBytes: 2 * 1024 ** 3 };

export interface EngineStartOptions {
  runtime: EngineOptions['runtime'];
  scheduler?: Partial<SchedulerLimits>;
  adapters?: Partial<AdapterOptions>;
}

interface Stream {
  push(events: TokenEvent[]): void;
}

export class EngineClient {
  private readonly worker: Worker;
  private readonly streams = new Map<string, Stream>();
  private readonly calls = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private nextCall = 0;
  private exited = false;
  info!: ModelInfo;
  onStep?: (s: StepStats, running: number, waiting: number, kvBytes: number) => void;

  private constructor(worker: Worker) {
    this.worker = worker;
  }

  static async start(opts: EngineStartOptions): Promise<EngineClient> {
    const workerData: EngineOptions = { runtime: opts.runtime, scheduler: { ...DEFAULT_SCHEDULER, ...opts.scheduler }, adapters: { ...DEFAULT_ADAPTERS, ...opts.adapters } };
    const worker = new Worker(new URL('./worker-entry.mjs', import.meta.url), {
      workerData,
      env: { ...process.env },
    });
    const client = new EngineClient(worker);
    await new Promise<void>((resolve, reject) => {
      worker.on('message', (msg: FromWorker) => {
        switch (msg.type) {
          case 'ready': client.info = msg.info; resolve(); break;
          case 'fatal': reject(deserializeError(msg.error)); break;
          case 'events': for (const { id, events } of msg.batch) client.streams.get(id)?.push(events); break;
          case 'step': client.onStep?.(msg.stats, msg.running, msg.waiting, msg.kvBytes); break;
          case 'result': {
            const c = client.calls.get(msg.callId);
            client.calls.delete(msg.callId);
            if (msg.error) c?.reject(deserializeError(msg.error));
            else c?.resolve(msg.value);
            break;
          }
        }
      });
      worker.on('error', (err) => { reject(err); client.failAll(err); });
      worker.on('exit', (code) => {
        client.exited = true;
        const err = new LoraserveError('internal', `engine worker exited with code ${code}`);
        reject(err);
        client.failAll(err);
      });
    });
    return client;
  }

  private post(msg: ToWorker): void {
    this.worker.postMessage(msg);
  }

  private call<T>(call: EngineCall, transfer: ArrayBuffer[] = []): Promise<T> {
    const callId = this.nextCall++;
    return new Promise<T>((resolve, reject) => {
      this.calls.set(callId, { resolve: resolve as (v: unknown) => void, reject });
      this.worker.postMessage({ type: 'call', callId, call } satisfies ToWorker, transfer);
    });
  }

  // Hands a validated adapter to the engine's host cache: its buffers move to the worker (shared
  // memory, warm-buffers.ts, is shared instead).
  putAdapter(adapter: LoraAdapter): Promise<void> {
    const buffers = adapter.targets.flatMap((t) => [t.a.buffer, t.b.buffer, ...(t.magnitude ? [t.magnitude.buffer] : [])]);
    const transfer = buffers.filter((b): b is ArrayBuffer => b instanceof ArrayBuffer);
    return this.call({ op: 'adapter.put', adapter }, [...new Set(transfer)]);
  }

  dropAdapter(version: string): Promise<void> {
    return this.call({ op: 'adapter.drop', version });
  }

  buildMerged(version: string): Promise<number> {
    return this.call({ op: 'merged.build', version });
  }

  hasMerged(version: string): Promise<boolean> {
    return this.call({ op: 'merged.has', version });
  }

  // Runs the engine thread's garbage collector, when node was started with --expose-gc (benchmarks).
  gc(): Promise<void> {
    return this.call({ op: 'gc' });
  }

  stats(): Promise<EngineStats> {
    return this.call({ op: 'stats' });
  }

  private failAll(err: Error): void {
    for (const c of this.calls.values()) c.reject(err);
    this.calls.clear();
    for (const s of this.streams.values()) s.push([{ type: 'error', error: { code: 'internal', message: err.message, param: null, problems: [] } }]);
    this.streams.clear();
  }

  // Events until 'done' or 'error'. Aborting the signal (or breaking out of the loop) cancels the
  // sequence in the worker, which frees its KV cache before the next step.
  async *generate(request: GenerateRequest, signal?: AbortSignal): AsyncGenerator<TokenEvent> {
    const id = randomUUID();
    const queue: TokenEvent[] = [];
    let wake: (() => void) | null = null;
    let finished = false;
    this.streams.set(id, {
      push: (events) => {
        queue.push(...events);
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
    if (this.exited) return;
    const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.post({ type: 'shutdown' });
    const timer = setTimeout(() => void this.worker.terminate(), 10_000);
    await exited;
    clearTimeout(timer);
  }
}
