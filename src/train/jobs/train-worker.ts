// The training worker thread: one fine-tuning job's training run (trainer.ts) per thread, with its
// own onnxruntime session and intra-op thread count, off the HTTP thread's event loop and outside
// the serving engine's step loop. workerData is a TrainWorkerData. Control comes through a shared
// Int32Array read before each optimizer step: [CANCEL] ≠ 0 stops the run (it throws, and the
// trainer removes its staging directory), [PAUSE] ≠ 0 holds it between steps. It posts
// { type: 'metrics' | 'checkpoint' | 'done' | 'error', … } (TrainWorkerMessage), then ends.
import { parentPort, workerData } from 'node:worker_threads';
import { setPriority } from 'node:os';
import { Writable } from 'node:stream';
import { serializeError, LoraserveError } from '../../runtime/errors.ts';
import { train } from '../trainer.ts';
import type { TrainWorkerData, TrainWorkerMessage } from './train-runner.ts';
import { CANCEL, PAUSE } from './train-runner.ts';

const port = parentPort!;
const data = workerData as TrainWorkerData;
// serving first: a higher nice value for this thread (Linux: per thread; onnxruntime's pool
// threads, created by this thread afterwards, inherit it)
try { setPriority(0, data.nice); } catch { /* not permitted: normal priority */ }
const control = new Int32Array(data.control);
const post = (m: TrainWorkerMessage): void => port.postMessage(m);
const quiet = new Writable({ write(_chunk, _enc, cb) { cb(); } });

try {
  const report = await train(data.args, {
    stream: quiet,
    spinning: 'off', // beside the serving engine (trainer.ts TrainOptions)
    onMetrics: (record, total, tokens) => post({ type: 'metrics', record, totalSteps: total, tokens }),
    onCheckpoint: (step, dir) => post({ type: 'checkpoint', step, dir }),
    beforeStep: async () => {
      let paused = false;
      while (Atomics.load(control, PAUSE) !== 0 && Atomics.load(control, CANCEL) === 0) {
        if (!paused) { paused = true; post({ type: 'paused', paused: true }); }
        await new Promise((r) => setTimeout(r, 50));
      }
      if (paused) post({ type: 'paused', paused: false });
      if (Atomics.load(control, CANCEL) !== 0) throw new LoraserveError('client_closed', 'the job was cancelled');
    },
  });
  post({ type: 'done', report });
} catch (err) {
  post({ type: 'error', error: serializeError(err), cancelled: Atomics.load(control, CANCEL) !== 0 });
}
