// The warm spare for adapter reads (touched ahead by a low-priority helper thread) and the chunked
// read through staging buffers: exact sizes, each buffer handed out once, bytes and version exact.
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { prepareSpare, spareSettled, takeBuffer, warmBufferStats, MAX_SPARE } from '../../src/adapters/warm-buffers.ts';
import { readWhole } from '../../src/adapters/read-file.ts';
import { adapterVersion, readAdapterDir } from '../../src/adapters/lora-adapter.ts';

const alive = async <T>(p: Promise<T>): Promise<T> => {
  const t = setInterval(() => undefined, 50); // the helper thread is unref'd
  try { return await p; } finally { clearInterval(t); }
};

describe('warm buffers', () => {
  it('hands out exact sizes, each buffer once, zeroed; the spare is touched ahead and moved here', async () => {
    const size = 3 * 1024 * 1024 + 5;
    const a = takeBuffer(size);
    expect(a.byteLength).toBe(size);
    a.fill(9);
    prepareSpare(size);
    await alive(spareSettled());
    expect(warmBufferStats().spareBytes).toBe(size);
    const hits = warmBufferStats().hits;
    const b = takeBuffer(size);
    expect(warmBufferStats().hits).toBe(hits + 1); // the helper's, not a fresh one
    expect(b.buffer).not.toBeInstanceOf(SharedArrayBuffer); // moved, not shared: the helper keeps no handle
    expect(b.buffer).not.toBe(a.buffer);
    expect(b.byteLength).toBe(size);
    expect(b.every((x) => x === 0)).toBe(true); // nothing of an earlier buffer shows through
    takeBuffer(size);
    expect(warmBufferStats().hits).toBe(hits + 1); // the spare was taken: a fresh one until asked again
    const c = takeBuffer(100); // another size: a fresh buffer
    expect(c.byteLength).toBe(100);
    prepareSpare(MAX_SPARE + 1); // too big for a spare: ignored, and still served
    await alive(spareSettled());
    expect(takeBuffer(MAX_SPARE + 1).byteLength).toBe(MAX_SPARE + 1);
  });

  it('a newer size asked for while the helper works replaces the older one', async () => {
    prepareSpare(2_000_001);
    prepareSpare(2_000_002);
    await alive(spareSettled());
    expect(warmBufferStats().spareBytes).toBe(2_000_002);
    const hits = warmBufferStats().hits;
    takeBuffer(2_000_001);
    expect(warmBufferStats().hits).toBe(hits); // a fresh one
    takeBuffer(2_000_002);
    expect(warmBufferStats().hits).toBe(hits + 1); // the spare
  });

  it('the helper thread never keeps the process alive', () => {
    const script = join(import.meta.dirname, '../helpers/spare-exit.ts');
    const out = execFileSync(process.execPath, ['--import', 'tsx', script], { timeout: 20_000, encoding: 'utf8' });
    expect(out.trim()).toBe('done');
  });

  it('readWhole returns a file byte for byte across chunk boundaries, and hands each chunk on once, in order', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'loraserve-rw-'));
    const MB = 1 << 20;
    for (const size of [0, 1, MB - 1, MB, MB + 1, 3 * MB + 5]) {
      const bytes = Uint8Array.from({ length: size }, (_, i) => (i * 131 + (i >> 12)) & 255);
      const path = join(dir, `f${size}`);
      writeFileSync(path, bytes);
      for (let round = 0; round < 2; round++) { // the second read may get the warm spare
        const hash = createHash('sha256');
        let seen = 0;
        const got = await readWhole(path, (chunk) => { hash.update(chunk); seen += chunk.byteLength; });
        expect(got.byteLength).toBe(size);
        expect(Buffer.from(got).equals(Buffer.from(bytes))).toBe(true);
        expect(seen).toBe(size);
        expect(hash.digest('hex')).toBe(createHash('sha256').update(bytes).digest('hex'));
        await alive(spareSettled());
      }
    }
  });

  it('concurrent reads on one thread never share a staging buffer or a spare', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'loraserve-rwc-'));
    const size = 2 * (1 << 20) + 77;
    const contents = [0, 1, 2, 3].map((k) => Uint8Array.from({ length: size }, (_, i) => (i * (k + 3) + k) & 255));
    contents.forEach((c, k) => writeFileSync(join(dir, `f${k}`), c));
    prepareSpare(size);
    await alive(spareSettled());
    const got = await Promise.all(contents.map((_, k) => readWhole(join(dir, `f${k}`))));
    got.forEach((g, k) => expect(Buffer.from(g).equals(Buffer.from(contents[k]))).toBe(true));
    expect(new Set(got.map((g) => g.buffer)).size).toBe(4);
  });

  it('readAdapterDir returns the files byte for byte, in buffers of their own, with the version of those bytes', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'loraserve-wb-'));
    const weights = Uint8Array.from({ length: 2_200_003 }, (_, i) => (i * 31) & 255);
    writeFileSync(join(dir, 'adapter_config.json'), '{"r": 4}');
    writeFileSync(join(dir, 'adapter_model.safetensors'), weights);
    const versions = new Set<string>();
    for (let i = 0; i < 3; i++) {
      const files = await readAdapterDir(dir);
      expect(new TextDecoder().decode(files.config)).toBe('{"r": 4}');
      expect(Buffer.from(files.weights).equals(Buffer.from(weights))).toBe(true);
      expect(files.weights.byteLength).toBe(files.weights.buffer.byteLength);
      // the version hashed while reading is the hash of the two files, as computed from the bytes
      expect(files.version).toBe(adapterVersion({ config: files.config, weights: files.weights }));
      versions.add(files.version!);
      await alive(spareSettled());
    }
    expect(versions.size).toBe(1);
  });
});
