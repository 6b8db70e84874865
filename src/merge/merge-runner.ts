// runMergeOffThread: mergeFiles in a worker thread of its own (merge-worker.ts), so that a merge that
// takes minutes never holds the event loop. It takes the job's input files over (their weights'
// buffers are transferred to the worker). One merge runs at a time (each uses a whole core);
// later ones wait their turn.
import { Worker } from 'node:worker_threads';
import { deserializeError, LoraserveError } from '../runtime/errors.ts';
import type { SerializedError } from '../runtime/errors.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import type { AdapterLimits } from '../adapters/lora-adapter.ts';
import type { MergedFiles, MergeInputFiles, MergeRequest } from './merge-files.ts';

export interface MergeJob {
  inputs: MergeInputFiles[];
  request: MergeRequest;
  model: ModelConfig;
  limits: AdapterLimits;
}

let queue: Promise<unknown> = Promise.resolve();

export function runMergeOffThread(job: MergeJob): Promise<MergedFiles> {
  const run = queue.then(() => runOnce(job), () => runOnce(job));
  queue = run.catch(() => undefined);
  return run;
}

function runOnce(job: MergeJob): Promise<MergedFiles> {
  return new Promise<MergedFiles>((resolve, reject) => {
    // the inputs' weights move to the worker where they own their buffer (the caller reads them no more)
    const owned = job.inputs.map((x) => x.files.weights).filter((w) => w.byteOffset === 0 && w.byteLength === w.buffer.byteLength && w.buffer instanceof ArrayBuffer);
    const worker = new Worker(new URL('./merge-worker-entry.mjs', import.meta.url), { workerData: job, transferList: [...new Set(owned.map((w) => w.buffer as ArrayBuffer))] });
    let settled = false;
    const settle = (f: () => void) => { if (!settled) { settled = true; f(); } void worker.terminate(); };
    worker.once('message', (m: { value?: MergedFiles; error?: SerializedError }) => settle(() => (m.error ? reject(deserializeError(m.error)) : resolve(m.value!))));
    worker.once('error', (err) => settle(() => reject(new LoraserveError('internal', `the merge worker failed: ${err.message}`))));
    worker.once('exit', (code) => settle(() => reject(new LoraserveError('internal', `the merge worker exited (code ${code}) without a result`))));
  });
}
