// The HTTP thread's handle on the prompt worker (prompt-worker.ts): tokenizing, detokenizing and
// chat templates, off the event loop. A text too long to fit in the context is refused here by
// its byte length before it is sent anywhere (prompt-text.ts). Work waiting in the worker is
// bounded in bytes (429 beyond). If the worker dies, what it held fails with a 503 and a new one
// starts.
import { Worker } from 'node:worker_threads';
import { deserializeError, LoraserveError } from '../runtime/errors.ts';
import type { SerializedError } from '../runtime/errors.ts';
import type { ChatMessage } from '../runtime/chat-template.ts';
import { checkPromptBytes } from './prompt-text.ts';
import type { PromptTextOptions } from './prompt-text.ts';

export type PromptJob =
  | { op: 'encode'; texts: string[]; addSpecialTokens: boolean; param: string }
  | { op: 'decode'; prompts: number[][] }
  | { op: 'chat'; messages: ChatMessage[]; addGenerationPrompt: boolean };

export interface PromptPreparer {
  readonly maxPromptBytes: number;
  encode(texts: string[], addSpecialTokens: boolean, param: string): Promise<number[][]>;
  decode(prompts: number[][]): Promise<string[]>;
  renderChat(messages: ChatMessage[], addGenerationPrompt: boolean): Promise<{ text: string; ids: number[] }>;
}

interface Pending { resolve: (v: unknown) => void; reject: (e: Error) => void; bytes: number }

export class PromptWorker implements PromptPreparer {
  private worker!: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private queuedBytes = 0;
  private closed = false;
  maxPromptBytes = 0;
  jobs = 0;            // sent to the worker (tests, diagnostics)

  private constructor(private readonly opts: PromptTextOptions) {}

  static async start(opts: PromptTextOptions): Promise<PromptWorker> {
    const w = new PromptWorker(opts);
    await w.spawn();
    return w;
  }

  // Text waiting to be tokenized: at most 64 of the longest prompts.
  private get maxQueuedBytes(): number {
    return 64 * this.maxPromptBytes;
  }

  private spawn(): Promise<void> {
    const worker = new Worker(new URL('./prompt-worker-entry.mjs', import.meta.url), { workerData: this.opts });
    this.worker = worker;
    worker.unref();
    return new Promise<void>((resolve, reject) => {
      worker.on('message', (msg: { ready?: number; id?: number; value?: unknown; error?: SerializedError }) => {
        if (msg.ready !== undefined) { this.maxPromptBytes = msg.ready; resolve(); return; }
        const p = this.pending.get(msg.id!);
        if (!p) return;
        this.settle(msg.id!);
        if (msg.error) p.reject(deserializeError(msg.error));
        else p.resolve(msg.value);
      });
      const died = (why: string): void => {
        reject(new LoraserveError('internal', `prompt worker failed: ${why}`));
        if (this.worker !== worker || this.closed) return;
        for (const [id, p] of this.pending) { this.settle(id); p.reject(new LoraserveError('unavailable', `the prompt worker ${why}; retry`, { retryAfterSeconds: 1 })); }
        void this.spawn().catch(() => undefined);
      };
      worker.on('error', (e) => died(e.message));
      worker.on('exit', (code) => died(`exited with code ${code}`));
    });
  }

  private settle(id: number): void {
    this.queuedBytes -= this.pending.get(id)?.bytes ?? 0;
    this.pending.delete(id);
  }

  private run<T>(job: PromptJob, bytes: number): Promise<T> {
    if (this.queuedBytes + bytes > this.maxQueuedBytes && this.pending.size > 0) {
      return Promise.reject(new LoraserveError('overloaded', `the server is tokenizing ${this.queuedBytes} bytes of prompts already; retry later`, { retryAfterSeconds: 1 }));
    }
    const id = this.nextId++;
    this.jobs++;
    this.queuedBytes += bytes;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, bytes });
      this.worker.postMessage({ id, job });
    });
  }

  encode(texts: string[], addSpecialTokens: boolean, param: string): Promise<number[][]> {
    texts.forEach((t, i) => checkPromptBytes(t, this.maxPromptBytes, texts.length > 1 ? `${param}[${i}]` : param));
    return this.run({ op: 'encode', texts, addSpecialTokens, param }, texts.reduce((a, t) => a + Buffer.byteLength(t, 'utf8'), 0));
  }

  decode(prompts: number[][]): Promise<string[]> {
    return this.run({ op: 'decode', prompts }, prompts.reduce((a, p) => a + p.length, 0));
  }

  renderChat(messages: ChatMessage[], addGenerationPrompt: boolean): Promise<{ text: string; ids: number[] }> {
    const bytes = messages.reduce((a, m) => a + Buffer.byteLength(m.content, 'utf8') + Buffer.byteLength(m.role, 'utf8'), 0);
    if (bytes > this.maxPromptBytes) throw invalidMessages(bytes, this.maxPromptBytes);
    return this.run({ op: 'chat', messages, addGenerationPrompt }, bytes);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.worker.terminate();
  }
}

function invalidMessages(bytes: number, max: number): LoraserveError {
  return new LoraserveError('invalid_request', `'messages' hold ${bytes} bytes of text; no prompt over ${max} bytes fits in the context (context length × the longest token's bytes)`, { param: 'messages' });
}
