// Gives the C heap's free pages back to the OS: glibc's malloc_trim(0), called through koffi (an
// FFI with prebuilt binaries; Node has no binding for it). Loading a model churns through a few
// times its size in C allocations (the ONNX bytes parsed, initializers copied, MatMul weights
// prepacked, the copies freed), and glibc keeps most freed chunks in its heaps, so they stay
// resident: the 110M model's server sat at ~1.5 GB where its live memory is ~0.7 GB
// (docs/architecture.md, "Trimming the C heap"). Freed memory is otherwise kept on purpose (fresh
// pages cost ~15–20 µs each on this VM), so this runs at moments of our choosing, not per step.
// Elsewhere than glibc (musl, macOS, Windows) there is nothing to call and it returns false.
import koffi from 'koffi';

let trim: ((pad: number) => number) | null | undefined;

function loadTrim(): ((pad: number) => number) | null {
  if (process.platform !== 'linux') return null;
  // only a glibc process has malloc_trim; musl's libc has another name and no such function
  const glibc = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime;
  if (!glibc) return null;
  try {
    const fn = koffi.load('libc.so.6').func('int malloc_trim(size_t pad)');
    return (pad) => fn(pad) as number;
  } catch {
    return null;
  }
}

// True when the call was made (it returns whether any memory went back; that is not ours to report).
export function releaseFreedMemory(): boolean {
  if (trim === undefined) trim = loadTrim();
  if (!trim) return false;
  trim(0);
  return true;
}
