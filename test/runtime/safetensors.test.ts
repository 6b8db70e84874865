import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensorsFile } from '../../src/runtime/safetensors.ts';
import { encodeSafetensors, parseSafetensors } from '../../src/runtime/safetensors.ts';
import { bytesToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../src/runtime/dtype.ts';

function file(header: string, data: number[] = []): Uint8Array {
  const h = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

describe('safetensors', () => {
  it('writes the reference example byte for byte (header padded to 8, offsets relative)', () => {
    const bytes = encodeSafetensors({ attn0: { dtype: 'F32', shape: [1, 1, 2, 3], data: Float32Array.of(0, 1, 2, 3, 4, 5) } }, {});
    // formats-and-apis.md §3.4 example has no metadata; ours writes __metadata__ {} first
    const parsed = parseSafetensors(bytes);
    expect([...bytesToF32(parsed.tensors.get('attn0')!.bytes, 'F32', 'attn0')]).toEqual([0, 1, 2, 3, 4, 5]);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(n % 8).toBe(0);
  });

  it('reads tensors whose data is not aligned to their element size, from a file on disk (a Node Buffer)', () => {
    // the data starts at a file offset ≡ 1 (mod 4), so both tensors start at odd offsets
    const f32 = Float32Array.of(1.5, -2.25, 3e-3);
    const f16 = [0x3c00, 0xc000]; // 1, -2
    let header = '{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F16","shape":[2],"data_offsets":[12,16]}}';
    while ((8 + header.length) % 4 !== 1) header += ' ';
    const data = [...new Uint8Array(f32.buffer), ...f16.flatMap((h) => [h & 0xff, h >> 8])];
    const path = join(mkdtempSync(join(tmpdir(), 'loraserve-st-')), 'unaligned.safetensors');
    writeFileSync(path, file(header, data));
    const st = readSafetensorsFile(path);
    expect(st.tensors.get('a')!.bytes.byteOffset % 2).toBe(1);
    expect(st.tensors.get('b')!.bytes.byteOffset % 2).toBe(1);
    expect([...bytesToF32(st.tensors.get('a')!.bytes, 'F32', 'a')]).toEqual([...f32]);
    expect([...bytesToF32(st.tensors.get('b')!.bytes, 'F16', 'b')]).toEqual([1, -2]);
  });

  it('matches the reference serialisation of one F32 tensor', () => {
    const header = '{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}' + ' '.repeat(7);
    const data = [...new Uint8Array(Float32Array.of(0, 1, 2, 3, 4, 5).buffer)];
    const ref = file(header, data);
    expect(ref.slice(0, 8)).toEqual(Uint8Array.of(72, 0, 0, 0, 0, 0, 0, 0));
    expect(parseSafetensors(ref).tensors.get('attn0')!.shape).toEqual([1, 1, 2, 3]);
  });

  it('accepts an empty file {} and leading/trailing whitespace in the header', () => {
    expect(parseSafetensors(file('{}')).tensors.size).toBe(0);
    expect(parseSafetensors(file('  {"__metadata__":{"format":"pt"}}\t\n')).metadata).toEqual({ format: 'pt' });
  });

  const bad: [string, Uint8Array, RegExp][] = [
    ['shorter than 8 bytes', Uint8Array.of(1, 2, 3), /shorter than the 8-byte/],
    ['header length past the end', file('{}').map((b, i) => (i === 0 ? 200 : b)), /runs past the end/],
    ['not JSON', file('{nope'), /not valid JSON/],
    ['duplicate names', file('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', [1]), /duplicate tensor name "a"/],
    ['overlapping offsets', file('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}', [1, 2, 3]), /overlap/],
    ['a gap between tensors', file('{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', [0, 1]), /overlap, leave a gap/],
    ['out-of-bounds offsets', file('{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', [1, 2]), /past the end of the data/],
    ['trailing bytes', file('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', [1, 2]), /trailing bytes/],
    ['size not matching the shape', file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', [0, 0, 0, 0]), /do not match shape/],
    ['unknown dtype', file('{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}', [1]), /unsupported dtype "Q4"/],
    ['non-string metadata', file('{"__metadata__":{"x":1}}'), /must be a string/],
    ['negative shape', file('{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}'), /shape must be/],
  ];
  it.each(bad)('refuses %s', (_n, bytes, msg) => {
    expect(() => parseSafetensors(bytes)).toThrow(msg);
  });
});

describe('dtype conversions', () => {
  it('f16 round trip and known values', () => {
    expect(f16ToF32(0x3c00)).toBe(1);
    expect(f16ToF32(0xc000)).toBe(-2);
    expect(f16ToF32(0x7bff)).toBe(65504);
    expect(f16ToF32(0x0001)).toBeCloseTo(5.960464477539063e-8, 20);
    expect(f32ToF16(1)).toBe(0x3c00);
    expect(f32ToF16(65504)).toBe(0x7bff);
    expect(f32ToF16(1e6)).toBe(0x7c00); // overflow → inf
    expect(f32ToF16(1 + 2 ** -11)).toBe(0x3c00); // tie → even
    for (const v of [0.1, -3.14159, 0.001, 1234.5]) expect(Math.abs(f16ToF32(f32ToF16(v)) - v) / Math.abs(v)).toBeLessThan(1e-3);
  });

  it('bf16 round to nearest even', () => {
    expect(f32ToBf16(1)).toBe(0x3f80);
    expect(f32ToBf16(-2)).toBe(0xc000);
    const u = new Uint16Array([f32ToBf16(3.14159)]);
    expect(bytesToF32(new Uint8Array(u.buffer), 'BF16', 'x')[0]).toBeCloseTo(3.140625, 6);
  });
});
