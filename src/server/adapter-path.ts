// The directory behind a vLLM `lora_path`: accepted only inside the adapter store or an
// --allow-adapter-dir. Authorisation comes before existence, so the status never tells whether a
// path outside the roots exists: the path is checked lexically first (403 either way), then
// resolved with realpath (404 when missing) and checked again (a linked directory pointing out: 403).
// The files inside are read without following links (adapters/read-file.ts).
import { realpathSync, statSync } from 'node:fs';
import { resolve, sep } from 'node:path';
import { invalidField, LoraserveError } from '../runtime/errors.ts';

export const MAX_PATH_CHARS = 4096;

// The directories `lora_path` may name: the adapter store and every --allow-adapter-dir. The same
// rule applies to a registration recorded by load_lora_adapter when it is loaded again at start-up.
export function adapterPathRoots(storeRoot: string, allowAdapterDirs: string[]): string[] {
  return [storeRoot, ...allowAdapterDirs];
}

export function resolveAdapterPath(input: unknown, roots: string[]): string {
  const path = checkPathField(input);
  const real = roots.flatMap((r) => realOrNull(resolve(r)) ?? []);
  if (!within(resolve(path), [...real, ...roots.map((r) => resolve(r))])) throw outside(path);
  let dir: string;
  try {
    dir = realpathSync(resolve(path)); // the lexical form that was checked, not a different reading of '..'
  } catch (e) {
    throw resolveError(e, path);
  }
  if (!within(dir, real)) throw outside(path);
  const st = statSync(dir, { throwIfNoEntry: false });
  if (!st) throw resolveError(Object.assign(new Error('gone'), { code: 'ENOENT' }), path); // removed meanwhile
  if (!st.isDirectory()) throw invalidField('lora_path', `'lora_path' must be a directory`);
  return dir;
}

function checkPathField(input: unknown): string {
  if (typeof input !== 'string' || input === '') throw invalidField('lora_path', `'lora_path' must be a non-empty string`);
  if (input.includes('\0')) throw invalidField('lora_path', `'lora_path' must not contain NUL characters`);
  if (input.length > MAX_PATH_CHARS) throw invalidField('lora_path', `'lora_path' is longer than ${MAX_PATH_CHARS} characters`);
  return input;
}

function within(path: string, roots: string[]): boolean {
  return roots.some((r) => path === r || path.startsWith(r.endsWith(sep) ? r : r + sep));
}

function realOrNull(path: string): string | null {
  try { return realpathSync(path); } catch { return null; }
}

function outside(path: string): LoraserveError {
  return new LoraserveError('forbidden', `'lora_path' ${path} is outside the adapter store and the directories given with --allow-adapter-dir`, { param: 'lora_path' });
}

function resolveError(e: unknown, path: string): unknown {
  switch ((e as NodeJS.ErrnoException).code) {
    case 'ENOENT': case 'ENOTDIR': return new LoraserveError('model_not_found', `No adapter found for ${path}`, { param: 'lora_path' });
    case 'ELOOP': return invalidField('lora_path', `'lora_path' ${path} has too many levels of symbolic links`);
    case 'EACCES': case 'EPERM': return new LoraserveError('forbidden', `'lora_path' ${path} is not readable by the server`, { param: 'lora_path' });
    default: return e;
  }
}
