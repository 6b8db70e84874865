// Messages between the main thread (engine-client.ts) and the engine worker (engine-worker.ts).
import type { GenerateRequest, ModelInfo, TokenEvent } from './generate-request.ts';
import type { SerializedError } from './errors.ts';
import type { RuntimeOptions } from './model-runtime.ts';
import type { SchedulerLimits, StepStats } from './scheduler.ts';

export interface EngineOptions {
  runtime: RuntimeOptions;
  scheduler: SchedulerLimits;
}

export type ToWorker =
  | { type: 'generate'; id: string; request: GenerateRequest }
  | { type: 'cancel'; id: string }
  | { type: 'shutdown' };

export type FromWorker =
  | { type: 'ready'; info: ModelInfo }
  | { type: 'fatal'; error: SerializedError }
  | { type: 'events'; batch: { id: string; events: TokenEvent[] }[] }
  | { type: 'step'; stats: StepStats; running: number; waiting: number; kvBytes: number };
