// Messages between the main thread (engine-client.ts) and the engine worker (engine-worker.ts).
import type { GenerateRequest, ModelInfo, TokenEvent } from './generate-request.ts';
import type { SerializedError } from './errors.ts';
import type { RuntimeOptions } from './model-runtime.ts';
import type { SchedulerLimits, StepStats } from './scheduler.ts';
import type { LoraAdapter } from '../adapters/lora-adapter.ts';
import type { LoraMode } from '../merge/merged-sessions.ts';

export interface AdapterOptions {
  loraMode: LoraMode;
  maxLoraRank: number;
  hostCacheBytes: number;      // decoded adapters in host memory (LRU)
  mergedCacheBytes: number;    // merged-weights sessions (LRU)
}

export interface EngineOptions {
  runtime: RuntimeOptions;
  scheduler: SchedulerLimits;
  adapters: AdapterOptions;
}

export interface EngineStats {
  running: number;
  waiting: number;
  kvReservedBytes: number;
  kvArenaBytes: number;
  loraArenaBytes: number;
  hostCache: { entries: number; bytes: number; loads: number; evictions: number; failures: number };
  merged: { hits: number; misses: number; builds: number; evictions: number; bytes: number; lastBuildMs: number };
}

// Calls that answer (adapter management, stats, benchmarks).
export type EngineCall =
  | { op: 'adapter.put'; adapter: LoraAdapter }
  | { op: 'adapter.drop'; version: string }
  | { op: 'merged.build'; version: string }
  | { op: 'merged.has'; version: string }
  | { op: 'stats' }
  | { op: 'gc' };

export type ToWorker =
  | { type: 'generate'; id: string; request: GenerateRequest }
  | { type: 'cancel'; id: string }
  | { type: 'call'; callId: number; call: EngineCall }
  | { type: 'shutdown' };

export type FromWorker =
  | { type: 'ready'; info: ModelInfo }
  | { type: 'fatal'; error: SerializedError }
  | { type: 'events'; batch: { id: string; events: TokenEvent[] }[] }
  | { type: 'result'; callId: number; value?: unknown; error?: SerializedError }
  | { type: 'step'; stats: StepStats; running: number; waiting: number; kvBytes: number };
