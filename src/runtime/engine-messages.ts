// Messages between the main thread (engine-client.ts) and the engine worker (engine-worker.ts).
// Types from the adapter tiers that cross here are runtime's own structural types (adapter-source.ts).
import type { AdapterRef, GenerateRequest, ModelInfo, TokenEvent } from './generate-request.ts';
import type { SerializedError } from './errors.ts';
import type { RuntimeOptions } from './model-runtime.ts';
import type { SchedulerLimits, StepStats } from './scheduler.ts';
import type { AdapterCacheStats, AdapterWeights, LoraMode, MergedPathStats } from './adapter-source.ts';

export interface AdapterOptions {
  loraMode: LoraMode;
  maxLoraRank: number;
  hostCacheBytes: number;      // decoded adapters in host memory (LRU)
  mergedCacheBytes: number;    // merged-weights sessions (LRU)
  mergedQuantError?: number;   // over a quantized base: the most re-quantization error auto merges with (default 0.05)
}

export interface EngineOptions {
  runtime: RuntimeOptions;
  scheduler: SchedulerLimits;
  adapters: AdapterOptions;
  faults?: boolean;            // tests only: honour 'fault' messages (engine-worker.ts installFaults)
}

// Test-only faults (engine-worker.ts honours them when EngineOptions.faults is set):
//   step      the next batched step throws (its sequences fail, the engine goes on)
//   sequence  the next sequence to take a token throws while sampling (it alone fails)
//   exit      the worker thread exits in the middle of its next step (the client restarts it)
//   crash     an uncaught exception outside any step (the client restarts it)
export type EngineFault = 'step' | 'sequence' | 'exit' | 'crash';

export interface EngineStats {
  running: number;
  waiting: number;
  paused: number;              // sequences held back because their client is not reading
  preemptions: number;         // rows given up by paused sequences for others (they recompute their KV later)
  kvReservedBytes: number;
  kvArenaBytes: number;
  loraArenaBytes: number;
  hostCache: AdapterCacheStats;
  merged: MergedPathStats;
}

// Calls that answer (adapter management, stats, benchmarks).
export type EngineCall =
  | { op: 'adapter.put'; adapter: AdapterWeights }
  | { op: 'adapter.drop'; version: string }
  | { op: 'merged.build'; version: string }
  | { op: 'merged.has'; version: string }
  | { op: 'adapter.warm'; refs: AdapterRef[] }
  | { op: 'stats' }
  | { op: 'gc' };

export type ToWorker =
  | { type: 'generate'; id: string; request: GenerateRequest }
  | { type: 'cancel'; id: string }
  | { type: 'pause'; id: string }    // the client is not reading: take no steps for it
  | { type: 'resume'; id: string }
  | { type: 'fault'; fault: EngineFault }
  | { type: 'call'; callId: number; call: EngineCall }
  | { type: 'shutdown' };

export type FromWorker =
  | { type: 'ready'; info: ModelInfo }
  | { type: 'fatal'; error: SerializedError }
  | { type: 'events'; batch: { id: string; events: TokenEvent[] }[] }
  | { type: 'result'; callId: number; value?: unknown; error?: SerializedError }
  | { type: 'step'; stats: StepStats; running: number; waiting: number; kvBytes: number }
  | { type: 'adapter.failed'; name: string; version: string; error: SerializedError };
