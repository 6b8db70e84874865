// The host-memory tier of adapters, in the engine worker: prepared adapters (factors in PEFT's layout,
// scale folded in, DoRA multipliers computed) in an LRU bounded in bytes. Versions used by
// waiting or running sequences are pinned and never evicted. A version that is not in memory is
// read from its directory on disk (the store) without stopping the running batch.
import { LRUCache } from 'lru-cache';
import { targetPath, targetShape } from '../runtime/llama-graph.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import type { PreparedAdapter, PreparedTarget } from '../runtime/lora-arena.ts';
import type { AdapterRef } from '../runtime/generate-request.ts';
import type { AdapterSource } from '../runtime/adapter-source.ts';
import { LoraserveError } from '../runtime/errors.ts';
import { doraScale } from '../merge/merge-lora.ts';
import { adapterVersion, decodeAdapterOrThrow, readAdapterDir } from './lora-adapter.ts';
import type { AdapterFiles, AdapterLimits, LoraAdapter } from './lora-adapter.ts';

export interface HostCacheStats {
  entries: number;
  bytes: number;
  loads: number;
  evictions: number;
  failures: number;
}

export class HostCache implements AdapterSource {
  private readonly lru: LRUCache<string, PreparedAdapter>;
  private readonly pinned = new Map<string, { adapter: PreparedAdapter | null; count: number }>();
  private readonly loading = new Map<string, Promise<void>>();
  private readonly failures = new Map<string, Error>();
  private readonly listeners: (() => void)[] = [];
  readonly stats: HostCacheStats = { entries: 0, bytes: 0, loads: 0, evictions: 0, failures: 0 };

  constructor(
    private readonly cfg: ModelConfig,
    private readonly readBase: (name: string) => Float32Array,
    private readonly limits: AdapterLimits,
    maxBytes: number,
  ) {
    this.lru = new LRUCache<string, PreparedAdapter>({
      maxSize: Math.max(1, maxBytes),
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
    return prepared;
  }

  acquire(ref: AdapterRef): PreparedAdapter | undefined {
    const hit = this.lru.get(ref.version) ?? this.pinned.get(ref.version)?.adapter ?? undefined;
    if (hit) return hit;
    if (!this.loading.has(ref.version) && !this.failures.has(ref.version)) this.loading.set(ref.version, this.load(ref));
    return undefined;
  }

  // In host memory, without starting a load.
  peek(version: string): PreparedAdapter | undefined {
    return this.lru.peek(version) ?? this.pinned.get(version)?.adapter ?? undefined;
  }

  failure(ref: AdapterRef): Error | undefined {
    return this.failures.get(ref.version);
  }

  pin(version: string): void {
    const p = this.pinned.get(version);
    if (p) p.count++;
    else this.pinned.set(version, { adapter: this.lru.get(version) ?? null, count: 1 });
  }

  unpin(version: string): void {
    const p = this.pinned.get(version);
    if (p && --p.count === 0) this.pinned.delete(version);
  }

  forget(version: string): void {
    this.lru.delete(version);
    this.failures.delete(version);
  }

  onSettled(listener: () => void): void {
    this.listeners.push(listener);
  }

  snapshot(): HostCacheStats {
    return { ...this.stats, entries: this.lru.size, bytes: this.lru.calculatedSize ?? 0 };
  }

  private async load(ref: AdapterRef): Promise<void> {
    try {
      this.put(decodeAdapterOrThrow(await readVersion(ref), this.cfg, this.limits, ref.name).adapter);
    } catch (err) {
      this.stats.failures++;
      this.failures.set(ref.version, err as Error);
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
  throw new LoraserveError('conflict', `adapter ${ref.name}: the files in ${ref.dir} changed since version ${ref.version} was registered`);
}

// LoraAdapter → what the arena takes (lora-arena.ts): A [r, in] and s·B [out, r] in PEFT's own
// layout, DoRA g [out]. The decoded arrays are taken over (for F32 files they are views of the file
// buffer) and only B is touched, scaled in place: no copy, no transpose, no fresh memory (a fresh
// 10 MB allocation costs ~30 ms of page faults on this VM).
export function prepareAdapter(adapter: LoraAdapter, cfg: ModelConfig, readBase: (name: string) => Float32Array): PreparedAdapter {
  const targets: PreparedTarget[] = adapter.targets.map((t) => {
    const [out, inDim] = targetShape(cfg, t.target);
    const g = t.magnitude ? doraScale(readBase(`${targetPath(t.layer, t.target)}.weight`), t, out, inDim) : null; // before B is scaled
    const b = t.b;
    if (t.scale !== 1) for (let i = 0; i < b.length; i++) b[i] *= t.scale;
    return { layer: t.layer, target: t.target, rank: t.rank, a: t.a, b, g };
  });
  const bytes = targets.reduce((s, t) => s + t.a.byteLength + t.b.byteLength + (t.g?.byteLength ?? 0), 0);
  return { version: adapter.version, rank: adapter.maxRank, useDora: adapter.useDora, targets, bytes };
}
