// The warm spare for adapter reads: exact sizes, never a buffer handed out before, refilled.
import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { takeBuffer, MAX_SPARE } from '../../src/adapters/warm-buffers.ts';
import { readAdapterDir } from '../../src/adapters/lora-adapter.ts';

describe('warm buffers', () => {
  it('hands out exact sizes, each buffer once, and prepares the next one ahead', async () => {
    const a = takeBuffer(3 * 1024 * 1024 + 5);
    expect(a.byteLength).toBe(3 * 1024 * 1024 + 5);
    a.fill(9);
    await new Promise((r) => setTimeout(r, 100)); // the spare is touched meanwhile
    const b = takeBuffer(3 * 1024 * 1024 + 5);
    expect(b.buffer).not.toBe(a.buffer);
    expect(b.every((x) => x === 0)).toBe(true); // nothing of an earlier buffer shows through
    const c = takeBuffer(100); // another size: a fresh buffer
    expect(c.byteLength).toBe(100);
    expect(takeBuffer(MAX_SPARE + 1).byteLength).toBe(MAX_SPARE + 1); // too big for a spare: still served
  });

  it('readAdapterDir returns the files byte for byte, in buffers of their own', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'loraserve-wb-'));
    const weights = Uint8Array.from({ length: 200_003 }, (_, i) => (i * 31) & 255);
    writeFileSync(join(dir, 'adapter_config.json'), '{"r": 4}');
    writeFileSync(join(dir, 'adapter_model.safetensors'), weights);
    for (let i = 0; i < 3; i++) {
      const files = await readAdapterDir(dir);
      expect(new TextDecoder().decode(files.config)).toBe('{"r": 4}');
      expect(Buffer.from(files.weights).equals(Buffer.from(weights))).toBe(true);
      expect(files.weights.byteLength).toBe(files.weights.buffer.byteLength);
      await new Promise((r) => setTimeout(r, 20));
    }
  });
});
