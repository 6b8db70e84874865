// The adapters registered with POST /v1/load_lora_adapter (served in place from a directory the
// server may read), kept in the store directory so they are registered again after a restart:
//   <store>/.path-adapters.json   {"format":1,"adapters":{"<name>":{"path":"/real/dir","version":"<hash>"}}}
// The name starts with '.', which no adapter name may, so it never meets an upload's directory.
// Written whole on each change, atomically: .tmp-path-adapters-<random> (written, fsynced) is
// renamed over the file, then the store directory is fsynced (the store's start-up removes a .tmp-
// leftover). Uploaded and preloaded adapters are never recorded here.
// The paths in the file are not trusted: the server checks each one again at start-up with the
// same rule as load_lora_adapter (server/adapter-path.ts) before anything is read there.
// A file that cannot be read as this (bad JSON, wrong shape, not a regular file) does not stop the
// server: a copy is kept aside as .path-adapters.corrupt-<time>.json, the entries that are valid
// are kept (none, for a file that is not JSON) and the file is rewritten with just those.
// Shared store (several replicas): the file is shared too. The map here is what this replica has
// applied; set() reads the file again and writes it with just its own change applied, so it keeps
// the other replicas' registrations (two replicas writing at the same instant: the last rename
// wins). store-sync.ts polls fileSignature(), reads the file with readShared() (never rewriting
// it, even when it is corrupt) and applies the difference with adopt().
import { closeSync, copyFileSync, fsyncSync, lstatSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ADAPTER_NAME } from './adapter-store.ts';

export const REGISTRATIONS_FILE = '.path-adapters.json';
const FORMAT = 1;
const MAX_FILE_BYTES = 16 << 20;
const MAX_PATH_CHARS = 4096;
const VERSION = /^[0-9a-f]{16}$/; // lora-adapter.ts adapterVersion()

export interface PathRegistration {
  path: string;    // the adapter's directory, as resolved (realpath) when it was registered
  version: string; // its content hash then
}

export class PathRegistrations {
  readonly file: string;
  // What was wrong with the file at start-up, and where its copy went (for the log).
  readonly problems: string[] = [];
  keptAside: string | null = null;
  private readonly map = new Map<string, PathRegistration>();

  constructor(readonly root: string, private readonly opts: { shared?: boolean } = {}) {
    this.file = join(root, REGISTRATIONS_FILE);
    this.read();
  }

  // What identifies the file's content without reading it (null: there is none).
  fileSignature(): string | null {
    const st = lstatSync(this.file, { throwIfNoEntry: false });
    return st ? `${st.ino}:${st.size}:${st.mtimeMs}` : null;
  }

  // The registrations in the file now (none when there is no file), or null when it cannot be read
  // as a whole: read only, nothing is set aside or rewritten.
  readShared(): Map<string, PathRegistration> | null {
    const st = lstatSync(this.file, { throwIfNoEntry: false });
    if (!st) return new Map();
    const r = parseFile(this.file, st);
    return r.problems.length ? null : r.map;
  }

  // Take another replica's change over: in memory only, the file already says it.
  adopt(name: string, reg: PathRegistration | null): void {
    if (reg === null) this.map.delete(name);
    else this.map.set(name, { path: reg.path, version: reg.version });
  }

  get(name: string): PathRegistration | undefined {
    const r = this.map.get(name);
    return r ? { ...r } : undefined;
  }

  has(name: string): boolean {
    return this.map.has(name);
  }

  // Every registration, by name.
  entries(): [string, PathRegistration][] {
    return [...this.map.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([n, r]) => [n, { ...r }]);
  }

  // Record `name` (null: forget it), durably before it returns; unchanged on a failed write.
  set(name: string, reg: PathRegistration | null): void {
    const prev = this.map.get(name);
    const same = (r?: PathRegistration) => (reg === null ? !r : !!r && r.path === reg.path && r.version === reg.version);
    // shared: the file may say otherwise (another replica's change not yet adopted)
    const disk = this.opts.shared ? this.readShared() : null;
    if (same(prev) && (!disk || same(disk.get(name)))) return;
    if (reg === null) this.map.delete(name);
    else this.map.set(name, { path: reg.path, version: reg.version });
    try {
      if (this.opts.shared) {
        const written = disk ?? new Map(this.map); // unreadable: what this replica knows
        if (reg === null) written.delete(name);
        else written.set(name, { path: reg.path, version: reg.version });
        this.write(written);
      } else {
        this.write();
      }
    } catch (err) {
      if (prev) this.map.set(name, prev);
      else this.map.delete(name);
      throw err;
    }
  }

  private read(): void {
    const st = lstatSync(this.file, { throwIfNoEntry: false });
    if (!st) return;
    const parsed = parseFile(this.file, st);
    for (const [name, r] of parsed.map) this.map.set(name, r);
    this.problems.push(...parsed.problems);
    if (!this.problems.length) return;
    // keep the file for a person to look at, then go on with what was valid
    const aside = join(this.root, `.path-adapters.corrupt-${new Date().toISOString().replace(/[:.]/g, '-')}-${randomBytes(3).toString('hex')}.json`);
    try {
      if (st.isFile()) copyFileSync(this.file, aside);
      else renameSync(this.file, aside);
      this.keptAside = aside;
      this.write();
    } catch (e) {
      this.problems.push(`could not be set aside or rewritten: ${(e as Error).message}`);
    }
  }

  private write(map: Map<string, PathRegistration> = this.map): void {
    const adapters: Record<string, PathRegistration> = {};
    for (const [name, r] of [...map.entries()].sort(([a], [b]) => a.localeCompare(b))) adapters[name] = { path: r.path, version: r.version };
    const bytes = Buffer.from(`${JSON.stringify({ format: FORMAT, adapters }, null, 2)}\n`);
    const tmp = join(this.root, `.tmp-path-adapters-${randomBytes(6).toString('hex')}`);
    try {
      const fd = openSync(tmp, 'wx', 0o600);
      try {
        let off = 0;
        while (off < bytes.length) off += writeSync(fd, bytes, off);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, this.file);
    } catch (err) {
      rmSync(tmp, { force: true });
      throw err;
    }
    syncDir(this.root);
  }
}

// The file's valid entries, and what was wrong with it (an entry, or the whole file: then no entries).
function parseFile(file: string, st: Stats): { map: Map<string, PathRegistration>; problems: string[] } {
  const map = new Map<string, PathRegistration>();
  const problems: string[] = [];
  try {
    if (!st.isFile()) throw new Error('not a regular file');
    if (st.size > MAX_FILE_BYTES) throw new Error(`larger than ${MAX_FILE_BYTES} bytes`);
    const data: unknown = JSON.parse(readFileSync(file, 'utf8'));
    if (typeof data !== 'object' || data === null || Array.isArray(data)) throw new Error('not a JSON object');
    const d = data as { format?: unknown; adapters?: unknown };
    if (d.format !== FORMAT) throw new Error(`"format" is ${JSON.stringify(d.format)}, not ${FORMAT}`);
    if (typeof d.adapters !== 'object' || d.adapters === null || Array.isArray(d.adapters)) throw new Error('"adapters" is not an object');
    for (const [name, v] of Object.entries(d.adapters as Record<string, unknown>)) {
      const problem = entryProblem(name, v);
      if (problem) problems.push(`entry ${JSON.stringify(name.slice(0, 200))} ignored: ${problem}`);
      else map.set(name, { path: (v as PathRegistration).path, version: (v as PathRegistration).version });
    }
  } catch (e) {
    map.clear();
    problems.push(`unreadable, every registration in it ignored: ${(e as Error).message}`);
  }
  return { map, problems };
}

// Why a stored entry cannot be used as it is (null: it can). Its path is only checked for form here;
// the allowed-directory rule is the server's, applied before use.
function entryProblem(name: string, v: unknown): string | null {
  if (!ADAPTER_NAME.test(name) || name.includes('..')) return 'not a valid adapter name';
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'not an object';
  const { path, version } = v as { path?: unknown; version?: unknown };
  if (typeof path !== 'string' || !isAbsolute(path) || path.includes('\0') || path.length > MAX_PATH_CHARS) return '"path" is not an absolute path';
  if (typeof version !== 'string' || !VERSION.test(version)) return '"version" is not an adapter version';
  return null;
}

function syncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try { fsyncSync(fd); } finally { closeSync(fd); }
}
