// The adapter store: a directory with one PEFT directory per adapter, named after it. The source
// of truth for uploaded adapters, so they are served again after a restart.
//
// On disk (each rename that matters is followed by an fsync of the store directory):
//   <name>/                     a served adapter
//   .staging/<random>/          an upload being written (files fsynced); the root's other entries
//                               do not change until commit() renames it to <name>. .staging is
//                               there only while uploads are staged
//   .replacing-<name>           written (fsynced) by commit() before <name> moves aside: the name of
//                               the copy that then holds the old version
//   .old-<name>/                the replaced version, during a replace
//   .retired-<name>-<version>/  a replaced version that requests still use (kept until they end)
//   .trash-<random>/            a deleted adapter, being removed
// Replace: marker; <name> → .old-<name> or .retired-…; .staging/<random> → <name>; drop marker
// (and .old-<name>). Delete: drop a stale marker; <name> → .trash-<random>; remove that.
// Start-up: where <name> is missing and its marker names a copy that exists, that copy is renamed
// back; then every leftover above is removed (.staging's contents, markers, .old-, .retired-,
// .trash-, and .tmp- of older versions). An operation has happened exactly when its decisive
// rename is durable: a replace that crashes before `.staging/<random> → <name>` keeps the old
// version, after it the new one; a delete that crashes after `<name> → .trash-<random>` stays
// deleted (no marker can bring it back), before it the adapter is still there. Never nothing.
//
// Shared store (opts.shared: several replicas on one directory, e.g. a ReadWriteMany volume; see
// store-sync.ts for how the others see a change). Another replica's operation in progress looks
// exactly like a crash leftover, so in a shared store a leftover is removed only once it is old:
//   - start-up (and sweep(), which the store sync runs now and then) removes a leftover only once
//     its ctime (set by the rename or write that made it) is older than leftoverAgeMs (10 min):
//     .staging/<random> one by one (.staging itself only when empty), markers, .old-, .trash-, .tmp-.
//   - a marker whose <name> is missing is acted on at once only when it is old; a young one may be
//     another replica between its two renames, so start-up waits up to MARKER_WAIT_MS for <name> to
//     appear before putting the copy back (if that replica then commits, its rename finds <name>
//     there and its upload fails, leaving the old version: never nothing).
//   - a replace always keeps the replaced version in .retired-<name>-<version> (the registry gives
//     it), since requests on other replicas may still read it; removeRetired() does not remove it:
//     it stays retiredGraceMs (10 min) after the replace, then a sweep on any replica removes it.
//     A request on another replica that runs longer than that and needs to read its version from
//     disk again (its engine restarted, or the version left host memory while it was not pinned)
//     fails with 503 'unavailable' instead of reading another version.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, rmdirSync, renameSync, openSync, fsyncSync, closeSync, lstatSync } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { CONFIG_FILE, WEIGHTS_FILE } from './lora-adapter.ts';
import type { AdapterFiles } from './lora-adapter.ts';
import { invalidField } from '../runtime/errors.ts';

export const ADAPTER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function checkAdapterName(name: unknown, param = 'name'): string {
  if (typeof name !== 'string' || !ADAPTER_NAME.test(name) || name.includes('..')) {
    throw invalidField(param, `'${param}' must be 1–128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit, with no path separators or '..' (got ${JSON.stringify(name)})`);
  }
  return name;
}

// Names a new adapter may not take: `model: "auto"` asks for semantic routing (server/model-selector.ts),
// so an adapter of that name would take routing over. (Adapters stored under it before this rule
// still load at start-up: nothing on disk is dropped.)
export const RESERVED_NAMES: readonly string[] = ['auto'];

export function checkNewAdapterName(name: string, param = 'name'): void {
  if (RESERVED_NAMES.includes(name.toLowerCase())) throw invalidField(param, `'${name}' is reserved: model "${name.toLowerCase()}" asks for semantic routing; choose another name`);
}

const STAGING = '.staging';
const MARKER = '.replacing-';
const OLD = '.old-';
const RETIRED = '.retired-';
const TRASH = '.trash-';
const LEFTOVERS = [MARKER, OLD, RETIRED, TRASH, '.tmp-'];

// A shared store's clean-up rules (see the top of this file).
export interface SharedStoreOptions {
  leftoverAgeMs: number;  // a leftover younger than this may be another replica's operation in progress
  retiredGraceMs: number; // a replaced version's files stay this long for other replicas' requests
}
export const SHARED_STORE_DEFAULTS: SharedStoreOptions = { leftoverAgeMs: 10 * 60_000, retiredGraceMs: 10 * 60_000 };
const MARKER_WAIT_MS = 2_000;

// For tests only: called at the points where a crash is the most harmful, e.g. to exit the process.
export interface StoreFaults {
  beforeSecondRename?: () => void; // commit(): the old version moved aside, the new one not yet in
  afterRemoveRename?: () => void;  // remove(): the adapter renamed to .trash-, not yet removed
}

export interface StagedWrite {
  commit(keepPrevious?: string): Promise<string>;
  abort(): Promise<void>;
  signature: string | null; // after commit(): the committed directory's signature() (its inode is kept by the rename)
}

export class AdapterStore {
  readonly root: string;
  readonly shared: SharedStoreOptions | null;

  private readonly faults: StoreFaults;
  private pending = 0; // stages not yet committed or aborted: .staging exists only while there are some

  // opts.faults: for tests only (crash injection); never set in the server.
  // opts.shared: other replicas may use the directory too (true: SHARED_STORE_DEFAULTS).
  constructor(root: string, opts: { faults?: StoreFaults; shared?: SharedStoreOptions | boolean } = {}) {
    this.root = resolve(root);
    this.faults = opts.faults ?? {};
    this.shared = opts.shared === true ? { ...SHARED_STORE_DEFAULTS } : opts.shared || null;
    mkdirSync(this.root, { recursive: true });
    this.recover();
  }

  // Start-up: put back a version a crashed replace had moved aside, then remove the leftovers.
  private recover(): void {
    for (const e of readdirSync(this.root)) {
      if (!e.startsWith(MARKER)) continue;
      const name = e.slice(MARKER.length);
      const aside = readMarker(join(this.root, e));
      if (!ADAPTER_NAME.test(name) || !aside || !isAsideOf(name, aside)) continue;
      const target = join(this.root, name);
      if (!existsSync(target) && existsSync(join(this.root, aside))) {
        // shared: a young marker may be another replica between its renames: give it time to finish
        const age = this.ageMs(join(this.root, e));
        if (this.shared && age !== null && age < this.shared.leftoverAgeMs) {
          const until = Date.now() + MARKER_WAIT_MS;
          while (!existsSync(target) && Date.now() < until) sleepSync(50);
          if (existsSync(target)) continue;
        }
        try {
          renameSync(join(this.root, aside), target);
        } catch (err) {
          if (!this.shared || !existsSync(target)) throw err; // another replica's commit came in first
        }
        syncDir(this.root);
        if (this.shared) rmSync(join(this.root, e), { force: true }); // used up
      }
    }
    if (this.shared) { this.sweep(); return; }
    for (const e of readdirSync(this.root)) {
      if (e === STAGING || LEFTOVERS.some((p) => e.startsWith(p))) rmSync(join(this.root, e), { recursive: true, force: true });
    }
  }

  // Shared store: remove the leftovers old enough to be no other replica's operation in progress,
  // and the retired versions past their grace period (start-up, then now and then: store-sync.ts).
  // Returns what it removed. A single replica's store removes every leftover at start-up instead.
  sweep(now = Date.now()): string[] {
    const shared = this.shared;
    if (!shared) return [];
    const removed: string[] = [];
    const drop = (path: string, maxAge: number): void => {
      const age = this.ageMs(path, now);
      if (age === null || age < maxAge) return;
      try { rmSync(path, { recursive: true, force: true }); removed.push(path); } catch { /* the next sweep */ }
    };
    for (const e of safeReaddir(this.root)) {
      if (e === STAGING) {
        const staging = join(this.root, STAGING);
        for (const s of safeReaddir(staging)) drop(join(staging, s), shared.leftoverAgeMs);
        if (this.pending === 0) try { rmdirSync(staging); } catch { /* not empty: another replica's upload */ }
      } else if (e.startsWith(RETIRED)) drop(join(this.root, e), shared.retiredGraceMs);
      else if (LEFTOVERS.some((p) => e.startsWith(p))) drop(join(this.root, e), shared.leftoverAgeMs);
    }
    return removed;
  }

  // How long ago the entry was made or moved (its ctime: a rename sets it), null if it is gone.
  private ageMs(path: string, now = Date.now()): number | null {
    const st = lstatSync(path, { throwIfNoEntry: false });
    return st ? now - Math.max(st.ctimeMs, st.mtimeMs) : null;
  }

  // What identifies the version on disk without reading it: the directory's inode (a commit renames
  // a new directory in) and the inode, size and mtime of each PEFT file (an edit in place). null
  // when <name> is not a served adapter directory. One lstat each: cheap enough to poll.
  signature(name: string): string | null {
    return signatureOf(join(this.root, name));
  }

  // Every served adapter's signature (store-sync.ts polls it).
  snapshot(): Map<string, string> {
    const out = new Map<string, string>();
    for (const e of safeReaddir(this.root)) {
      if (!ADAPTER_NAME.test(e)) continue;
      const sig = signatureOf(join(this.root, e));
      if (sig !== null) out.set(e, sig);
    }
    return out;
  }

  dirOf(name: string): string {
    return join(this.root, checkAdapterName(name));
  }

  // A replaced version that requests still use keeps its files here until they end, so the engine
  // can read it back if host memory dropped it (adapter versions are hex content hashes).
  retiredDirOf(name: string, version: string): string {
    return join(this.root, `${RETIRED}${checkAdapterName(name)}-${version}`);
  }

  // Shared store: kept for its grace period instead (other replicas' requests may read it).
  async removeRetired(name: string, version: string): Promise<void> {
    if (this.shared) return;
    await rm(this.retiredDirOf(name, version), { recursive: true, force: true });
  }

  list(): string[] {
    return readdirSync(this.root)
      .filter((e) => ADAPTER_NAME.test(e) && lstatSync(join(this.root, e), { throwIfNoEntry: false })?.isDirectory()) // a link is not served
      .filter((e) => [CONFIG_FILE, WEIGHTS_FILE].every((f) => lstatSync(join(this.root, e, f), { throwIfNoEntry: false })?.isFile()))
      .sort();
  }

  // The files, fsynced, under .staging/; commit() renames them into place (replacing an older
  // version), abort() removes them. Staging can run while the upload is validated, and a failed
  // validation leaves the served entries as they were.
  // `extra`: more files for the directory (e.g. a merge's merge_recipe.json), written the same way.
  async stage(name: string, files: AdapterFiles, extra: Record<string, Uint8Array> = {}): Promise<StagedWrite> {
    const target = this.dirOf(name);
    const tmp = join(this.root, STAGING, randomBytes(6).toString('hex'));
    let settled = false;
    const done = () => {
      if (settled) return;
      settled = true;
      if (--this.pending > 0) return;
      // shared: other replicas may be staging there too; .staging goes only once it is empty
      if (this.shared) try { rmdirSync(join(this.root, STAGING)); } catch { /* not empty, or gone */ }
      else rmSync(join(this.root, STAGING), { recursive: true, force: true });
    };
    const abort = async () => {
      try { await rm(tmp, { recursive: true, force: true }); } finally { done(); }
    };
    this.pending++;
    try {
      // (shared: another replica may remove an empty .staging between the two mkdirs: try again)
      for (let i = 0; ; i++) {
        try { await mkdir(tmp, { recursive: true }); break; } catch (err) { if (!this.shared || i >= 4 || (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err; }
      }
    } catch (err) {
      done();
      throw err;
    }
    try {
      for (const f of Object.keys(extra)) if (basename(f) !== f || f === CONFIG_FILE || f === WEIGHTS_FILE || f.startsWith('.')) throw new Error(`extra adapter file ${JSON.stringify(f)}: a plain file name other than the PEFT files`);
      await Promise.all([writeSynced(join(tmp, CONFIG_FILE), files.config), writeSynced(join(tmp, WEIGHTS_FILE), files.weights),
        ...Object.entries(extra).map(([f, bytes]) => writeSynced(join(tmp, f), bytes))]);
      syncDir(tmp);
    } catch (err) {
      await abort();
      throw err;
    }
    // keepPrevious: the version being replaced, whose files move to retiredDirOf(it) instead of away
    const staged: StagedWrite = { commit: async () => '', abort, signature: null };
    staged.commit = async (keepPrevious?: string): Promise<string> => {
      const aside = keepPrevious ? this.retiredDirOf(name, keepPrevious) : join(this.root, OLD + name);
      const marker = join(this.root, MARKER + name);
      let moved = false;
      try {
        if (existsSync(target)) {
          await rm(aside, { recursive: true, force: true });
          await writeSynced(marker, new TextEncoder().encode(basename(aside)));
          syncDir(this.root);
          await rename(target, aside);
          moved = true;
          syncDir(this.root);
          this.faults.beforeSecondRename?.();
        }
        staged.signature = signatureOf(tmp);
        await rename(tmp, target);
        syncDir(this.root);
      } catch (err) {
        staged.signature = null;
        if (moved && !existsSync(target)) { // put the previous version back
          await rename(aside, target);
          syncDir(this.root);
          await rm(marker, { force: true });
        }
        await abort();
        throw err;
      }
      // the new version is in place: what is left is leftovers, which start-up removes if this fails
      await Promise.all([rm(marker, { force: true }), keepPrevious ? null : rm(aside, { recursive: true, force: true })]).catch(() => undefined);
      done();
      return target;
    };
    return staged;
  }

  remove(name: string): void {
    const target = this.dirOf(name);
    if (!existsSync(target)) return;
    const marker = join(this.root, MARKER + name);
    if (existsSync(marker)) { // stale (a clean-up that failed): it must not bring the adapter back
      rmSync(marker);
      syncDir(this.root);
    }
    const trash = join(this.root, `${TRASH}${randomBytes(6).toString('hex')}`);
    renameSync(target, trash);
    syncDir(this.root); // the delete has happened
    this.faults.afterRemoveRename?.();
    rmSync(trash, { recursive: true, force: true });
  }
}

async function writeSynced(path: string, bytes: Uint8Array): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.writeFile(bytes);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

// The copies a marker may name: what commit() moves <name> aside to.
function isAsideOf(name: string, entry: string): boolean {
  return basename(entry) === entry && (entry === OLD + name || entry.startsWith(`${RETIRED}${name}-`));
}

function readMarker(path: string): string | null {
  try { return readFileSync(path, 'utf8'); } catch { return null; }
}

function signatureOf(dir: string): string | null {
  const d = lstatSync(dir, { throwIfNoEntry: false });
  if (!d?.isDirectory()) return null; // a link is not served
  const c = lstatSync(join(dir, CONFIG_FILE), { throwIfNoEntry: false });
  const w = lstatSync(join(dir, WEIGHTS_FILE), { throwIfNoEntry: false });
  if (!c?.isFile() || !w?.isFile()) return null;
  return `${d.ino}:${c.ino}:${c.size}:${c.mtimeMs}:${w.ino}:${w.size}:${w.mtimeMs}`;
}

function safeReaddir(dir: string): string[] {
  try { return readdirSync(dir); } catch { return []; }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function syncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try { fsyncSync(fd); } finally { closeSync(fd); }
}
