// The main thread's handle on the engine worker: generate(request, signal) → AsyncIterable<TokenEvent>.
// Inference never runs on this thread, so HTTP stays responsive while the model computes.
import { Worker } from 'node:worker_threads';
import { randomUUID } from 'node:crypto';
import { deserializeError, LoraserveError } from './errors.ts';
import type { GenerateRequest, ModelInfo, TokenEvent } from './generate-request.ts';
import type { EngineOptions, FromWorker, ToWorker } from './engine-messages.ts';
import type { StepStats } from './scheduler.ts';

export const DEFAULT_SCHEDULER = { maxRunning: 32, maxStepTokens: 512, prefillChunk: 256, kvBudgetBytes: 2 * 1024 ** 3 };

interface Stream {
  push(events: TokenEvent[]): void;
}

export class EngineClient {
  private readonly worker: Worker;
  private readonly streams = new Map<string, Stream>();
  info!: ModelInfo;
  onStep?: (s: StepStats, running: number, waiting: number, kvBytes: number) => void;

  private constructor(worker: Worker) {
    this.worker = worker;
  }

  static async start(opts: Omit<EngineOptions, 'scheduler'> & { scheduler?: Partial<EngineOptions['scheduler']> }): Promise<EngineClient> {
    const workerData: EngineOptions = { runtime: opts.runtime, scheduler: { ...DEFAULT_SCHEDULER, ...opts.scheduler } };
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
        }
      });
      worker.on('error', (err) => { reject(err); client.failAll(err); });
      worker.on('exit', (code) => {
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

  private failAll(err: Error): void {
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

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
