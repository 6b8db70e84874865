// A whole file into a warm buffer (warm-buffers.ts), read in chunks through small reused staging
// buffers, with each chunk handed to `onChunk` (the version hash) while the next one is read.
//
// Why staging: on this VM the kernel's copy into pages that read() has never written costs
// ~6 µs a page, even when user code has just touched them (an 11 MB adapter read straight into
// its own buffer took 16–35 ms), while a read into a buffer that read() wrote before runs at
// memory speed (~0.8 ms), and a user-space copy into touched pages too (~0.6 ms). Measured with
// scratch probes; docs/architecture.md "Adapter load path".
import { open } from 'node:fs/promises';
import { prepareSpare, takeBuffer } from './warm-buffers.ts';

const CHUNK = 1 << 20;
const idle: Uint8Array[] = []; // staging chunks not in use, reused by the next read on this thread
const KEEP_IDLE = 4;           // kept after concurrent reads (each takes two)

export async function readWhole(path: string, onChunk: (bytes: Uint8Array) => void = () => undefined): Promise<Uint8Array> {
  const fh = await open(path, 'r');
  const stage = [idle.pop() ?? new Uint8Array(CHUNK), idle.pop() ?? new Uint8Array(CHUNK)];
  try {
    const size = (await fh.stat()).size;
    const out = takeBuffer(size);
    let at = 0;
    let k = 0;
    let pending = size > 0 ? fh.read(stage[0], 0, Math.min(CHUNK, size), 0) : null;
    while (pending) {
      const { bytesRead } = await pending;
      if (bytesRead === 0) break; // the file shrank while it was read
      const got = stage[k].subarray(0, bytesRead);
      const next = at + bytesRead;
      k ^= 1;
      pending = next < size ? fh.read(stage[k], 0, Math.min(CHUNK, size - next), next) : null; // overlaps the copy and the hash
      out.set(got, at);
      onChunk(got);
      at = next;
    }
    prepareSpare(size); // for the next file of this size
    return at === size ? out : out.subarray(0, at);
  } finally {
    await fh.close();
    for (const c of stage) if (idle.length < KEEP_IDLE) idle.push(c);
  }
}
