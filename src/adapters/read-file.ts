// A whole file into a warm buffer (warm-buffers.ts), read in chunks through small reused staging
// buffers, with each chunk handed to `onChunk` (the version hash) while the next one is read.
//
// Why staging: on this VM the kernel's copy into pages that read() has never written costs
// ~6 µs a page, even when user code has just touched them (an 11 MB adapter read straight into
// its own buffer took 16–35 ms), while a read into a buffer that read() wrote before runs at
// memory speed (~0.8 ms), and a user-space copy into touched pages too (~0.6 ms). Measured with
// scratch probes; docs/architecture.md "Adapter load path".
//
// Only regular files are read: the file is opened without following a symbolic link (O_NOFOLLOW)
// and without waiting for a writer or a device (O_NONBLOCK), and the open handle is checked with
// fstat, so nothing outside an allowed directory is read through a link, and a FIFO never holds a
// thread of the libuv pool. Sizes are capped, and the whole read has a deadline (a hung network
// mount); refusals are 422 invalid_adapter errors that name the file, never its content.
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { LoraserveError } from '../runtime/errors.ts';
import { prepareSpare, takeBuffer } from './warm-buffers.ts';

const CHUNK = 1 << 20;
const idle: Uint8Array[] = []; // staging chunks not in use, reused by the next read on this thread
const KEEP_IDLE = 4;           // kept after concurrent reads (each takes two)

export const DEFAULT_MAX_BYTES = 2 ** 31;   // 2 GiB
export const DEFAULT_TIMEOUT_MS = 30_000;
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

export interface ReadOptions {
  maxBytes?: number;   // larger files are refused (default 2 GiB)
  timeoutMs?: number;  // the whole read, open included (default 30 s)
  name?: string;       // the file's name in errors (default: its base name)
  warm?: boolean;      // into a warm spare, and ask for the next one (default true; false for small files)
}

export async function readWhole(path: string, onChunk: (bytes: Uint8Array) => void = () => undefined, opts: ReadOptions = {}): Promise<Uint8Array> {
  const name = opts.name ?? basename(path);
  const ms = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  return withTimeout(ms, () => refusal(path, name, `could not be read within ${ms} ms (a hung or slow file system?)`),
    (expired) => readChecked(path, onChunk, { ...opts, name }, expired));
}

// `work`, or `onTimeout()` once `ms` have passed; work then goes on until its pending call settles
// (it sees expired() and stops, closing what it opened), and its result or error is dropped.
export async function withTimeout<T>(ms: number, onTimeout: () => Error, work: (expired: () => boolean) => Promise<T>): Promise<T> {
  let expired = false;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => { expired = true; reject(onTimeout()); }, Math.min(Math.max(1, ms), 2 ** 31 - 1)); });
  const run = work(() => expired);
  run.catch(() => undefined); // still running after a timeout: nobody waits for it
  try {
    return await Promise.race([run, late]);
  } finally {
    clearTimeout(timer);
  }
}

// A 422 naming the file (and the directory it is in), e.g. "adapter_config.json is a symbolic link".
export function refusal(path: string, name: string, what: string): LoraserveError {
  const problem = `${name} ${what}`;
  return new LoraserveError('invalid_adapter', `${dirname(path)}: ${problem}`, { problems: [problem] });
}

// The size of a regular file opened without following links, or a refusal.
async function openRegular(path: string, name: string, maxBytes: number): Promise<{ fh: FileHandle; size: number }> {
  let fh: FileHandle;
  try {
    fh = await open(path, OPEN_FLAGS);
  } catch (e) {
    throw openRefusal(e, path, name);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw refusal(path, name, st.isDirectory() ? 'is a directory' : 'is not a regular file');
    if (st.size > maxBytes) throw refusal(path, name, `is ${st.size} bytes, over the limit of ${bytesText(maxBytes)}`);
    return { fh, size: st.size };
  } catch (e) {
    await fh.close();
    throw e;
  }
}

function openRefusal(e: unknown, path: string, name: string): unknown {
  switch ((e as NodeJS.ErrnoException).code) {
    case 'ENOENT': case 'ENOTDIR': return new LoraserveError('invalid_adapter', `${dirname(path)}: missing ${name}`, { problems: [`missing ${name}`] });
    case 'ELOOP': return refusal(path, name, 'is a symbolic link (not followed)');
    case 'EISDIR': return refusal(path, name, 'is a directory');
    case 'ENXIO': case 'ENODEV': case 'EOPNOTSUPP': return refusal(path, name, 'is not a regular file');
    case 'EACCES': case 'EPERM': return refusal(path, name, 'is not readable by the server (permission denied)');
    default: return e;
  }
}

// readWhole without its own timer: stops (and closes the file) once expired() says so, for a
// caller that puts one deadline on several files (readAdapterDir).
export async function readChecked(path: string, onChunk: (bytes: Uint8Array) => void, opts: ReadOptions, expired: () => boolean): Promise<Uint8Array> {
  const name = opts.name ?? basename(path);
  const warm = opts.warm ?? true;
  const { fh, size } = await openRegular(path, name, opts.maxBytes ?? DEFAULT_MAX_BYTES);
  if (expired()) { await fh.close(); throw refusal(path, name, 'timed out'); }
  const stage = [idle.pop() ?? new Uint8Array(CHUNK), idle.pop() ?? new Uint8Array(CHUNK)];
  let pending: Promise<{ bytesRead: number }> | null = null;
  try {
    const out = warm ? takeBuffer(size) : new Uint8Array(size);
    let at = 0;
    let k = 0;
    pending = size > 0 ? fh.read(stage[0], 0, Math.min(CHUNK, size), 0) : null;
    while (pending) {
      const { bytesRead } = await pending;
      pending = null;
      if (expired()) throw refusal(path, name, 'timed out'); // nobody waits any more: stop here
      if (bytesRead === 0) break; // the file shrank while it was read: refused below
      const got = stage[k].subarray(0, bytesRead);
      const next = at + bytesRead;
      k ^= 1;
      pending = next < size ? fh.read(stage[k], 0, Math.min(CHUNK, size - next), next) : null; // overlaps the copy and the hash
      out.set(got, at);
      onChunk(got);
      at = next;
    }
    const now = (await fh.stat()).size;
    if (at !== size || now !== size) throw refusal(path, name, `changed while it was read (${size} bytes when opened, ${at} read, ${now} now)`);
    if (warm) prepareSpare(size); // for the next file of this size
    return out;
  } finally {
    if (pending) await pending.catch(() => undefined); // never close or reuse a buffer under a read
    await fh.close();
    for (const c of stage) if (idle.length < KEEP_IDLE) idle.push(c);
  }
}

function bytesText(n: number): string {
  for (const [unit, b] of [['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]] as const) if (n >= b && n % b === 0) return `${n / b} ${unit}`;
  return `${n} bytes`;
}
