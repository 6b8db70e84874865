// The adapter registry (main thread): name → current version (a content hash), status, in-flight
// requests. The only writer of adapter state. Three tiers sit behind it:
//   disk   the store (adapter-store.ts), or an allowed directory, holds the files: source of truth
//   host   decoded adapters in the engine's LRU (host-cache.ts), bounded in bytes
//   slots  rows of the running batch (lora-arena.ts)
// A request resolves a name once, at its start, and keeps that version to its end; a replace makes
// new requests use the new version; an unload waits for in-flight requests, or is refused.
import { decodeAdapter, readAdapterDir, CONFIG_FILE, WEIGHTS_FILE } from './lora-adapter.ts';
import type { AdapterFiles, LoraAdapter } from './lora-adapter.ts';
import { AdapterStore, checkAdapterName } from './adapter-store.ts';
import type { StagedWrite } from './adapter-store.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import type { AdapterRef } from '../runtime/generate-request.ts';
import { LoraserveError } from '../runtime/errors.ts';
import { TARGETS } from '../runtime/llama-graph.ts';

export type AdapterStatus = 'ready' | 'unloading';

export interface AdapterInfo {
  name: string;
  version: string;
  status: AdapterStatus;
  source: 'store' | 'path';
  dir: string;
  rank: number;
  targets: string[];          // target module kinds present, e.g. ["q_proj", "v_proj"]
  layers: number;             // layers with at least one target
  useDora: boolean;
  decodedBytes: number;
  fileBytes: number;
  inFlight: number;
  requestsServed: number;
  loadedAt: number;           // unix seconds
  warnings: string[];
}

// What the registry needs from the engine (engine-client.ts implements it).
export interface AdapterEngine {
  putAdapter(adapter: LoraAdapter): Promise<void>;
  dropAdapter(version: string): Promise<void>;
}

export interface RegistryEvents {
  onLoad?: (name: string, ok: boolean) => void;
  onEvict?: (name: string) => void;
}

interface Entry extends Omit<AdapterInfo, 'inFlight'> {
  inFlightByVersion: Map<string, number>;
}

export class AdapterRegistry {
  private readonly entries = new Map<string, Entry>();
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly drains = new Map<string, (() => void)[]>();
  // versions replaced while requests still used them: dropped from the engine once they finish
  private readonly retired = new Map<string, number>();

  constructor(
    private readonly engine: AdapterEngine,
    private readonly model: ModelConfig,
    private readonly modelName: string,
    private readonly maxRank: number,
    readonly store: AdapterStore,
    private readonly events: RegistryEvents = {},
  ) {}

  // Serve everything in the store (start-up). Invalid stored adapters are reported, not fatal.
  async loadStore(): Promise<{ loaded: string[]; failed: { name: string; error: string }[] }> {
    const loaded: string[] = [];
    const failed: { name: string; error: string }[] = [];
    for (const name of this.store.list()) {
      try {
        await this.loadDir(name, this.store.dirOf(name), { replace: true, source: 'store' });
        loaded.push(name);
      } catch (e) {
        failed.push({ name, error: (e as Error).message });
      }
    }
    return { loaded, failed };
  }

  list(): AdapterInfo[] {
    return [...this.entries.values()].map((e) => this.info(e)).sort((a, b) => a.name.localeCompare(b.name));
  }

  get(name: string): AdapterInfo | undefined {
    const e = this.entries.get(name);
    return e ? this.info(e) : undefined;
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  // A request starts: the adapter's current version, counted in flight until release().
  acquire(name: string): AdapterRef {
    const e = this.entries.get(name);
    if (!e || e.status !== 'ready') throw new LoraserveError('model_not_found', `The model \`${name}\` does not exist.`, { param: 'model' });
    e.inFlightByVersion.set(e.version, (e.inFlightByVersion.get(e.version) ?? 0) + 1);
    e.requestsServed++;
    return { name, version: e.version, dir: e.dir, ...(e.source === 'store' ? { retiredDir: this.store.retiredDirOf(name, e.version) } : {}) };
  }

  release(ref: AdapterRef): void {
    const e = this.entries.get(ref.name);
    const counts = e?.inFlightByVersion;
    if (counts) {
      const n = (counts.get(ref.version) ?? 1) - 1;
      if (n > 0) counts.set(ref.version, n);
      else counts.delete(ref.version);
    }
    const pending = this.retired.get(ref.version);
    if (pending !== undefined) {
      if (pending <= 1) { this.retired.delete(ref.version); void this.dropRetired(ref.name, ref.version).catch(() => undefined); } // best effort: a leftover copy is removed at start-up
      else this.retired.set(ref.version, pending - 1);
    }
    if (e && this.inFlight(e) === 0) for (const f of this.drains.get(ref.name)?.splice(0) ?? []) f();
  }

  // Upload: the files are staged in the store while they are validated (an invalid adapter leaves
  // the store as it was), handed to the engine, then committed atomically. It takes `files` over:
  // their weights buffer moves to the engine thread.
  async upload(name: string, files: AdapterFiles, opts: { replace: boolean }): Promise<AdapterInfo> {
    checkAdapterName(name);
    return this.locked(name, async () => {
      this.checkReplace(name, opts.replace);
      const staging = this.store.stage(name, files); // the disk write overlaps the validation
      let decoded: { adapter: LoraAdapter; warnings: string[] };
      try {
        decoded = this.validate(name, files);
      } catch (err) {
        await staging.then((s) => s.abort(), () => undefined);
        throw err;
      }
      // the adapter's arrays may be views of files.weights: on disk first, then the engine takes them
      const staged = await staging;
      return this.install(name, decoded.adapter, decoded.warnings, this.store.dirOf(name), 'store', files, staged);
    });
  }

  // Load from a directory on the server (the store, or an allowed directory).
  async loadDir(name: string, dir: string, opts: { replace: boolean; source?: 'store' | 'path' }): Promise<AdapterInfo> {
    checkAdapterName(name, 'lora_name');
    return this.locked(name, async () => {
      this.checkReplace(name, opts.replace);
      const files = await readAdapterDir(dir);
      const { adapter, warnings } = this.validate(name, files);
      return this.install(name, adapter, warnings, dir, opts.source ?? (this.store.contains(dir) ? 'store' : 'path'), files);
    });
  }

  // Unload: waits up to `waitMs` for in-flight requests, then refuses with 409. Deletes the
  // stored files too when `deleteFiles` (DELETE /v1/adapters/{name}).
  async unload(name: string, opts: { waitMs: number; deleteFiles: boolean }): Promise<void> {
    const current = this.entries.get(name);
    if (!current) throw new LoraserveError('model_not_found', `The lora adapter '${name}' cannot be found.`, { param: 'lora_name' });
    current.status = 'unloading'; // from now on, no new requests
    return this.locked(name, async () => {
      const e = this.entries.get(name);
      if (!e) throw new LoraserveError('model_not_found', `The lora adapter '${name}' cannot be found.`, { param: 'lora_name' });
      e.status = 'unloading';
      if (this.inFlight(e) > 0) {
        const drained = await new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => resolve(false), opts.waitMs);
          const list = this.drains.get(name) ?? [];
          list.push(() => { clearTimeout(timer); resolve(true); });
          this.drains.set(name, list);
        });
        if (!drained) {
          e.status = 'ready';
          throw new LoraserveError('conflict', `adapter '${name}' still has ${this.inFlight(e)} request(s) in flight after ${opts.waitMs} ms; try again later`, { param: 'lora_name' });
        }
      }
      this.entries.delete(name);
      if (opts.deleteFiles && e.source === 'store') this.store.remove(name);
      await this.engine.dropAdapter(e.version);
      this.events.onEvict?.(name);
    });
  }

  private validate(name: string, files: AdapterFiles): { adapter: LoraAdapter; warnings: string[] } {
    const r = decodeAdapter(files, this.model, { maxRank: this.maxRank, modelName: this.modelName });
    if (!r.adapter) {
      this.events.onLoad?.(name, false);
      throw new LoraserveError('invalid_adapter', `adapter '${name}' is invalid: ${r.problems.join('; ')}`, { problems: r.problems });
    }
    return { adapter: r.adapter, warnings: r.warnings };
  }

  // The engine takes the adapter, then an upload's staged files are committed to the store; it
  // serves only once both have succeeded.
  private async install(name: string, adapter: LoraAdapter, warnings: string[], dir: string, source: 'store' | 'path', files: AdapterFiles, staged?: StagedWrite): Promise<AdapterInfo> {
    const layers = new Set(adapter.targets.map((t) => t.layer)).size;
    const targets = TARGETS.filter((t) => adapter.targets.some((x) => x.target === t));
    const info = { version: adapter.version, rank: adapter.maxRank, useDora: adapter.useDora, decodedBytes: adapter.bytes, fileBytes: files.config.byteLength + files.weights.byteLength, layers, targets: [...targets] };
    try {
      await this.engine.putAdapter(adapter); // the buffers move to the engine
    } catch (err) {
      await staged?.abort();
      throw err;
    }
    const prev = this.entries.get(name);
    const replaced = prev && prev.version !== info.version ? prev : null;
    // a replaced stored version keeps its files (retiredDirOf) while requests that started with it
    // run: requests may still acquire it until the new entry is in place
    try {
      await staged?.commit(replaced?.source === 'store' ? replaced.version : undefined);
    } catch (err) {
      if (prev?.version !== info.version) await this.engine.dropAdapter(info.version);
      throw err;
    }
    const entry: Entry = {
      name, ...info, status: 'ready', source, dir, warnings,
      requestsServed: prev?.requestsServed ?? 0,
      loadedAt: Math.floor(Date.now() / 1000),
      inFlightByVersion: prev?.inFlightByVersion ?? new Map(),
    };
    this.entries.set(name, entry); // new requests get the new version from here on
    if (replaced) {
      const stillUsed = replaced.inFlightByVersion.get(replaced.version) ?? 0;
      if (stillUsed > 0) this.retired.set(replaced.version, stillUsed);
      else await this.dropRetired(name, replaced.version);
    }
    this.events.onLoad?.(name, true);
    return this.info(entry);
  }

  private async dropRetired(name: string, version: string): Promise<void> {
    await this.engine.dropAdapter(version);
    await this.store.removeRetired(name, version);
  }

  private checkReplace(name: string, replace: boolean): void {
    if (name === this.modelName) throw new LoraserveError('conflict', `'${name}' is the base model's name`, { param: 'name' });
    if (!replace && this.entries.has(name)) {
      throw new LoraserveError('conflict', `The lora adapter '${name}' has already been loaded. To replace it, set 'load_inplace' (or 'replace') to true.`, { param: 'name' });
    }
  }

  private inFlight(e: Entry): number {
    let n = 0;
    for (const c of e.inFlightByVersion.values()) n += c;
    return n;
  }

  private info(e: Entry): AdapterInfo {
    const { inFlightByVersion: _m, ...rest } = e;
    return { ...rest, inFlight: this.inFlight(e) };
  }

  // One operation per name at a time (upload, load, unload never interleave for a name).
  private locked<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(name) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    this.locks.set(name, next.catch(() => undefined));
    return next;
  }
}

export { CONFIG_FILE, WEIGHTS_FILE };
