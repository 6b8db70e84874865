// The engine thread: owns the onnxruntime session (whose run() blocks its thread), the scheduler
// and every sequence. Talks to the main thread with messages only (engine-messages.ts).
import { parentPort, workerData } from 'node:worker_threads';
import { createModelRuntime } from './model-runtime.ts';
import { Scheduler } from './scheduler.ts';
import { Sequence } from './sequence.ts';
import { serializeError } from './errors.ts';
import type { TokenEvent } from './generate-request.ts';
import type { EngineOptions, FromWorker, ToWorker } from './engine-messages.ts';

const port = parentPort!;
const opts = workerData as EngineOptions;

function send(msg: FromWorker): void {
  port.postMessage(msg);
}

async function main(): Promise<void> {
  const rt = await createModelRuntime(opts.runtime);
  let outbox: { id: string; events: TokenEvent[] }[] = [];
  const scheduler = new Scheduler(rt.runner, opts.scheduler, (id, events) => outbox.push({ id, events }));
  scheduler.onStep = (s) => send({ type: 'step', stats: s, running: scheduler.runningCount, waiting: scheduler.waitingCount, kvBytes: scheduler.reservedKvBytes });
  let looping = false;

  const flush = (): void => {
    if (outbox.length) { send({ type: 'events', batch: outbox }); outbox = []; }
  };

  const loop = async (): Promise<void> => {
    if (looping) return;
    looping = true;
    try {
      while (!scheduler.idle) {
        await scheduler.tick();
        flush();
        await new Promise((r) => setImmediate(r)); // let new requests and cancels in between steps
      }
    } finally {
      looping = false;
    }
  };

  port.on('message', (msg: ToWorker) => {
    switch (msg.type) {
      case 'generate': {
        try {
          const seq = new Sequence(msg.id, msg.request, rt.tokenizer, rt.limits);
          scheduler.submit(seq);
          void loop();
        } catch (err) {
          send({ type: 'events', batch: [{ id: msg.id, events: [{ type: 'error', error: serializeError(err) }] }] });
        }
        break;
      }
      case 'cancel':
        scheduler.cancel(msg.id);
        break;
      case 'shutdown':
        process.exit(0);
    }
  });
  send({ type: 'ready', info: rt.info });
}

main().catch((err) => send({ type: 'fatal', error: serializeError(err) }));
