// A full garbage collection of this thread's heap, on demand. Used once after start-up: the model
// loader's float32 copy of the weights (hundreds of MB, already inside the onnxruntime session) is
// garbage by then, but V8 only collects it when its heap next fills, which for an idle server is
// minutes later, and until then the process's resident memory counts it twice.
// Node exposes gc() only under --expose-gc; the flag can be set at run time, and a new vm context
// then carries the function (it collects the heap of the isolate, i.e. the thread, that calls it).
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

let gc: (() => void) | null | undefined;

export function collectGarbage(): boolean {
  if (gc === undefined) {
    gc = (globalThis as { gc?: () => void }).gc ?? null;
    if (!gc) {
      try {
        setFlagsFromString('--expose-gc');
        gc = runInNewContext('gc') as () => void;
        setFlagsFromString('--no-expose-gc');
      } catch {
        gc = null;
      }
    }
  }
  gc?.();
  return gc !== null;
}
