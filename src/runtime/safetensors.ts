// safetensors: u64 LE header length N | N bytes of JSON | contiguous tensor bytes.
// Validation follows the reference reader (huggingface/safetensors tensor.rs, see
// shared/reference/formats-and-apis.md §3.3) and additionally rejects duplicate keys,
// which JSON.parse would silently collapse.
import { readFileSync, openSync, writeSync, fsyncSync, closeSync, renameSync } from 'node:fs';
import { SafetensorsError } from './errors.ts';

export type Dtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL' | 'U16' | 'U32' | 'U64';

const BYTES: Record<Dtype, number> = {
  F64: 8, I64: 8, U64: 8, F32: 4, I32: 4, U32: 4, F16: 2, BF16: 2, I16: 2, U16: 2, I8: 1, U8: 1, BOOL: 1,
};
const MAX_HEADER = 100_000_000;

export interface TensorEntry {
  name: string;
  dtype: Dtype;
  shape: number[];
  bytes: Uint8Array; // a view into the file buffer, little-endian, row-major
}

export interface SafetensorsFile {
  metadata: Record<string, string>;
  tensors: Map<string, TensorEntry>;
}

export function readSafetensorsFile(path: string): SafetensorsFile {
  return parseSafetensors(readFileSync(path), path);
}

export function parseSafetensors(buf: Uint8Array, label = 'safetensors'): SafetensorsFile {
  const fail = (msg: string): never => { throw new SafetensorsError(`${label}: ${msg}`); };
  if (buf.byteLength < 8) fail(`file is ${buf.byteLength} bytes, shorter than the 8-byte header length`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = view.getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER)) fail(`header length ${n} exceeds the limit of ${MAX_HEADER} bytes`);
  const headerLen = Number(n);
  if (8 + headerLen > buf.byteLength) fail(`header length ${headerLen} runs past the end of the file (${buf.byteLength} bytes)`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + headerLen));
  } catch {
    return fail('header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    return fail(`header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('header must be a JSON object');
  const dup = findDuplicateTopLevelKey(text);
  if (dup !== null) fail(`duplicate tensor name "${dup}" in header`);

  const data = buf.subarray(8 + headerLen);
  const metadata: Record<string, string> = {};
  const entries: { name: string; dtype: Dtype; shape: number[]; begin: number; end: number }[] = [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('__metadata__ must be an object of strings');
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== 'string') fail(`__metadata__.${k} must be a string`);
        metadata[k] = v as string;
      }
      continue;
    }
    const info = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof info !== 'object' || info === null) fail(`tensor "${name}": entry must be an object`);
    if (typeof info.dtype !== 'string' || !(info.dtype in BYTES)) fail(`tensor "${name}": unsupported dtype ${JSON.stringify(info.dtype)}`);
    if (!Array.isArray(info.shape) || !info.shape.every(isCount)) fail(`tensor "${name}": shape must be an array of non-negative integers`);
    const off = info.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every(isCount)) fail(`tensor "${name}": data_offsets must be [begin, end]`);
    const [begin, end] = off as number[];
    entries.push({ name, dtype: info.dtype as Dtype, shape: info.shape as number[], begin, end });
  }
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let start = 0;
  const tensors = new Map<string, TensorEntry>();
  for (const e of entries) {
    if (e.begin !== start || e.end < e.begin) fail(`tensor "${e.name}": data_offsets [${e.begin}, ${e.end}] overlap, leave a gap or are out of order (expected begin ${start})`);
    const count = e.shape.reduce((a, b) => a * b, 1);
    if (!Number.isSafeInteger(count * BYTES[e.dtype])) fail(`tensor "${e.name}": shape overflows`);
    if (e.end - e.begin !== count * BYTES[e.dtype]) fail(`tensor "${e.name}": ${e.end - e.begin} bytes do not match shape [${e.shape}] of ${e.dtype} (${count * BYTES[e.dtype]} bytes)`);
    if (e.end > data.byteLength) fail(`tensor "${e.name}": data_offsets end ${e.end} is past the end of the data (${data.byteLength} bytes); the file is truncated`);
    tensors.set(e.name, { name: e.name, dtype: e.dtype, shape: e.shape, bytes: data.subarray(e.begin, e.end) });
    start = e.end;
  }
  if (start !== data.byteLength) fail(`data is ${data.byteLength} bytes but the tensors cover ${start}; the file is truncated or has trailing bytes`);
  return { metadata, tensors };
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

// Scans the top-level object of a JSON text for a repeated key. Nested objects are skipped.
function findDuplicateTopLevelKey(text: string): string | null {
  const seen = new Set<string>();
  let depth = 0;
  let i = 0;
  let expectKey = false;
  while (i < text.length) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (seen.has(key)) return key;
        seen.add(key);
        expectKey = false;
      }
      i = j + 1;
      continue;
    }
    if (c === '{' || c === '[') { depth++; if (depth === 1) expectKey = true; }
    else if (c === '}' || c === ']') depth--;
    else if (c === ',' && depth === 1) expectKey = true;
    i++;
  }
  return null;
}

export interface TensorToWrite {
  dtype: Dtype;
  shape: number[];
  data: ArrayBufferView;
}

// Writer: tensors sorted by name, header padded with spaces to a multiple of 8,
// metadata {"format": "pt"} as PEFT and transformers expect.
export function encodeSafetensors(tensors: Record<string, TensorToWrite>, metadata: Record<string, string> = { format: 'pt' }): Uint8Array {
  const names = Object.keys(tensors).sort();
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const name of names) {
    const t = tensors[name];
    const len = t.data.byteLength;
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + len] };
    offset += len;
  }
  let json = JSON.stringify(header);
  const raw = new TextEncoder().encode(json);
  const padded = Math.ceil(raw.byteLength / 8) * 8;
  json += ' '.repeat(padded - raw.byteLength);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  out.set(headerBytes, 8);
  let pos = 8 + headerBytes.byteLength;
  for (const name of names) {
    const d = tensors[name].data;
    out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), pos);
    pos += d.byteLength;
  }
  return out;
}

// Atomic write: temporary file in the same directory, fsync, rename.
export function writeFileAtomic(path: string, bytes: Uint8Array): void {
  const tmp = `${path}.tmp-${process.pid}-${Date.now()}`;
  const fd = openSync(tmp, 'w');
  try {
    let done = 0;
    while (done < bytes.byteLength) done += writeSync(fd, bytes, done, Math.min(bytes.byteLength - done, 1 << 30));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}
