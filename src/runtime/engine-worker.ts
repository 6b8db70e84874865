// The engine thread's loop: owns the onnxruntime sessions (whose run() blocks its thread), the
// scheduler, the adapter tiers it is given and every sequence. Talks to the main thread with
// messages only. A failure serving one sequence fails that sequence (scheduler.ts); anything else a
// tick throws fails the sequences in flight, and the loop goes on. If the thread dies anyway, the
// main thread restarts it (engine-client.ts).
// The adapter tiers come in through interfaces (adapter-source.ts): the thread's composition root
// (src/engine-thread.ts) creates them and calls runEngineWorker.
import type { MessagePort } from 'node:worker_threads';
import { setPriority } from 'node:os';
import { createModelRuntime } from './model-runtime.ts';
import type { ModelRuntime } from './model-runtime.ts';
import { Scheduler } from './scheduler.ts';
import { Sequence } from './sequence.ts';
import { LoraserveError, serializeError } from './errors.ts';
import type { TokenEvent } from './generate-request.ts';
import type { AdapterHost, MergedStore } from './adapter-source.ts';
import type { EngineCall, EngineFault, EngineOptions, EngineStats, FromWorker, ToWorker } from './engine-messages.ts';
import { collectGarbage } from './collect-garbage.ts';
import { releaseFreedMemory } from './release-memory.ts';

const ENGINE_NICE = 5;

// The adapter tiers, made once the model is loaded (they need its config and base weights).
export interface EngineTiers {
  hostCache: AdapterHost;
  merged: MergedStore;
}
export type MakeTiers = (rt: ModelRuntime, opts: EngineOptions) => EngineTiers;

// Runs the engine on this thread: `port` is its link to the main thread (parentPort), `opts` its
// workerData. Reports 'ready' once the model is loaded, or 'fatal' if it cannot start.
export function runEngineWorker(port: MessagePort, opts: EngineOptions, makeTiers: MakeTiers): void {
  const send = (msg: FromWorker): void => port.postMessage(msg);
  run(port, opts, makeTiers, send).catch((err) => send({ type: 'fatal', error: serializeError(err) }));
}

async function run(port: MessagePort, opts: EngineOptions, makeTiers: MakeTiers, send: (msg: FromWorker) => void): Promise<void> {
  // Lower this thread's priority before onnxruntime creates its pool threads, which inherit it (Linux
  // nice values are per thread): the HTTP thread then gets a core as soon as it needs one, instead
  // of waiting out the compute threads' time slices.
  try { setPriority(0, ENGINE_NICE); } catch { /* not permitted: run at normal priority */ }
  const rt = await createModelRuntime({ ...opts.runtime, maxRunning: opts.scheduler.maxRunning });
  const { hostCache, merged } = makeTiers(rt, opts);
  // the loader's float32 weights are garbage now, and the session's build freed its copies in the C
  // heap: give both back before serving
  collectGarbage();
  releaseFreedMemory();
  let outbox: { id: string; events: TokenEvent[] }[] = [];
  const cost = { weightBytes: rt.info.weightBytes, kvBytesPerPosition: 2 * rt.config.numLayers * rt.config.numKvHeads * rt.config.headDim * 4 };
  const scheduler = new Scheduler(rt.runner, rt.lanes, opts.scheduler, (id, events) => outbox.push({ id, events }), hostCache, merged, cost);
  scheduler.onStep = (s) => send({ type: 'step', stats: s, running: scheduler.runningCount, waiting: scheduler.waitingCount, kvBytes: scheduler.reservedKvBytes });
  scheduler.onAdapterFailure = (ref, err) => send({ type: 'adapter.failed', name: ref.name, version: ref.version, error: serializeError(err) });
  const pendingFaults: EngineFault[] = [];
  if (opts.faults) installFaults(scheduler, pendingFaults);
  let looping = false;

  const flush = (): void => {
    if (outbox.length) { send({ type: 'events', batch: outbox }); outbox = []; }
  };

  const loop = async (): Promise<void> => {
    if (looping) return;
    looping = true;
    try {
      // waking from idle: let requests sent together arrive first, so their prompts prefill together
      await new Promise((r) => setTimeout(r, 1));
      while (scheduler.busy) {
        let stepped = true;
        try {
          stepped = await scheduler.tick();
        } catch (err) {
          scheduler.failAll(err); // a fault outside any one sequence or step: fail those in flight, go on
        }
        flush();
        if (!stepped) break; // nothing runnable now: the next message wakes the loop
        await new Promise((r) => setImmediate(r)); // let new requests and cancels in between steps
      }
      flush();
    } finally {
      looping = false;
    }
  };
  hostCache.onSettled(() => void loop());
  merged.onSettled(() => void loop()); // merged-only adapters' rows wait for their session's build

  const call = async (c: EngineCall): Promise<unknown> => {
    switch (c.op) {
      case 'adapter.put':
        hostCache.put(c.adapter);
        return null;
      case 'adapter.drop':
        hostCache.forget(c.version);
        await merged.drop(c.version);
        return null;
      case 'merged.build': {
        const a = hostCache.peek(c.version);
        if (!a) throw new LoraserveError('model_not_found', `adapter version ${c.version} is not in host memory`);
        await merged.build(a);
        return merged.stats.lastBuildMs;
      }
      case 'merged.has':
        return merged.isMerged(c.version);
      case 'adapter.warm':
        for (const ref of c.refs) hostCache.acquire(ref); // starts a load from disk for each missing one
        return null;
      case 'gc':
        collectGarbage();
        releaseFreedMemory();
        return null;
      case 'stats': {
        const stats: EngineStats = {
          running: scheduler.runningCount,
          waiting: scheduler.waitingCount,
          paused: scheduler.pausedCount,
          preemptions: scheduler.preemptions,
          kvReservedBytes: scheduler.reservedKvBytes,
          kvArenaBytes: rt.lanes.kvBytes,
          loraArenaBytes: rt.lanes.loraBytes,
          hostCache: hostCache.snapshot(),
          merged: { ...merged.stats },
        };
        return stats;
      }
    }
  };

  port.on('message', (msg: ToWorker) => {
    switch (msg.type) {
      case 'generate': {
        try {
          scheduler.submit(new Sequence(msg.id, msg.request, rt.tokenizer, rt.limits));
          void loop();
        } catch (err) {
          send({ type: 'events', batch: [{ id: msg.id, events: [{ type: 'error', error: serializeError(err) }] }] });
        }
        break;
      }
      case 'cancel':
        scheduler.cancel(msg.id);
        flush();
        void loop(); // its row may let a waiting sequence in
        break;
      case 'pause':
        scheduler.pause(msg.id);
        break;
      case 'resume':
        scheduler.resume(msg.id);
        void loop();
        break;
      case 'fault':
        if (!opts.faults) break;
        if (msg.fault === 'crash') setImmediate(() => { throw new Error('injected crash (test fault)'); });
        else pendingFaults.push(msg.fault);
        break;
      case 'call':
        call(msg.call).then(
          (value) => send({ type: 'result', callId: msg.callId, value }),
          (err) => send({ type: 'result', callId: msg.callId, error: serializeError(err) }),
        );
        break;
      case 'shutdown':
        // cancel everything, let the step in flight finish (terminating during a session run
        // aborts the process), then end the thread
        scheduler.cancelAll();
        void (async () => {
          while (looping) await new Promise((r) => setTimeout(r, 5));
          process.exit(0);
        })();
    }
  });
  send({ type: 'ready', info: rt.info });
}

// Test-only: the next step or sequence advance consumes a queued fault.
function installFaults(scheduler: Scheduler, pending: EngineFault[]): void {
  const take = (kind: EngineFault): boolean => {
    const i = pending.indexOf(kind);
    if (i === -1) return false;
    pending.splice(i, 1);
    return true;
  };
  scheduler.faults = {
    beforeStep: () => {
      if (take('exit')) process.exit(1); // mid-step: the thread ends with the step in flight
      if (take('step')) throw new Error('injected step failure (test fault)');
    },
    beforeAdvance: (state) => {
      // a decoding sequence's advance (it samples its next token, its first one already sent)
      if (state === 'decode' && take('sequence')) throw new Error('injected sequence failure (test fault)');
    },
  };
}
