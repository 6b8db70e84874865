// What the engine needs from the adapter tiers, as interfaces: the runtime imports nothing from
// src/adapters or src/merge. The engine thread's composition root (src/engine-thread.ts) hands in
// the implementations: adapters/host-cache.ts (AdapterSource, AdapterHost) and
// merge/merged-sessions.ts (MergedPath, MergedStore).
// The data types here cross the thread boundary (engine-messages.ts); they are plain structures
// that adapters/lora-adapter.ts, host-cache.ts and merged-sessions.ts satisfy (checked in
// test/architecture.test.ts).
import type { AdapterRef } from './generate-request.ts';
import type { PreparedAdapter } from './lora-arena.ts';
import type { Target } from './model-targets.ts';
import type { MergedPath } from './scheduler.ts';

// How steps apply adapters: merged sessions, per-row factors, or chosen by cost (merged-sessions.ts).
export type LoraMode = 'auto' | 'merged' | 'unmerged';

// A decoded adapter, as the main thread hands it to the engine (adapters/lora-adapter.ts LoraAdapter).
export interface AdapterWeights {
  version: string;                // content hash of the two files
  targets: AdapterTargetWeights[];
  maxRank: number;
  useDora: boolean;
  bytes: number;                  // decoded float32 bytes
  baseModel: string | null;
}

export interface AdapterTargetWeights {
  layer: number;
  target: Target;
  rank: number;
  scale: number;                  // alpha/r or alpha/√r, resolved per module
  a: Float32Array;                // lora_A [rank, in]
  b: Float32Array;                // lora_B [out, rank]
  magnitude: Float32Array | null; // DoRA m [out]
  delta?: Float32Array;           // merged-only adapters: ΔW [out, in] (rank 0, a and b empty)
}

// The engine thread's warm read buffers (adapters/warm-buffers.ts WarmBufferStats).
export interface WarmBufferCounts {
  spareBytes: number;
  outstandingBytes: number;
  limitBytes: number;
  prepared: number;
  hits: number;
  misses: number;
  dropped: number;
}

// The host cache's counters (adapters/host-cache.ts HostCacheStats, where each is explained).
export interface AdapterCacheStats {
  entries: number;
  bytes: number;
  limitBytes: number;
  largestBytes: number;
  pinnedBytes: number;
  pinnedOutsideBytes: number;
  loading: number;
  warmBuffers: WarmBufferCounts;
  loads: number;
  evictions: number;
  failures: number;
}

// The merged sessions' counters (merge/merged-sessions.ts MergedStats).
export interface MergedPathStats {
  hits: number;
  misses: number;
  builds: number;
  evictions: number;
  bytes: number;
  lastBuildMs: number;
  lastBuildBytes: number;
  lastRequantError: number;  // over a quantized base: the last merge's relative re-quantization error (NaN: none)
  declined: number;          // adapter versions auto did not merge because of it
}

// What the scheduler needs: a prepared adapter for a request's version, loaded from disk if the
// host cache lost it.
export interface AdapterSource {
  // The prepared adapter if it is in host memory; otherwise undefined and a load starts.
  acquire(ref: AdapterRef): PreparedAdapter | undefined;
  // Why the last load of this version failed, if it did (the request then ends with this error).
  failure(ref: AdapterRef): Error | undefined;
  // Keep this version in host memory while sequences use it.
  pin(version: string): void;
  unpin(version: string): void;
  // Resolves when a pending load settles, so the scheduler can retry admission.
  onSettled(listener: () => void): void;
}

// What the engine thread's calls need besides (engine-worker.ts): the host cache as a whole.
export interface AdapterHost extends AdapterSource {
  // A decoded adapter from the main thread: prepared and cached.
  put(adapter: AdapterWeights): unknown;
  // Dropped from host memory (an unloaded or replaced adapter).
  forget(version: string): void;
  // In host memory, without starting a load.
  peek(version: string): PreparedAdapter | undefined;
  snapshot(): AdapterCacheStats;
}

// The merged path as the engine thread's calls use it: builds on demand, drops, counters.
export interface MergedStore extends MergedPath {
  readonly stats: MergedPathStats;
  build(adapter: PreparedAdapter): Promise<unknown>;
  onSettled(listener: () => void): void; // a build settled (the engine loop may be waiting for it)
  drop(version: string): Promise<void>;
  isMerged(version: string): boolean;
}
