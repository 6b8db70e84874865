// The engine thread's composition root: the one place where the runtime, the adapter tiers and the
// merged path are wired together. The engine worker runs this module (through its tsx bootstrap,
// engine-thread-entry.mjs); the main thread starts it with startEngine (start-engine.ts).
// src/runtime knows the tiers only by its interfaces (runtime/adapter-source.ts).
import { parentPort, workerData } from 'node:worker_threads';
import { runEngineWorker } from './runtime/engine-worker.ts';
import type { EngineTiers } from './runtime/engine-worker.ts';
import type { ModelRuntime } from './runtime/model-runtime.ts';
import type { EngineOptions } from './runtime/engine-messages.ts';
import { HostCache } from './adapters/host-cache.ts';
import { MergedSessions } from './merge/merged-sessions.ts';

export function makeTiers(rt: ModelRuntime, opts: EngineOptions): EngineTiers {
  const { loraMode, maxLoraRank, hostCacheBytes, mergedCacheBytes, mergedQuantError } = opts.adapters;
  const hostCache = new HostCache(rt.config, rt.readServed, { maxRank: maxLoraRank, modelName: rt.info.name }, hostCacheBytes);
  const merged = new MergedSessions(loraMode, rt.config, rt.info.maxContext, rt.readBase, (v) => hostCache.peek(v), mergedCacheBytes, rt.sessionOptions, rt.info.weightBytes, rt.quant && { scheme: rt.quant, readServed: rt.readServed, maxError: mergedQuantError ?? 0.05 });
  return { hostCache, merged };
}

if (parentPort) runEngineWorker(parentPort, workerData as EngineOptions, makeTiers);
