// The files of the fine-tuning API (POST /v1/files), on disk under <data dir>/files:
//   <file id>/meta.json   the OpenAI file object
//   <file id>/content     the bytes as uploaded
// A file is written into .tmp-<random>/ (both parts fsynced) and renamed to <file id>/, so a crash
// leaves either the whole file or a leftover that start-up removes; a delete renames it to
// .trash-<random> first. Uploads with purpose "fine-tune" are JSON lines checked line by line
// (checkTrainingJsonl) before anything is written: every bad line is reported with its number.
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { LoraserveError } from '../../runtime/errors.ts';
import { jsonLines, parseJsonLine } from '../dataset.ts';
import { isFileId, newId } from './ids.ts';
import { syncDir, writeFileDurable, writeJsonDurable } from './atomic.ts';

export type FilePurpose = 'fine-tune' | 'fine-tune-results';

export interface FileObject {
  id: string;
  object: 'file';
  bytes: number;
  created_at: number;
  filename: string;
  purpose: FilePurpose;
  status: 'processed';
  status_details: null;
  expires_at: null;
  lines?: number;         // fine-tune files: the number of examples (non-blank lines)
}

export interface FileLimits {
  maxBytes: number;       // 413 beyond
  maxLines: number;       // 413 beyond
}

const MAX_LISTED_PROBLEMS = 100;

// Every problem of a training file (JSON lines, one example per non-blank line, the formats of
// src/train/dataset.ts), or its example count. Checks structure only: token lengths are checked
// against the job's seq_len when its training starts.
export function checkTrainingJsonl(bytes: Uint8Array, limits: FileLimits): number {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes).replace(/^\uFEFF/, '');
  } catch {
    throw new LoraserveError('invalid_file', 'the training file is not valid UTF-8 text', { param: 'file', problems: ['not valid UTF-8'] });
  }
  const units = jsonLines(text, limits.maxLines);
  if (units.length > limits.maxLines) {
    throw new LoraserveError('payload_too_large', `the training file holds more than ${limits.maxLines} examples (non-blank lines), the limit (--max-training-file-lines)`, { param: 'file' });
  }
  const problems: string[] = [];
  let bad = 0;
  for (const u of units) {
    try {
      parseJsonLine(u.body);
    } catch (e) {
      bad++;
      if (problems.length < MAX_LISTED_PROBLEMS) problems.push(`line ${u.line}: ${(e as Error).message}`);
    }
  }
  if (units.length === 0) problems.push('the file holds no examples (it is empty or only blank lines)');
  if (problems.length) {
    const more = bad > problems.length ? ` (the first ${problems.length} of ${bad} are listed)` : '';
    throw new LoraserveError('invalid_file', `the training file is invalid: ${bad || 1} bad line(s)${more}; nothing was stored. ${problems.slice(0, 5).join('; ')}${problems.length > 5 ? '; …' : ''}`, { param: 'file', problems });
  }
  return units.length;
}

export class FileStore {
  readonly root: string;
  private readonly files = new Map<string, FileObject>();

  constructor(dataDir: string) {
    this.root = join(dataDir, 'files');
    mkdirSync(this.root, { recursive: true });
    for (const e of readdirSync(this.root)) {
      const dir = join(this.root, e);
      if (!isFileId(e)) { if (e.startsWith('.tmp-') || e.startsWith('.trash-')) rmSync(dir, { recursive: true, force: true }); continue; }
      try {
        const meta = JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8')) as FileObject;
        if (meta.id === e && existsSync(join(dir, 'content'))) this.files.set(e, meta);
      } catch { /* unreadable: not listed */ }
    }
  }

  add(bytes: Uint8Array, filename: string, purpose: FilePurpose, extra: Partial<FileObject> = {}): FileObject {
    const id = newId('file');
    const meta: FileObject = { id, object: 'file', bytes: bytes.byteLength, created_at: Math.floor(Date.now() / 1000), filename: filename.slice(0, 256), purpose, status: 'processed', status_details: null, expires_at: null, ...extra };
    const tmp = join(this.root, `.tmp-${randomBytes(6).toString('hex')}`);
    mkdirSync(tmp);
    try {
      writeFileDurable(join(tmp, 'content'), bytes);
      writeJsonDurable(join(tmp, 'meta.json'), meta);
      renameSync(tmp, join(this.root, id));
      syncDir(this.root);
    } catch (e) {
      rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
    this.files.set(id, meta);
    return meta;
  }

  get(id: string): FileObject | undefined {
    return isFileId(id) ? this.files.get(id) : undefined;
  }

  // The file or a 404 naming the field it came from.
  require(id: string, param = 'file_id'): FileObject {
    const f = this.get(id);
    if (!f) throw new LoraserveError('not_found', `No such File object: ${JSON.stringify(id)}`, { param });
    return f;
  }

  list(): FileObject[] {
    return [...this.files.values()].sort((a, b) => b.created_at - a.created_at || (a.id < b.id ? 1 : -1));
  }

  contentPath(id: string): string {
    const f = this.require(id);
    return join(this.root, f.id, 'content');
  }

  content(id: string): Buffer {
    return readFileSync(this.contentPath(id));
  }

  remove(id: string): void {
    const f = this.require(id);
    const trash = join(this.root, `.trash-${randomBytes(6).toString('hex')}`);
    renameSync(join(this.root, f.id), trash);
    syncDir(this.root);
    this.files.delete(f.id);
    rmSync(trash, { recursive: true, force: true });
  }
}
