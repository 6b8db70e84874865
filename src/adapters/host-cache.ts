// The host-memory tier of adapters, in the engine worker: prepared adapters (factors in PEFT's layout,
// scale folded in, DoRA multipliers computed) in an LRU bounded in bytes. Versions used by
// waiting or running sequences are pinned and never dropped: one the LRU lets go of while pinned
// is held outside it. A version that is not in memory is read from its directory on disk (the
// store) without stopping the running batch.
//
// Bounded in bytes as a whole, not only the LRU (--host-cache-mb = maxBytes):
//   - pinned adapters held outside the LRU count against maxBytes too: after every insert, the
//     least recently used unpinned entries go until LRU + held outside ≤ maxBytes, or only pinned
//     adapters are left. So the adapters in host memory ≤ max(maxBytes, pinnedBytes).
//   - loads from disk run one at a time (MAX_LOADS), and one starts only while pinnedBytes <
//     maxBytes + the largest adapter held so far: so a running batch that pins more than the cache
//     holds still leaves room for the next waiting sequence's adapter (a sequence is not starved
//     by later requests for adapters in memory), and pinnedBytes passes maxBytes by at most two
//     adapters through loads (more only by sequences pinning adapters that are in memory already,
//     and by the inputs of per-request mixtures being composed: ≤ --max-mixture each, mixture.ts).
//     Before, the adapter of every waiting sequence was loaded at once (acquire() runs for each
//     waiting sequence on every tick) and each was held for its sequence outside the LRU: with
//     --max-queue 256 and 45 MB adapters, up to 11 GB.
//   - the failures map keeps the last MAX_FAILURES versions (a sequence waiting on an older failed
//     version just loads it again, and fails again).
// snapshot() reports bytes (the LRU), pinnedBytes, pinnedOutsideBytes and limitBytes for metrics,
// and this thread's warm buffers (warm-buffers.ts).
import { LRUCache } from 'lru-cache';
import { targetPath, targetShape } from '../runtime/model-targets.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import type { PreparedAdapter, PreparedTarget } from '../runtime/lora-arena.ts';
import type { AdapterRef } from '../runtime/generate-request.ts';
import type { AdapterSource } from '../runtime/adapter-source.ts';
import { LoraserveError } from '../runtime/errors.ts';
import { doraScale } from '../merge/merge-lora.ts';
import { adapterVersion, decodeAdapterOrThrow, readAdapterDir } from './lora-adapter.ts';
import type { AdapterFiles, AdapterLimits, LoraAdapter } from './lora-adapter.ts';
import { warmBufferStats } from './warm-buffers.ts';
import { mixPrepared } from './mixture.ts';
import type { WarmBufferStats } from './warm-buffers.ts';

export interface HostCacheStats {
  entries: number;            // adapters in the LRU
  bytes: number;              // bytes in the LRU
  limitBytes: number;         // the bound (--host-cache-mb): bytes + pinnedOutsideBytes ≤ max(limitBytes, pinnedBytes)
  largestBytes: number;       // the largest adapter held so far: loads start while pinnedBytes < limitBytes + it
  pinnedBytes: number;        // adapters pinned by waiting or running sequences (in the LRU or outside it)
  pinnedOutsideBytes: number; // pinned adapters the LRU does not hold (kept alive for their sequences)
  loading: number;            // loads from disk in flight (≤ MAX_LOADS)
  warmBuffers: WarmBufferStats; // the warm buffers of this (the engine) thread, which loads read into
  loads: number;
  evictions: number;
  failures: number;
}

// Loads from disk at a time: each reads and decodes on this thread anyway, and each holds a whole
// adapter (its read buffer) before the LRU or a sequence accounts for it.
export const MAX_LOADS = 1;
const MAX_FAILURES = 256;

export class HostCache implements AdapterSource {
  private readonly lru: LRUCache<string, PreparedAdapter>;
  private readonly pinned = new Map<string, { adapter: PreparedAdapter | null; count: number }>();
  private readonly loading = new Map<string, Promise<void>>();
  private readonly failures = new Map<string, Error>();
  private readonly mixing = new Map<string, string[]>(); // mixtures waiting for their inputs: the versions they pin
  private readonly listeners: (() => void)[] = [];
  private readonly maxBytes: number;
  readonly stats: HostCacheStats = { entries: 0, bytes: 0, limitBytes: 0, largestBytes: 0, pinnedBytes: 0, pinnedOutsideBytes: 0, loading: 0, warmBuffers: warmBufferStats(), loads: 0, evictions: 0, failures: 0 };

  constructor(
    private readonly cfg: ModelConfig,
    private readonly readBase: (name: string) => Float32Array,
    private readonly limits: AdapterLimits,
    maxBytes: number,
  ) {
    this.maxBytes = Math.max(1, maxBytes);
    this.lru = new LRUCache<string, PreparedAdapter>({
      maxSize: this.maxBytes,
      sizeCalculation: (a) => Math.max(1, a.bytes),
      dispose: (a, version, reason) => {
        if (reason === 'evict') this.stats.evictions++;
        const p = this.pinned.get(version);
        if (p && !p.adapter) p.adapter = a; // still in use: keep it alive outside the LRU
      },
    });
  }

  // A decoded adapter from the main thread (upload or load): prepared and cached.
  put(adapter: LoraAdapter): PreparedAdapter {
    const prepared = prepareAdapter(adapter, this.cfg, this.readBase);
    this.lru.set(adapter.version, prepared);
    const p = this.pinned.get(adapter.version);
    if (p) p.adapter = prepared; // in use: held even if the LRU cannot keep it
    this.failures.delete(adapter.version);
    this.stats.loads++;
    this.stats.largestBytes = Math.max(this.stats.largestBytes, prepared.bytes);
    this.trim();
    return prepared;
  }

  // The adapter if it is in host memory; else undefined, and a load starts when the bounds allow
  // (the scheduler asks again on every tick and when a load settles, in the waiting order, so the
  // oldest waiting sequence's adapter loads first).
  // `inputOfMixture`: a mixture's input, loaded past the pinned-bytes bound (the mixture pins its
  // other inputs while it waits, so the bound could otherwise never let the last one in).
  acquire(ref: AdapterRef, inputOfMixture = false): PreparedAdapter | undefined {
    const hit = this.lru.get(ref.version) ?? this.pinned.get(ref.version)?.adapter ?? undefined;
    if (hit) return hit;
    if (ref.mixture) return this.acquireMixture(ref, ref.mixture);
    if (this.loading.has(ref.version) || this.failures.has(ref.version) || this.loading.size >= MAX_LOADS) return undefined;
    if (!inputOfMixture && this.pinnedBytes().total >= this.maxBytes + this.stats.largestBytes) return undefined; // until sequences release some
    this.loading.set(ref.version, this.load(ref));
    return undefined;
  }

  // In host memory, without starting a load.
  peek(version: string): PreparedAdapter | undefined {
    return this.lru.peek(version) ?? this.pinned.get(version)?.adapter ?? undefined;
  }

  failure(ref: AdapterRef): Error | undefined {
    return this.failures.get(ref.version) ?? ref.mixture?.map((p) => this.failure(p.ref)).find((e) => e !== undefined);
  }

  // A per-request mixture (mixture.ts): composed once every input is in memory, then cached like
  // any adapter under the blend's version. Its inputs are pinned while it waits for them, so a
  // small cache does not evict one input while loading the next.
  private acquireMixture(ref: AdapterRef, parts: NonNullable<AdapterRef['mixture']>): PreparedAdapter | undefined {
    if (this.failures.has(ref.version)) return undefined;
    if (!this.mixing.has(ref.version)) {
      this.mixing.set(ref.version, parts.map((p) => p.ref.version));
      for (const p of parts) this.pin(p.ref.version);
    }
    const prepared = parts.map((p) => this.acquire(p.ref, true));
    if (prepared.some((p) => p === undefined)) {
      if (parts.some((p) => this.failure(p.ref))) this.doneMixing(ref.version);
      return undefined;
    }
    try {
      const mixed = mixPrepared(ref.version, parts.map((p, i) => ({ adapter: prepared[i]!, weight: p.weight, name: p.ref.name })), this.cfg);
      this.lru.set(ref.version, mixed);
      const pin = this.pinned.get(ref.version);
      if (pin) pin.adapter = mixed;
      this.stats.largestBytes = Math.max(this.stats.largestBytes, mixed.bytes);
      this.trim();
      return mixed;
    } catch (err) {
      this.failures.set(ref.version, err as Error);
      if (this.failures.size > MAX_FAILURES) this.failures.delete(this.failures.keys().next().value!); // the oldest
      return undefined;
    } finally {
      this.doneMixing(ref.version);
    }
  }

  private doneMixing(version: string): void {
    const inputs = this.mixing.get(version);
    if (!inputs) return;
    this.mixing.delete(version);
    for (const v of inputs) this.unpin(v);
  }

  pin(version: string): void {
    const p = this.pinned.get(version);
    if (p) p.count++;
    else this.pinned.set(version, { adapter: this.lru.get(version) ?? null, count: 1 });
  }

  unpin(version: string): void {
    const p = this.pinned.get(version);
    if (p && --p.count === 0) this.pinned.delete(version); // held outside the LRU: dropped now
  }

  forget(version: string): void {
    this.lru.delete(version);
    this.failures.delete(version);
  }

  onSettled(listener: () => void): void {
    this.listeners.push(listener);
  }

  snapshot(): HostCacheStats {
    const { total, outside } = this.pinnedBytes();
    return { ...this.stats, entries: this.lru.size, bytes: this.lru.calculatedSize ?? 0, limitBytes: this.maxBytes, pinnedBytes: total, pinnedOutsideBytes: outside, loading: this.loading.size, warmBuffers: warmBufferStats() };
  }

  // Bytes of the pinned adapters in memory, and of those the LRU does not hold.
  private pinnedBytes(): { total: number; outside: number } {
    let total = 0;
    let outside = 0;
    for (const [version, p] of this.pinned) {
      if (!p.adapter) continue;
      total += p.adapter.bytes;
      if (!this.lru.has(version)) outside += p.adapter.bytes;
    }
    return { total, outside };
  }

  // Pinned adapters held outside the LRU count against its bound: drop the least recently used
  // unpinned entries until LRU + outside ≤ maxBytes, or only pinned entries are left.
  private trim(): void {
    let excess = (this.lru.calculatedSize ?? 0) + this.pinnedBytes().outside - this.maxBytes;
    if (excess <= 0) return;
    for (const version of [...this.lru.rkeys()]) { // least recently used first
      if (excess <= 0) break;
      if (this.pinned.has(version)) continue;
      excess -= Math.max(1, this.lru.peek(version)?.bytes ?? 0);
      this.lru.delete(version);
      this.stats.evictions++;
    }
  }

  private async load(ref: AdapterRef): Promise<void> {
    try {
      this.put(decodeAdapterOrThrow(await readVersion(ref), this.cfg, this.limits, ref.name).adapter);
    } catch (err) {
      this.stats.failures++;
      this.failures.set(ref.version, err as Error);
      if (this.failures.size > MAX_FAILURES) this.failures.delete(this.failures.keys().next().value!); // the oldest
    } finally {
      this.loading.delete(ref.version);
      for (const l of this.listeners) l();
    }
  }
}

// The files of exactly ref.version: in its directory, or, if that has been replaced since (the
// request started before the replace), where the store keeps replaced versions still in use.
async function readVersion(ref: AdapterRef): Promise<AdapterFiles> {
  let firstError: unknown = null;
  for (const dir of [ref.dir, ref.retiredDir].filter((d): d is string => !!d)) {
    try {
      const files = await readAdapterDir(dir);
      if (adapterVersion(files) === ref.version) return files;
    } catch (err) {
      firstError ??= err;
    }
  }
  if (firstError && !ref.retiredDir) throw firstError;
  throw new LoraserveError('unavailable', `adapter '${ref.name}' cannot be served: its files in ${ref.dir} changed since version ${ref.version} was registered. Reload it (POST /v1/adapters/${ref.name}/reload, or /v1/load_lora_adapter with load_inplace).`);
}

// LoraAdapter → what the arena takes (lora-arena.ts): A [r, in] and s·B [out, r] in PEFT's own
// layout, DoRA g [out]. The decoded arrays are taken over (for F32 files they are views of the file
// buffer) and only B is touched, scaled in place: no copy, no transpose, no fresh memory (a fresh
// 10 MB allocation costs ~30 ms of page faults on this VM).
export function prepareAdapter(adapter: LoraAdapter, cfg: ModelConfig, readBase: (name: string) => Float32Array): PreparedAdapter {
  const targets: PreparedTarget[] = adapter.targets.map((t) => {
    if (t.delta) return { layer: t.layer, target: t.target, rank: 0, a: t.a, b: t.b, g: null, delta: t.delta }; // merged-only: ΔW as is
    const [out, inDim] = targetShape(cfg, t.target);
    const g = t.magnitude ? doraScale(readBase(`${targetPath(t.layer, t.target)}.weight`), t, out, inDim) : null; // before B is scaled
    const b = t.b;
    if (t.scale !== 1) for (let i = 0; i < b.length; i++) b[i] *= t.scale;
    return { layer: t.layer, target: t.target, rank: t.rank, a: t.a, b, g };
  });
  const bytes = targets.reduce((s, t) => s + t.a.byteLength + t.b.byteLength + (t.g?.byteLength ?? 0) + (t.delta?.byteLength ?? 0), 0);
  return { version: adapter.version, rank: adapter.maxRank, useDora: adapter.useDora, targets, bytes };
}
