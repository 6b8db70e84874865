// Pre-touched buffers for reading adapter files. Memory a process has not touched yet costs a
// page fault on first access (~5–11 µs per 4 KB page on this VM: ~30 ms for an 11 MB adapter), so
// the buffer for the next adapter of the same size is touched ahead of time by a helper thread at
// the lowest CPU priority (nice 19): the faults are paid where nobody waits, and never compete with
// the engine's step or the HTTP thread for a core. (Touching it on the event loop, in slices, slowed
// the read it followed and the first step after it by ~10 ms each.) Page tables belong to the
// process, so pages touched by the helper are warm for every thread: the buffer is a
// SharedArrayBuffer, handed over with no copy, and later shared with the engine thread (not
// transferred, engine-client.ts).
// One spare per thread, of the last size asked for, at most MAX_SPARE bytes.
import { Worker } from 'node:worker_threads';

export const MAX_SPARE = 64 * 1024 * 1024;

// the helper: one job at a time, a page a write; plain JS (an eval'd worker takes no TypeScript)
const TOUCHER = `
const { parentPort } = require('node:worker_threads');
try { require('node:os').setPriority(0, 19); } catch {}
parentPort.on('message', (size) => {
  const sab = new SharedArrayBuffer(size);
  const bytes = new Uint8Array(sab);
  for (let i = 0; i < size; i += 4096) bytes[i] = 0;
  parentPort.postMessage(sab);
});`;

let spare: Uint8Array | null = null;
let requested = 0;             // size the helper is touching now (0: none)
let toucher: Worker | null = null;
let waiters: (() => void)[] = [];

// A buffer of exactly `size` bytes: the warm spare when it fits, else a fresh one. Ask for the
// next one with prepareSpare(size) once this one is filled.
export function takeBuffer(size: number): Uint8Array {
  if (spare && spare.byteLength === size) {
    const out = spare;
    spare = null;
    return out;
  }
  return new Uint8Array(size);
}

// Have a warm buffer of `size` bytes ready for the next takeBuffer(size).
export function prepareSpare(size: number): void {
  if (size <= 0 || size > MAX_SPARE || spare?.byteLength === size || requested === size) return;
  spare = null;
  requested = size;
  const w = helper();
  w.postMessage(size);
  w.unref(); // again: without it, a worker that was sent a message kept the process alive (seen on Node 20)
}

// Resolves once no spare is being prepared (tests, benchmarks).
export function spareSettled(): Promise<void> {
  return requested === 0 ? Promise.resolve() : new Promise((r) => waiters.push(r));
}

function helper(): Worker {
  if (toucher) return toucher;
  const w = new Worker(TOUCHER, { eval: true });
  w.unref(); // never keeps the process alive
  w.on('message', (sab: SharedArrayBuffer) => {
    if (sab.byteLength !== requested) return; // a newer size was asked for meanwhile
    spare = new Uint8Array(sab);
    settle();
  });
  w.on('error', () => { toucher = null; settle(); }); // no helper: fresh buffers, as without spares
  w.on('exit', () => { toucher = null; settle(); });
  toucher = w;
  return w;
}

function settle(): void {
  requested = 0;
  const ws = waiters;
  waiters = [];
  for (const f of ws) f();
}
