// Files for fine-tuning (OpenAI's /v1/files):
//   POST   /v1/files                 multipart: file, purpose=fine-tune; JSONL checked line by line
//   GET    /v1/files                 ?purpose, ?limit, ?after, ?order
//   GET    /v1/files/:file_id
//   GET    /v1/files/:file_id/content
//   DELETE /v1/files/:file_id        refused (409) while a job that has not ended uses it
// Stored under the data directory (src/train/jobs/file-store.ts); a file id is used only once it
// matches its strict pattern, so it never becomes a path elsewhere. Admin key, as adapter management.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { invalidField, LoraserveError } from '../runtime/errors.ts';
import { checkTrainingJsonl } from '../train/jobs/file-store.ts';
import type { FineTuningManager } from '../train/jobs/manager.ts';
import { page } from '../train/jobs/manager.ts';
import { isFileId } from '../train/jobs/ids.ts';
import { fileSchemas } from './fine-tuning-schemas.ts';
import { acceptAll } from './schema-validator.ts';

export interface FilesRouteDeps {
  manager: () => FineTuningManager; // throws (503) while fine-tuning is off
  admin: (req: FastifyRequest) => Promise<void>;
  limits: { maxBytes: number; maxLines: number };
}

export function registerFileRoutes(app: FastifyInstance, deps: FilesRouteDeps): void {
  const { admin, limits } = deps;
  const manager = (): FineTuningManager => deps.manager();
  const files = { // the file store, through the manager (a 503 while fine-tuning is off)
    add: (...a: Parameters<FineTuningManager['files']['add']>) => manager().files.add(...a),
    list: () => manager().files.list(),
    require: (id: string) => manager().files.require(id),
    content: (id: string) => manager().files.content(id),
    remove: (id: string) => manager().files.remove(id),
  };
  const schemas = fileSchemas();

  app.post('/v1/files', { preValidation: admin, schema: schemas.upload, validatorCompiler: acceptAll }, async (req) => {
    if (!req.isMultipart()) throw invalidField('body', 'upload a file as multipart/form-data with the parts "file" and "purpose" ("fine-tune")');
    const fields: Record<string, string> = {};
    let file: { name: string; bytes: Buffer } | null = null;
    try {
      for await (const part of req.parts({ limits: { fileSize: limits.maxBytes, files: 1, fields: 4, parts: 5 } })) {
        if (part.type === 'file') {
          if (part.fieldname !== 'file') throw invalidField('file', `the file part must be named "file", got ${JSON.stringify(part.fieldname)}`);
          file = { name: part.filename || 'upload.jsonl', bytes: await part.toBuffer() };
        } else fields[part.fieldname] = String(part.value);
      }
    } catch (e) {
      if (e instanceof LoraserveError) throw e;
      throw uploadRefusal(e as { code?: string; message: string }, limits.maxBytes);
    }
    const purpose = fields.purpose;
    if (purpose === undefined) throw invalidField('purpose', "the 'purpose' field is required: \"fine-tune\"");
    if (purpose !== 'fine-tune') throw invalidField('purpose', `'purpose' must be "fine-tune" (the only purpose this server stores), got ${JSON.stringify(purpose)}`);
    if (!file) throw invalidField('file', 'the "file" part is required: a JSONL training file');
    const lines = checkTrainingJsonl(file.bytes, limits);
    const meta = files.add(file.bytes, file.name, 'fine-tune', { lines });
    req.log.info({ file: meta.id, bytes: meta.bytes, lines }, 'training file stored');
    return meta;
  });

  app.get<{ Querystring: { purpose?: string; limit?: string; after?: string; order?: string } }>('/v1/files', { preValidation: admin, schema: schemas.list }, async (req) => {
    let list = files.list();
    if (req.query.purpose) list = list.filter((f) => f.purpose === req.query.purpose);
    if (req.query.order === 'asc') list.reverse();
    return page(list, req.query.after, limitOf(req.query.limit, 10_000, 10_000), isFileId, req.query.order === 'asc' ? 'asc' : 'desc');
  });

  app.get<{ Params: { file_id: string } }>('/v1/files/:file_id', { preValidation: admin, schema: schemas.get }, async (req) => files.require(req.params.file_id));

  app.get<{ Params: { file_id: string } }>('/v1/files/:file_id/content', { preValidation: admin, schema: schemas.content }, async (req, reply) => {
    const f = files.require(req.params.file_id);
    reply.type(f.filename.endsWith('.png') ? 'image/png' : 'application/octet-stream');
    return files.content(f.id);
  });

  app.delete<{ Params: { file_id: string } }>('/v1/files/:file_id', { preValidation: admin, schema: schemas.remove }, async (req) => {
    const f = files.require(req.params.file_id);
    const job = manager().fileInUse(f.id);
    if (job) throw new LoraserveError('conflict', `file ${f.id} is used by fine-tuning job ${job}, which has not ended; cancel it or wait for it to end`, { param: 'file_id' });
    files.remove(f.id);
    return { id: f.id, object: 'file', deleted: true };
  });
}

// ?limit: digits (its schema), 1..max; default `def`.
export function limitOf(v: string | undefined, def: number, max = 100): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 1 || n > max) throw invalidField('limit', `'limit' must be an integer in [1, ${max}], got ${JSON.stringify(v)}`);
  return n;
}

function uploadRefusal(err: { code?: string; message: string }, maxBytes: number): LoraserveError {
  switch (err.code) {
    case 'FST_REQ_FILE_TOO_LARGE': return new LoraserveError('payload_too_large', `the file exceeds the limit of ${maxBytes} bytes (--max-training-file-mb)`, { param: 'file' });
    case 'FST_FILES_LIMIT': return new LoraserveError('payload_too_large', 'upload one file per request', { param: 'file' });
    case 'FST_FIELDS_LIMIT': case 'FST_PARTS_LIMIT': return new LoraserveError('payload_too_large', 'the upload holds too many parts: "file" and "purpose" only', { param: 'body' });
    default: return invalidField('body', `malformed multipart upload: ${err.message}`);
  }
}
