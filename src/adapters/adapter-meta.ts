// An adapter's own metadata beside its PEFT files: `loraserve.json` {description?, examples?}
// (issue 14). The description is the one line /v1/models shows; the examples are prompts in the
// adapter's domain, what semantic routing (`model: "auto"`) compares a request's prompt with. Set
// by an upload's `loraserve.json` part, PATCH /v1/adapters/{name}, or written by hand beside a
// path (or preloaded) adapter.
import { closeSync, fsyncSync, lstatSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { invalidField } from '../runtime/errors.ts';

export const META_FILE = 'loraserve.json';
export const MAX_DESCRIPTION_CHARS = 200;
export const MAX_EXAMPLES = 256;
export const MAX_EXAMPLE_CHARS = 4000;
export const MAX_META_BYTES = 2 << 20;

export interface AdapterMeta {
  description: string | null;
  examples: string[];
}

export const NO_META: AdapterMeta = { description: null, examples: [] };

// A metadata object (a PATCH body, an uploaded or stored loraserve.json) → AdapterMeta; refusals are
// 400s naming the field (`param` prefixes it, e.g. "loraserve.json"). `partial`: fields not given stay null/undefined.
export function parseMeta(v: unknown, param = ''): Partial<AdapterMeta> {
  const at = (f: string): string => (param ? `${param}.${f}` : f);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalidField(param || 'body', `${param || 'the body'} must be a JSON object {description?, examples?}`);
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (k !== 'description' && k !== 'examples') throw invalidField(at(k), `unknown field ${JSON.stringify(k)}; adapter metadata is {description, examples}`);
  const out: Partial<AdapterMeta> = {};
  if (o.description !== undefined) {
    if (o.description !== null && typeof o.description !== 'string') throw invalidField(at('description'), `'description' must be a string or null`);
    const d = typeof o.description === 'string' ? o.description.trim() : '';
    if (d.includes('\n')) throw invalidField(at('description'), `'description' must be one line`);
    if (d.length > MAX_DESCRIPTION_CHARS) throw invalidField(at('description'), `'description' must be at most ${MAX_DESCRIPTION_CHARS} characters, got ${d.length}`);
    out.description = d || null;
  }
  if (o.examples !== undefined) {
    if (o.examples !== null && !Array.isArray(o.examples)) throw invalidField(at('examples'), `'examples' must be a list of prompts`);
    const ex = (o.examples ?? []) as unknown[];
    if (ex.length > MAX_EXAMPLES) throw invalidField(at('examples'), `'examples' may hold at most ${MAX_EXAMPLES} prompts, got ${ex.length}`);
    ex.forEach((e, i) => {
      if (typeof e !== 'string' || e.trim() === '') throw invalidField(at(`examples[${i}]`), `examples[${i}] must be a non-empty string`);
      if (e.length > MAX_EXAMPLE_CHARS) throw invalidField(at(`examples[${i}]`), `examples[${i}] must be at most ${MAX_EXAMPLE_CHARS} characters, got ${e.length}`);
    });
    out.examples = ex as string[];
  }
  return out;
}

export function encodeMeta(meta: AdapterMeta): Uint8Array {
  return new TextEncoder().encode(`${JSON.stringify({ description: meta.description, examples: meta.examples }, null, 2)}\n`);
}

// A directory's metadata (its loraserve.json, if any). A file that cannot be read or is invalid is
// a warning (the adapter itself is valid), never a refusal.
export function readMeta(dir: string, warnings: string[]): AdapterMeta {
  let meta: AdapterMeta = { ...NO_META };
  const path = join(dir, META_FILE);
  const st = lstatSync(path, { throwIfNoEntry: false });
  if (st) {
    try {
      if (!st.isFile()) throw new Error('not a regular file');
      if (st.size > MAX_META_BYTES) throw new Error(`${st.size} bytes, over ${MAX_META_BYTES}`);
      const m = parseMeta(JSON.parse(readFileSync(path, 'utf8')), META_FILE);
      meta = { description: m.description ?? null, examples: m.examples ?? [] };
    } catch (e) {
      warnings.push(`${META_FILE} is ignored: ${(e as Error).message}`);
    }
  }
  return meta;
}

// Written whole beside the file (.tmp-<name>-<random>, fsynced), renamed over it, the directory fsynced:
// a crash leaves the old file or the new one, never half of one.
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = join(dirname(path), `.tmp-${basename(path)}-${randomBytes(6).toString('hex')}`);
  try {
    const fd = openSync(tmp, 'wx', 0o644);
    try {
      writeSync(fd, bytes);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  const dir = openSync(dirname(path), 'r');
  try { fsyncSync(dir); } finally { closeSync(dir); }
}
