// The merge worker thread: one merge (mergeFiles) per thread, off the HTTP thread's event loop
// (a pruned ΔW type takes seconds per target). workerData is a MergeJob; it posts back
// { value: MergedFiles } (the weights' buffer transferred) or { error: SerializedError }, then ends.
import { parentPort, workerData } from 'node:worker_threads';
import { setPriority } from 'node:os';
import { serializeError } from '../runtime/errors.ts';
import { mergeFiles } from './merge-files.ts';
import type { MergeJob } from './merge-runner.ts';

const port = parentPort!;
try { setPriority(0, 5); } catch { /* not permitted: normal priority */ } // requests first, like the engine

const job = workerData as MergeJob;
try {
  const value = mergeFiles(job.inputs, job.request, job.model, job.limits);
  const w = value.files.weights;
  port.postMessage({ value }, w.byteOffset === 0 && w.byteLength === w.buffer.byteLength ? [w.buffer as ArrayBuffer] : []);
} catch (err) {
  port.postMessage({ error: serializeError(err) });
}
