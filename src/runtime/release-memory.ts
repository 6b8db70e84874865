// Gives the C heap's free pages back to the OS: glibc's malloc_trim(0), called through koffi (an
// FFI with prebuilt binaries; Node has no binding for it). Loading a model churns through a few
// times its size in C allocations (the ONNX bytes parsed, initializers copied, MatMul weights
// prepacked, the copies freed), and glibc keeps most freed chunks in its heaps, so they stay
// resident: the 110M model's server sat at ~1.5 GB where its live memory is ~0.7 GB
// (docs/architecture.md, "Trimming the C heap"). Freed memory is otherwise kept on purpose (fresh
// pages cost ~15–20 µs each on this VM), so this runs at moments of our choosing, not per step.
// Elsewhere than glibc (musl, macOS, Windows) there is nothing to call and it returns false.
import koffi from 'koffi';
import { collectGarbage } from './collect-garbage.ts';

interface Trim { now(pad: number): number; later(pad: number, done: (err: unknown) => void): void }

let loaded: Trim | null | undefined;

// malloc_trim from glibc, loaded once; null elsewhere: no libc.so.6 (musl, macOS, Windows), or one
// without the symbol (a compatibility shim), which koffi reports by throwing
function trimFn(): Trim | null {
  if (loaded !== undefined) return loaded;
  loaded = null;
  if (process.platform !== 'linux') return loaded;
  try {
    const fn = koffi.load('libc.so.6').func('int malloc_trim(size_t pad)');
    loaded = { now: (pad) => fn(pad) as number, later: (pad, done) => fn.async(pad, (err: unknown) => done(err)) };
  } catch { /* not glibc */ }
  return loaded;
}

// True when the call was made (it returns whether any memory went back; that is not ours to report).
export function releaseFreedMemory(): boolean {
  const trim = trimFn();
  if (!trim) return false;
  trim.now(0);
  return true;
}

// The same on a libuv pool thread, so that the calling thread goes on (a trim of a large heap takes
// tens of ms; the engine calls this after a merged-weights session is built or dropped, while steps
// run). Resolves to whether the call was made; never rejects.
export function releaseFreedMemoryLater(): Promise<boolean> {
  const trim = trimFn();
  if (!trim) return Promise.resolve(false);
  return new Promise((resolve) => trim.later(0, (err) => resolve(!err)));
}

// After a big piece of work whose arrays are garbage once the caller returns (a merged-weights
// session's build, or its drop): on the next turn, collect them, then trim on a pool thread.
export function releaseFreedMemorySoon(): void {
  setImmediate(() => {
    collectGarbage();
    void releaseFreedMemoryLater();
  });
}
