// The adapter store: a directory with one PEFT directory per adapter, named after it. The source
// of truth for uploaded adapters, so they are served again after a restart. Writes are atomic: the
// files go to a temporary directory (each fsynced), which is renamed into place.
import { existsSync, mkdirSync, readdirSync, rmSync, renameSync, openSync, fsyncSync, closeSync, statSync } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';
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

const RETIRED = '.retired-';

export interface StagedWrite {
  commit(keepPrevious?: string): Promise<string>;
  abort(): Promise<void>;
}

export class AdapterStore {
  readonly root: string;

  constructor(root: string) {
    this.root = resolve(root);
    mkdirSync(this.root, { recursive: true });
    // leftovers of an interrupted write or replace
    for (const e of readdirSync(this.root)) if (e.startsWith('.tmp-') || e.startsWith('.trash-') || e.startsWith(RETIRED)) rmSync(join(this.root, e), { recursive: true, force: true });
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
      .filter((e) => ADAPTER_NAME.test(e) && statSync(join(this.root, e)).isDirectory())
      .filter((e) => existsSync(join(this.root, e, CONFIG_FILE)) && existsSync(join(this.root, e, WEIGHTS_FILE)))
      .sort();
  }

  // The files, fsynced, in a temporary directory; commit() renames it into place (replacing an
  // older version), abort() removes it. Staging can run while the upload is validated, and a
  // failed validation leaves the store as it was.
  async stage(name: string, files: AdapterFiles): Promise<StagedWrite> {
    const target = this.dirOf(name);
    const tmp = join(this.root, `.tmp-${randomBytes(6).toString('hex')}`);
    const abort = () => rm(tmp, { recursive: true, force: true });
    await mkdir(tmp);
    try {
      await Promise.all([writeSynced(join(tmp, CONFIG_FILE), files.config), writeSynced(join(tmp, WEIGHTS_FILE), files.weights)]);
    } catch (err) {
      await abort();
      throw err;
    }
    // keepPrevious: the version being replaced, whose files move to retiredDirOf(it) instead of away
    const commit = async (keepPrevious?: string): Promise<string> => {
      let trash: string | null = null;
      try {
        if (existsSync(target)) {
          const kept = keepPrevious ? this.retiredDirOf(name, keepPrevious) : null;
          if (kept) await rm(kept, { recursive: true, force: true });
          trash = kept ?? join(this.root, `.trash-${randomBytes(6).toString('hex')}`);
          await rename(target, trash);
        }
        await rename(tmp, target);
        syncDir(this.root);
      } catch (err) {
        if (trash && !existsSync(target)) await rename(trash, target); // put the previous version back
        await abort();
        throw err;
      }
      if (trash && !keepPrevious) await rm(trash, { recursive: true, force: true });
      return target;
    };
    return { commit, abort };
  }

  remove(name: string): void {
    const target = this.dirOf(name);
    if (!existsSync(target)) return;
    const trash = join(this.root, `.trash-${randomBytes(6).toString('hex')}`);
    renameSync(target, trash);
    syncDir(this.root);
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

function syncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try { fsyncSync(fd); } finally { closeSync(fd); }
}
