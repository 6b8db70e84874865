// Pre-touched buffers for reading adapter files. Memory a process has not touched yet costs a
// page fault on first access (~5–11 µs per 4 KB page on this VM: ~30 ms for an 11 MB adapter), so
// the buffer for the next adapter of the same size is touched ahead of time by a helper thread at
// the lowest CPU priority (nice 19): the faults are paid where nobody waits, and never compete with
// the engine's step or the HTTP thread for a core. (Touching it on the event loop, in slices, slowed
// the read it followed and the first step after it by ~10 ms each.) Page tables belong to the
// process, so pages touched by the helper are warm for every thread.
//
// The buffer is a plain ArrayBuffer that the helper *transfers* (no copy) and keeps nothing of, and
// that later moves on to the engine thread the same way (engine-client.ts). It used to be a
// SharedArrayBuffer, which leaked under reload churn (RSS 1.05 → 4.7 GB in 60 s, 238 reloads of a
// 43 MB adapter; load-tests/memory-churn.ts, now + 60 MB): V8 does not count shared
// backing stores as external memory in any isolate, so dropping one never makes a GC come sooner,
// and its memory is freed only once every isolate that saw it (the helper, which allocates next to
// nothing and so almost never collects; the reading thread; the engine) has collected its handle.
// A transferred ArrayBuffer has one owner at a time, and that owner's V8 accounts for its bytes
// (what makes it collect an adapter the host cache dropped, as it does a fresh buffer); the helper's
// handle is detached by the transfer itself.
//
// Bounded: per thread, one spare (≤ MAX_SPARE bytes) and one buffer being touched (≤ MAX_SPARE):
// a newer size asked for while the helper works waits for it and replaces it, never queues up
// behind it. warmBufferStats() reports both against WARM_LIMIT.
import { Worker } from 'node:worker_threads';

export const MAX_SPARE = 64 * 1024 * 1024;
// spare + the buffer being touched, per thread that reads adapters (the main and engine threads)
export const WARM_LIMIT = 2 * MAX_SPARE;

// the helper: one job at a time, a page a write; plain JS (an eval'd worker takes no TypeScript)
const TOUCHER = `
const { parentPort } = require('node:worker_threads');
try { require('node:os').setPriority(0, 19); } catch {}
parentPort.on('message', (size) => {
  const buf = new ArrayBuffer(size);
  const bytes = new Uint8Array(buf);
  for (let i = 0; i < size; i += 4096) bytes[i] = 0;
  parentPort.postMessage(buf, [buf]); // moved, not shared: this isolate keeps no handle on it
});`;

let spare: Uint8Array | null = null;
let touching = 0;              // size the helper is touching now (0: none)
let wanted = 0;                // size of the spare to have next (0: none asked for)
let toucher: Worker | null = null;
let waiters: (() => void)[] = [];
const counts = { prepared: 0, hits: 0, misses: 0, dropped: 0 };

export interface WarmBufferStats {
  spareBytes: number;        // the spare ready for the next read of its size
  outstandingBytes: number;  // the buffer the helper is touching (it keeps nothing once handed over)
  limitBytes: number;        // spareBytes + outstandingBytes ≤ limitBytes (WARM_LIMIT)
  prepared: number;          // spares touched by the helper
  hits: number;              // takeBuffer calls served by the spare
  misses: number;            // takeBuffer calls of at most MAX_SPARE bytes served by fresh memory
  dropped: number;           // spares never used (a different size was asked for before)
}

// This thread's warm buffers (each thread that reads adapters has its own).
export function warmBufferStats(): WarmBufferStats {
  return { spareBytes: spare?.byteLength ?? 0, outstandingBytes: touching, limitBytes: WARM_LIMIT, ...counts };
}

// A buffer of exactly `size` bytes: the warm spare when it fits, else a fresh one. Ask for the
// next one with prepareSpare(size) once this one is filled.
export function takeBuffer(size: number): Uint8Array {
  if (spare && spare.byteLength === size) {
    const out = spare;
    spare = null;
    counts.hits++;
    return out;
  }
  if (size > 0 && size <= MAX_SPARE) counts.misses++;
  return new Uint8Array(size);
}

// Have a warm buffer of `size` bytes ready for the next takeBuffer(size).
export function prepareSpare(size: number): void {
  if (size <= 0 || size > MAX_SPARE || spare?.byteLength === size || wanted === size) return;
  dropSpare();
  wanted = size;
  if (touching === 0) touch(size); // else the helper's current buffer is dropped when it arrives
}

// Resolves once no spare is being prepared (tests, benchmarks).
export function spareSettled(): Promise<void> {
  return touching === 0 ? Promise.resolve() : new Promise((r) => waiters.push(r));
}

function dropSpare(): void {
  if (spare) counts.dropped++;
  spare = null; // garbage of this thread's isolate, which accounts for its bytes
}

function touch(size: number): void {
  touching = size;
  const w = helper();
  w.postMessage(size);
  w.unref(); // again: without it, a worker that was sent a message kept the process alive (seen on Node 20)
}

function helper(): Worker {
  if (toucher) return toucher;
  const w = new Worker(TOUCHER, { eval: true });
  w.unref(); // never keeps the process alive
  w.on('message', (buf: ArrayBuffer) => {
    touching = 0;
    counts.prepared++;
    if (buf.byteLength === wanted) {
      spare = new Uint8Array(buf);
      wanted = 0;
    } else {
      counts.dropped++; // a newer size was asked for meanwhile: touch that one now
      if (wanted > 0) return touch(wanted);
    }
    settle();
  });
  const gone = (): void => { toucher = null; touching = 0; wanted = 0; settle(); }; // no helper: fresh buffers, as without spares
  w.on('error', gone);
  w.on('exit', gone);
  toucher = w;
  return w;
}

function settle(): void {
  const ws = waiters;
  waiters = [];
  for (const f of ws) f();
}
