// Pre-touched buffers for reading adapter files. Memory a thread has not touched yet costs a page
// fault on first access (~5–11 µs per 4 KB page on this VM, even after the kernel has written it
// with read()), which made reading an 11 MB adapter and its first use cost ~50 ms more than the
// copy. So the buffer for the next adapter of the same size is touched ahead, in small slices
// between other work; a load takes it (it becomes the adapter's memory) and a new one is prepared.
// One spare per thread, of the last size read, at most MAX_SPARE bytes.
const PAGE = 4096;
const SLICE_PAGES = 256; // ~1.5–3 ms of faults per slice here, so the event loop is never held long
export const MAX_SPARE = 64 * 1024 * 1024;

let spare: { bytes: Uint8Array; touched: number } | null = null;
let refill: NodeJS.Timeout | null = null;

// A buffer of exactly `size` bytes: the warm spare when it fits, else a fresh one.
export function takeBuffer(size: number): Uint8Array {
  let out: Uint8Array;
  if (spare && spare.bytes.byteLength === size && spare.touched >= size) {
    out = spare.bytes;
    spare = null;
  } else {
    out = new Uint8Array(size);
  }
  prepareSpare(size);
  return out;
}

function prepareSpare(size: number): void {
  if (size > MAX_SPARE || (spare && spare.bytes.byteLength === size)) return;
  spare = { bytes: new Uint8Array(size), touched: 0 };
  if (refill) clearTimeout(refill);
  const step = (): void => {
    refill = null;
    const s = spare;
    if (!s) return;
    const end = Math.min(s.bytes.byteLength, s.touched + SLICE_PAGES * PAGE);
    for (let i = s.touched; i < end; i += PAGE) s.bytes[i] = 0;
    s.touched = end;
    if (end < s.bytes.byteLength) schedule();
  };
  // a timer, not an immediate: an unref'd immediate runs only when something else wakes the loop
  const schedule = (): void => { refill = setTimeout(step, 0); refill.unref(); }; // never keeps the process alive
  schedule();
}
