// startTraining: one training run in a worker thread of its own (train-worker.ts), driven from the
// main thread: pause()/resume() between optimizer steps, cancel() at the next step, callbacks for
// each metrics record and checkpoint, and `done` with the run's report (or its error). The
// worker is the only place the run's onnxruntime session lives; terminate() is the last resort
// when it does not stop by itself.
import { Worker } from 'node:worker_threads';
import { deserializeError, LoraserveError } from '../../runtime/errors.ts';
import type { SerializedError } from '../../runtime/errors.ts';
import type { TrainArgs } from '../train-args.ts';
import type { TrainReport } from '../trainer.ts';
import type { MetricsRecord } from '../metrics-log.ts';

export const CANCEL = 0;
export const PAUSE = 1;

export interface TrainWorkerData {
  args: TrainArgs;
  control: SharedArrayBuffer; // Int32Array [CANCEL, PAUSE]
  nice: number;
}

export type TrainWorkerMessage =
  | { type: 'metrics'; record: MetricsRecord; totalSteps: number; tokens: number }
  | { type: 'checkpoint'; step: number; dir: string }
  | { type: 'paused'; paused: boolean }
  | { type: 'done'; report: TrainReport }
  | { type: 'error'; error: SerializedError; cancelled: boolean };

export interface TrainingCallbacks {
  onMetrics?: (record: MetricsRecord, totalSteps: number, tokens: number) => void;
  onCheckpoint?: (step: number, dir: string) => void;
  onPaused?: (paused: boolean) => void;
}

export interface TrainingHandle {
  done: Promise<TrainReport>;        // rejects with the run's error; a cancelled run rejects with code client_closed
  cancel(): void;
  pause(on: boolean): void;
  terminate(): Promise<void>;
}

export function startTraining(args: TrainArgs, opts: { nice: number }, cb: TrainingCallbacks = {}): TrainingHandle {
  const control = new SharedArrayBuffer(8);
  const flags = new Int32Array(control);
  const data: TrainWorkerData = { args, control, nice: opts.nice };
  const worker = new Worker(new URL('./train-worker-entry.mjs', import.meta.url), { workerData: data });
  const done = new Promise<TrainReport>((resolve, reject) => {
    let settled = false;
    const settle = (f: () => void): void => { if (!settled) { settled = true; f(); } };
    worker.on('message', (m: TrainWorkerMessage) => {
      if (m.type === 'metrics') cb.onMetrics?.(m.record, m.totalSteps, m.tokens);
      else if (m.type === 'checkpoint') cb.onCheckpoint?.(m.step, m.dir);
      else if (m.type === 'paused') cb.onPaused?.(m.paused);
      else if (m.type === 'done') settle(() => resolve(m.report));
      else if (m.type === 'error') settle(() => reject(m.cancelled ? new LoraserveError('client_closed', 'the job was cancelled') : deserializeError(m.error)));
    });
    worker.once('error', (err) => settle(() => reject(new LoraserveError('internal', `the training worker failed: ${err.message}`))));
    worker.once('exit', (code) => settle(() => reject(Atomics.load(flags, CANCEL) !== 0 ? new LoraserveError('client_closed', 'the job was cancelled') : new LoraserveError('internal', `the training worker exited (code ${code}) without a result`))));
  });
  done.catch(() => undefined).finally(() => void worker.terminate());
  return {
    done,
    cancel: () => { Atomics.store(flags, CANCEL, 1); },
    pause: (on) => { Atomics.store(flags, PAUSE, on ? 1 : 0); },
    terminate: async () => { Atomics.store(flags, CANCEL, 1); await worker.terminate(); },
  };
}
