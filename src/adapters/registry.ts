// The adapter registry (main thread): name → current version (a content hash), status, in-flight
// requests. The only writer of adapter state. Three tiers sit behind it:
//   disk   the store (adapter-store.ts), or an allowed directory, holds the files: source of truth
//   host   decoded adapters in the engine's LRU (host-cache.ts), bounded in bytes
//   slots  rows of the running batch (lora-arena.ts)
// A request resolves a name once, at its start, and keeps that version to its end; a replace makes
// new requests use the new version; an unload waits for in-flight requests, or is refused.
// Adapters registered by path (load_lora_adapter) are recorded in the store directory
// (path-registrations.ts) and registered again at start-up (loadRegistrations).
// Shared store (several replicas on one store directory): store-sync.ts calls syncStore() and
// syncRegistrations() at a fixed interval to take the other replicas' uploads, replaces, deletes
// and load/unload_lora_adapter registrations over, with the same rules as a local change.
import { decodeAdapter, readAdapterDir, CONFIG_FILE, WEIGHTS_FILE } from './lora-adapter.ts';
import type { AdapterFiles, LoraAdapter } from './lora-adapter.ts';
import { existsSync, lstatSync, readdirSync } from 'node:fs';
import { readWhole } from './read-file.ts';
import { join, resolve } from 'node:path';
import { ADAPTER_NAME, AdapterStore, checkAdapterName, checkNewAdapterName } from './adapter-store.ts';
import { PathRegistrations } from './path-registrations.ts';
import type { PathRegistration } from './path-registrations.ts';
import type { StagedWrite } from './adapter-store.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import type { AdapterRef } from '../runtime/generate-request.ts';
import { LoraserveError } from '../runtime/errors.ts';
import { TARGETS } from '../runtime/model-targets.ts';
import { encodeMeta, META_FILE, NO_META, readMeta, writeFileAtomic } from './adapter-meta.ts';
import type { AdapterMeta } from './adapter-meta.ts';

// ready: served. unloading: an unload waits for its requests in flight (new ones get a 503 until
// it ends: gone, or ready again if it gives up). failed: the engine could not load the registered
// version back from disk (its files changed or vanished), or a registered path could not be loaded
// at start-up: 503 until it is reloaded.
export type AdapterStatus = 'ready' | 'unloading' | 'failed';

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
  error: string | null;       // why it is 'failed'
  description: string | null; // one line, shown in /v1/models (loraserve.json, adapter-meta.ts)
  examples: string[];         // example prompts for semantic routing (loraserve.json)
  recipe: Record<string, unknown> | null; // a merged adapter's recipe (its merge_recipe.json), else null
}

// A merged adapter's recipe, kept beside its PEFT files (written by POST /v1/adapters/merge and
// `loraserve merge`; src/merge/merge-files.ts says what it holds).
export const RECIPE_FILE = 'merge_recipe.json';
const MAX_RECIPE_BYTES = 1 << 20;

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
  // false: a registration that could not be loaded at start-up, listed as 'failed' with nothing in
  // the engine; its `dir` is the recorded path, checked again (pathCheck) before a reload reads it
  loaded: boolean;
}

// What a store sync changed (store-sync.ts logs it).
export interface SyncReport {
  loaded: string[];  // new, or a new version
  removed: string[]; // gone from the store, or unregistered
  failed: { name: string; error: string }[];
}

// What start-up made of the recorded path registrations (serve.ts logs it).
export interface RegistrationReport {
  file: string;
  problems: string[];        // what was wrong with the file (its copy: keptAside)
  keptAside: string | null;
  loaded: string[];
  changed: { name: string; path: string; was: PathRegistration; version: string }[]; // served with new content / from a new real path
  failed: { name: string; path: string; error: string }[]; // not served: listed as 'failed' (error: why)
}

export class AdapterRegistry {
  private readonly entries = new Map<string, Entry>();
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly drains = new Map<string, (() => void)[]>();
  // versions replaced while requests still used them: dropped from the engine once they finish
  private readonly retired = new Map<string, number>();
  storeLoaded = false; // every adapter in the store has been tried (readiness)
  private regs: PathRegistrations | null = null;
  // the allowed-directory rule for a recorded path (given by loadRegistrations; the server's rule)
  private pathCheck: ((path: string) => string) | null = null;
  // store.signature() of each store directory as this registry last loaded it (or failed to): a
  // directory whose signature differs was changed by someone else (syncStore)
  private readonly storeSigs = new Map<string, string>();
  private regsSig: string | null | undefined = undefined; // the registrations file as last synced

  constructor(
    private readonly engine: AdapterEngine,
    readonly model: ModelConfig,
    readonly modelName: string,
    readonly maxRank: number,
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
        const sig = this.store.signature(name);
        if (sig !== null) this.storeSigs.set(name, sig); // not tried again by syncStore until it changes
        failed.push({ name, error: (e as Error).message });
      }
    }
    this.storeLoaded = true;
    return { loaded, failed };
  }

  // The load_lora_adapter registrations, read from the store directory on first use.
  private get registrations(): PathRegistrations {
    return (this.regs ??= new PathRegistrations(this.store.root, { shared: this.store.shared !== null }));
  }

  // Register again every adapter recorded by load_lora_adapter (start-up, after the store; before
  // preloaded adapters). `check` is the rule load_lora_adapter applies to `lora_path` (the allowed
  // directories): each recorded path passes it again before anything is read there.
  // Decisions: content that changed since it was registered is served, with its new version, and
  // the record is updated; likewise a path that now resolves elsewhere (inside the allowed
  // directories). A registration that cannot be loaded (its directory moved or vanished, no longer
  // allowed, or its files invalid) is not served but stays registered and listed as 'failed' with
  // the reason: a directory that comes back (a late mount, a move undone) is served again by a
  // reload or the next start, and an unload forgets it. Nothing here stops the server starting.
  async loadRegistrations(check: (path: string) => string): Promise<RegistrationReport> {
    this.pathCheck = check;
    const regs = this.registrations;
    const report: RegistrationReport = { file: regs.file, problems: [...regs.problems], keptAside: regs.keptAside, loaded: [], changed: [], failed: [] };
    for (const [name, was] of regs.entries()) {
      let dir: string;
      try {
        dir = check(was.path);
        const info = await this.loadDir(name, dir, { replace: true, register: true });
        report.loaded.push(name);
        if (info.version !== was.version || dir !== was.path) report.changed.push({ name, path: dir, was, version: info.version });
      } catch (e) {
        const error = (e as Error).message;
        report.failed.push({ name, path: was.path, error });
        // (a name the store serves keeps the store's adapter; the record stays until an unload)
        if (!this.entries.has(name)) this.entries.set(name, notLoaded(name, was, `its registered directory ${was.path} could not be loaded at start-up: ${error}`));
      }
    }
    this.regsSig = regs.fileSignature();
    return report;
  }

  // Serve every adapter directory in `dir` (--preload-adapters: the demo adapters beside the
  // default model), read in place and never written: not part of the store, so a DELETE unloads
  // without deleting files. A name the store already serves keeps the store's adapter. Each may
  // have a loraserve.json (adapter-meta.ts: description, routing examples).
  async loadPreloaded(dir: string): Promise<{ loaded: string[]; failed: { name: string; error: string }[] }> {
    const loaded: string[] = [];
    const failed: { name: string; error: string }[] = [];
    for (const name of adapterDirs(dir)) {
      if (this.entries.has(name)) continue;
      try {
        await this.loadDir(name, join(dir, name), { replace: false, source: 'path' });
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

  // Every served adapter's current version (the engine warms them after a restart).
  refs(): AdapterRef[] {
    return [...this.entries.values()].filter((e) => e.status === 'ready').map((e) => this.refOf(e));
  }

  // The engine could not load this version back from its files: the adapter is 'failed' until a
  // reload (a newer version, or the same files restored) succeeds.
  markFailed(name: string, version: string, error: string): void {
    const e = this.entries.get(name);
    if (e && e.version === version && e.status === 'ready') { e.status = 'failed'; e.error = error; }
  }

  // Read the adapter's directory again (after its files were changed in place, or to recover a
  // failed one): the new version replaces the old one like a replace. A registration that could not
  // be loaded at start-up has its recorded path checked against the allowed directories again.
  async reload(name: string): Promise<AdapterInfo> {
    const e = this.entries.get(name);
    if (!e) throw new LoraserveError('model_not_found', `The lora adapter '${name}' cannot be found.`, { param: 'name' });
    if (!e.loaded) {
      if (!this.pathCheck) throw new LoraserveError('unavailable', `adapter '${name}' cannot be reloaded: ${e.error ?? 'it was never loaded'}`, { param: 'name' });
      return this.loadDir(name, this.pathCheck(e.dir), { replace: true, register: true });
    }
    return this.loadDir(name, e.dir, { replace: true, source: e.source, register: this.registrations.has(name) });
  }

  // A request starts: the adapter's current version, counted in flight until release().
  acquire(name: string): AdapterRef {
    const e = this.entries.get(name);
    if (!e || e.status !== 'ready') throw new LoraserveError('model_not_found', `The model \`${name}\` does not exist.`, { param: 'model' });
    e.inFlightByVersion.set(e.version, (e.inFlightByVersion.get(e.version) ?? 0) + 1);
    e.requestsServed++;
    return this.refOf(e);
  }

  private refOf(e: Entry): AdapterRef {
    return { name: e.name, version: e.version, dir: e.dir, ...(e.source === 'store' ? { retiredDir: this.store.retiredDirOf(e.name, e.version) } : {}) };
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

  // PATCH /v1/adapters/{name}: a stored adapter's description and/or examples, written atomically
  // as its loraserve.json (fields not given keep their values). Adapters served from a directory
  // outside the store (load_lora_adapter, preloaded) are read-only here: their files are theirs.
  async updateMeta(name: string, patch: Partial<AdapterMeta>): Promise<AdapterInfo> {
    return this.locked(name, async () => {
      const e = this.entries.get(name);
      if (!e) throw new LoraserveError('model_not_found', `The lora adapter '${name}' does not exist.`, { param: 'name' });
      if (e.source !== 'store' || resolve(e.dir) !== this.store.dirOf(name)) {
        throw new LoraserveError('conflict', `adapter '${name}' is served from ${e.dir}, not its own directory in the store, and loraserve never writes there: edit its ${META_FILE} there and reload it`, { param: 'name' });
      }
      const meta: AdapterMeta = { description: patch.description !== undefined ? patch.description : e.description, examples: patch.examples ?? e.examples };
      await writeFileAtomic(join(e.dir, META_FILE), encodeMeta(meta));
      e.description = meta.description;
      e.examples = meta.examples;
      return this.info(e);
    });
  }

  // Upload: validated first (an invalid adapter writes nothing), then staged outside the served
  // entries (fsynced), handed to the engine, then committed atomically. It takes `files` over:
  // their weights buffer moves to the engine thread.
  // `recipe`: a merge's recipe, stored beside the files (RECIPE_FILE) and listed with the adapter.
  // `meta`: its description and routing examples (adapter-meta.ts), stored as loraserve.json.
  async upload(name: string, files: AdapterFiles, opts: { replace: boolean; recipe?: Record<string, unknown>; meta?: AdapterMeta }): Promise<AdapterInfo> {
    checkAdapterName(name);
    checkNewAdapterName(name);
    return this.locked(name, async () => {
      // shared store: another replica may have changed the name on disk since the last poll; take
      // that over first, so that the replace check and the version kept for requests are right
      if (this.store.shared) await this.syncStoreName(name);
      this.checkReplace(name, opts.replace);
      const decoded = this.validate(name, files);
      const extra: Record<string, Uint8Array> = opts.recipe ? { [RECIPE_FILE]: new TextEncoder().encode(`${JSON.stringify(opts.recipe, null, 2)}\n`) } : {};
      if (opts.meta) extra[META_FILE] = encodeMeta(opts.meta);
      // the adapter's arrays may be views of files.weights: on disk first, then the engine takes them
      const staged = await this.store.stage(name, files, extra);
      // the store serves it from now on: a path registration of the name is forgotten
      return this.withRegistration(name, null, async () => this.install(name, decoded.adapter, decoded.warnings, this.store.dirOf(name), 'store', files, staged, opts.meta ?? NO_META, opts.recipe ?? null), () => staged.abort());
    });
  }

  // Load from a directory on the server (the store, or an allowed directory). `register`
  // (load_lora_adapter): record it (name, directory, version) so that it is registered again after
  // a restart, durably before it is served; the store's own directory for the name needs no record.
  async loadDir(name: string, dir: string, opts: { replace: boolean; source?: 'store' | 'path'; register?: boolean }): Promise<AdapterInfo> {
    checkAdapterName(name, 'lora_name');
    return this.locked(name, () => this.loadDirUnlocked(name, dir, opts));
  }

  private async loadDirUnlocked(name: string, dir: string, opts: { replace: boolean; source?: 'store' | 'path'; register?: boolean }): Promise<AdapterInfo> {
    this.checkReplace(name, opts.replace);
    const own = resolve(dir) === this.store.dirOf(name);
    const sig = own ? this.store.signature(name) : null; // before the read: a change during it is seen by the next sync
    const files = await readAdapterDir(dir);
    const { adapter, warnings } = this.validate(name, files);
    const recipe = await readRecipe(dir, warnings);
    const meta = readMeta(dir, warnings);
    const serve = async () => {
      // 'store' only for the name's own store directory: another adapter's (load_lora_adapter of a
      // path inside the store, an alias) is that adapter's files, never written through this name
      const info = await this.install(name, adapter, warnings, dir, opts.source ?? (own ? 'store' : 'path'), files, undefined, meta, recipe);
      if (sig !== null) this.storeSigs.set(name, sig);
      return info;
    };
    if (!opts.register) return serve();
    return this.withRegistration(name, own ? null : { path: resolve(dir), version: adapter.version }, serve);
  }

  // Shared store: take over what other replicas changed in the store directory since the last
  // call. A new adapter directory is loaded (validated like at start-up), a changed one replaces
  // the served version (requests in flight keep theirs, as with a local replace), one that is gone
  // is forgotten (requests in flight finish if they still can). Nothing on disk is written.
  async syncStore(): Promise<SyncReport> {
    const report: SyncReport = { loaded: [], removed: [], failed: [] };
    const disk = this.store.snapshot();
    for (const name of new Set([...disk.keys(), ...this.storeSigs.keys()])) {
      if (disk.get(name) === this.storeSigs.get(name)) continue;
      await this.locked(name, () => this.syncStoreName(name, report));
    }
    return report;
  }

  // One name of syncStore(), under its lock.
  private async syncStoreName(name: string, report: SyncReport = { loaded: [], removed: [], failed: [] }): Promise<void> {
    const sig = this.store.signature(name);
    if (sig === (this.storeSigs.get(name) ?? null)) return;
    if (sig === null) {
      this.storeSigs.delete(name);
      const e = this.entries.get(name);
      if (e?.source === 'store' && e.dir === this.store.dirOf(name)) {
        await this.forget(name);
        report.removed.push(name);
      }
      return;
    }
    try {
      await this.loadDirUnlocked(name, this.store.dirOf(name), { replace: true, source: 'store' });
      report.loaded.push(name);
    } catch (e) {
      this.storeSigs.set(name, sig); // tried again once it changes again
      report.failed.push({ name, error: (e as Error).message });
    }
  }

  // Shared store: take over the load_lora_adapter registrations other replicas recorded or
  // forgot (path-registrations.ts), as loadRegistrations() does at start-up; nothing is written.
  async syncRegistrations(report: SyncReport = { loaded: [], removed: [], failed: [] }): Promise<SyncReport> {
    const check = this.pathCheck;
    if (!check) return report; // before loadRegistrations (start-up)
    const regs = this.registrations;
    const sig = regs.fileSignature();
    if (sig === this.regsSig) return report;
    const disk = regs.readShared();
    this.regsSig = sig;
    if (!disk) return report; // unreadable (another replica's start-up sets it right): keep what is served
    const same = (a?: PathRegistration, b?: PathRegistration) => a?.path === b?.path && a?.version === b?.version;
    for (const name of new Set([...disk.keys(), ...regs.entries().map(([n]) => n)])) {
      if (same(disk.get(name), regs.get(name))) continue;
      await this.locked(name, async () => {
        const want = disk.get(name);
        const had = regs.get(name);
        if (same(want, had)) return;
        if (!want) {
          regs.adopt(name, null);
          if (this.entries.get(name)?.source === 'path') { await this.forget(name); report.removed.push(name); }
          return;
        }
        try {
          await this.loadDirUnlocked(name, check(want.path), { replace: true });
          report.loaded.push(name);
        } catch (e) {
          const error = (e as Error).message;
          report.failed.push({ name, error });
          if (!this.entries.has(name)) this.entries.set(name, notLoaded(name, want, `its registered directory ${want.path} could not be loaded: ${error}`));
        }
        regs.adopt(name, want);
      });
    }
    return report;
  }

  // Drop `name` from the registry without touching disk (another replica deleted or unloaded it):
  // new requests get a 404 at once; those in flight keep their version, dropped from the engine
  // when they end.
  private async forget(name: string): Promise<void> {
    const e = this.entries.get(name);
    if (!e) return;
    this.entries.delete(name);
    if (e.loaded) {
      const n = e.inFlightByVersion.get(e.version) ?? 0;
      if (n > 0) this.retired.set(e.version, (this.retired.get(e.version) ?? 0) + n);
      else await this.engine.dropAdapter(e.version).catch(() => undefined);
    }
    this.events.onEvict?.(name);
  }

  // Record `name`'s path registration (null: forget it) before `serve` runs; if `serve` fails, the
  // previous record is put back (and `undo` runs when the record itself cannot be written).
  private async withRegistration<T>(name: string, reg: PathRegistration | null, serve: () => Promise<T>, undo?: () => Promise<void>): Promise<T> {
    const regs = this.registrations;
    const prev = regs.get(name) ?? null;
    try {
      regs.set(name, reg);
    } catch (err) {
      await undo?.();
      throw err;
    }
    try {
      return await serve();
    } catch (err) {
      try { regs.set(name, prev); } catch { /* the record stays: start-up reports it if it cannot be served */ }
      throw err;
    }
  }

  // Unload: new requests get a 503 while it waits up to `waitMs` for the ones in flight; if they
  // do not end in time it gives up with a 409 and the adapter is served again at once (waitMs 0:
  // refuse at once when busy, with no pause at all). Deletes the stored files too when
  // `deleteFiles` (DELETE /v1/adapters/{name}).
  async unload(name: string, opts: { waitMs: number; deleteFiles: boolean }): Promise<void> {
    const notFound = () => new LoraserveError('model_not_found', `The lora adapter '${name}' cannot be found.`, { param: 'lora_name' });
    const current = this.entries.get(name);
    if (!current) throw notFound();
    const before = current.status === 'unloading' ? 'ready' : current.status;
    if (opts.waitMs > 0) current.status = 'unloading'; // from now on, no new requests
    return this.locked(name, async () => {
      const e = this.entries.get(name);
      if (!e) throw notFound();
      if (this.inFlight(e) > 0) {
        if (opts.waitMs > 0) e.status = 'unloading';
        if (opts.waitMs <= 0 || !(await this.drained(name, opts.waitMs))) {
          e.status = before;
          throw new LoraserveError('conflict', `adapter '${name}' still has ${this.inFlight(e)} request(s) in flight after ${opts.waitMs} ms; it is served again; try the unload later`, { param: 'lora_name' });
        }
      }
      try {
        this.registrations.set(name, null); // durably forgotten first: a failed write leaves it served
      } catch (err) {
        e.status = before;
        throw err;
      }
      this.entries.delete(name);
      if (opts.deleteFiles && e.source === 'store') { this.store.remove(name); this.storeSigs.delete(name); }
      if (e.loaded) await this.engine.dropAdapter(e.version).catch(() => undefined); // best effort: a restarting engine holds no copy
      this.events.onEvict?.(name);
    });
  }

  // Resolves true once the adapter has no request in flight, false after `ms`.
  private drained(name: string, ms: number): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      const list = this.drains.get(name) ?? [];
      list.push(() => { clearTimeout(timer); resolve(true); });
      this.drains.set(name, list);
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
  private async install(name: string, adapter: LoraAdapter, warnings: string[], dir: string, source: 'store' | 'path', files: AdapterFiles, staged?: StagedWrite, meta: AdapterMeta = NO_META, recipe: Record<string, unknown> | null = null): Promise<AdapterInfo> {
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
    const replaced = prev && prev.loaded && prev.version !== info.version ? prev : null;
    // a replaced stored version keeps its files (retiredDirOf) while requests that started with it
    // run: requests may still acquire it until the new entry is in place
    // (shared store: removeRetired leaves it for its grace period, for other replicas' requests)
    try {
      await staged?.commit(replaced?.source === 'store' ? replaced.version : undefined);
    } catch (err) {
      if (prev?.version !== info.version) await this.engine.dropAdapter(info.version);
      throw err;
    }
    const entry: Entry = {
      name, ...info, status: 'ready', source, dir, warnings, error: null, description: meta.description, examples: meta.examples, recipe, loaded: true,
      requestsServed: prev?.requestsServed ?? 0,
      loadedAt: Math.floor(Date.now() / 1000),
      inFlightByVersion: prev?.inFlightByVersion ?? new Map(),
    };
    this.entries.set(name, entry); // new requests get the new version from here on
    if (staged?.signature) this.storeSigs.set(name, staged.signature);
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
    const { inFlightByVersion: _m, loaded: _l, ...rest } = e;
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

// The entry of a registration that could not be loaded at start-up: listed, not served.
function notLoaded(name: string, reg: PathRegistration, error: string): Entry {
  return {
    name, version: reg.version, status: 'failed', source: 'path', dir: reg.path, rank: 0, targets: [], layers: 0, useDora: false,
    decodedBytes: 0, fileBytes: 0, requestsServed: 0, loadedAt: Math.floor(Date.now() / 1000), warnings: [], error,
    description: null, examples: [], recipe: null, inFlightByVersion: new Map(), loaded: false,
  };
}


// The adapter directories in `dir` (named like adapters, not links, with both PEFT files), sorted.
function adapterDirs(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((e) => ADAPTER_NAME.test(e) && lstatSync(join(dir, e), { throwIfNoEntry: false })?.isDirectory())
    .filter((e) => [CONFIG_FILE, WEIGHTS_FILE].every((f) => lstatSync(join(dir, e, f), { throwIfNoEntry: false })?.isFile()))
    .sort();
}

// The directory's merge recipe (RECIPE_FILE), if it has one: a JSON object, at most 1 MiB, a regular
// file. One that cannot be read is a warning, not a refusal: the adapter itself is valid.
async function readRecipe(dir: string, warnings: string[]): Promise<Record<string, unknown> | null> {
  const path = join(dir, RECIPE_FILE);
  if (!lstatSync(path, { throwIfNoEntry: false })) return null;
  try {
    const v: unknown = JSON.parse(new TextDecoder().decode(await readWhole(path, undefined, { maxBytes: MAX_RECIPE_BYTES, warm: false })));
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (e) {
    warnings.push(`${RECIPE_FILE} is ignored: ${(e as Error).message}`);
    return null;
  }
}
