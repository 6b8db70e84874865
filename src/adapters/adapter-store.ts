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
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, renameSync, openSync, fsyncSync, closeSync, lstatSync } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { basename, join, resolve, sep } from 'node:path';
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

const STAGING = '.staging';
const MARKER = '.replacing-';
const OLD = '.old-';
const RETIRED = '.retired-';
const TRASH = '.trash-';
const LEFTOVERS = [MARKER, OLD, RETIRED, TRASH, '.tmp-'];

// For tests only: called at the points where a crash is the most harmful, e.g. to exit the process.
export interface StoreFaults {
  beforeSecondRename?: () => void; // commit(): the old version moved aside, the new one not yet in
  afterRemoveRename?: () => void;  // remove(): the adapter renamed to .trash-, not yet removed
}

export interface StagedWrite {
  commit(keepPrevious?: string): Promise<string>;
  abort(): Promise<void>;
}

export class AdapterStore {
  readonly root: string;

  private readonly faults: StoreFaults;
  private pending = 0; // stages not yet committed or aborted: .staging exists only while there are some

  // opts.faults: for tests only (crash injection); never set in the server.
  constructor(root: string, opts: { faults?: StoreFaults } = {}) {
    this.root = resolve(root);
    this.faults = opts.faults ?? {};
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
      if (!existsSync(join(this.root, name)) && existsSync(join(this.root, aside))) {
        renameSync(join(this.root, aside), join(this.root, name));
        syncDir(this.root);
      }
    }
    for (const e of readdirSync(this.root)) {
      if (e === STAGING || LEFTOVERS.some((p) => e.startsWith(p))) rmSync(join(this.root, e), { recursive: true, force: true });
    }
  }

  dirOf(name: string): string {
    return join(this.root, checkAdapterName(name));
  }

  // A replaced version that requests still use keeps its files here until they end, so the engine
  // can read it back if host memory dropped it (adapter versions are hex content hashes).
  retiredDirOf(name: string, version: string): string {
    return join(this.root, `${RETIRED}${checkAdapterName(name)}-${version}`);
  }

  async removeRetired(name: string, version: string): Promise<void> {
    await rm(this.retiredDirOf(name, version), { recursive: true, force: true });
  }

  contains(path: string): boolean {
    const p = resolve(path);
    return p.startsWith(this.root + sep);
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
      if (--this.pending === 0) rmSync(join(this.root, STAGING), { recursive: true, force: true });
    };
    const abort = async () => {
      try { await rm(tmp, { recursive: true, force: true }); } finally { done(); }
    };
    this.pending++;
    await mkdir(tmp, { recursive: true });
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
    const commit = async (keepPrevious?: string): Promise<string> => {
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
        await rename(tmp, target);
        syncDir(this.root);
      } catch (err) {
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
    return { commit, abort };
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

function syncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try { fsyncSync(fd); } finally { closeSync(fd); }
}
