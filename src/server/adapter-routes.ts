// Adapter management:
//   POST   /v1/adapters               multipart: name, replace?, adapter_config.json, adapter_model.safetensors,
//                                     loraserve.json? ({description, examples}: adapter-meta.ts)
//   PATCH  /v1/adapters/:name         JSON {description?, examples?}: a stored adapter's metadata
//   GET    /v1/adapters               every adapter: rank, targets, size, version, status, merged, requests
//   GET    /v1/adapters/:name
//   DELETE /v1/adapters/:name         unload and delete the stored files (?wait_ms=N: how long to wait
//                                     for requests in flight, at most --unload-wait-ms; 0: refuse at once)
//   POST   /v1/adapters/:name/reload  read its directory again (files changed in place, or a failed one)
//   POST   /v1/adapters/merge         JSON: merge served adapters into a new one (merge-route.ts)
//   POST   /v1/load_lora_adapter      vLLM: {lora_name, lora_path, load_inplace}; recorded in the store
//                                     directory, registered again after a restart (path-registrations.ts)
//   POST   /v1/unload_lora_adapter    vLLM: {lora_name}; forgets that record (so does DELETE)
// Uploads go through validation before anything is written (422 with every problem), then into
// the store atomically (adapter-store.ts). JSON bodies, query strings and path parameters are
// validated by their schemas (request-schemas.ts); the admin key is checked before (preValidation).
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { AdapterRegistry, AdapterInfo } from '../adapters/registry.ts';
import { CONFIG_FILE, WEIGHTS_FILE } from '../adapters/lora-adapter.ts';
import { META_FILE, parseMeta } from '../adapters/adapter-meta.ts';
import { checkNewAdapterName } from '../adapters/adapter-store.ts';
import type { AdapterMeta } from '../adapters/adapter-meta.ts';
import { invalidField, LoraserveError } from '../runtime/errors.ts';
import type { EngineClient } from '../runtime/engine-client.ts';
import { checkAdminKey } from './auth.ts';
import { adapterPathRoots, resolveAdapterPath } from './adapter-path.ts';
import { registerMergeRoute } from './merge-route.ts';
import type { ServerConfig } from './config.ts';
import type { Metrics } from './metrics.ts';
import { adapterSchemas } from './request-schemas.ts';
import type { SchemaContext } from './request-schemas.ts';
import { acceptAll } from './schema-validator.ts';

// Per upload (app.ts registers @fastify/multipart with these and the file size limit).
export const UPLOAD_LIMITS = { files: 3, fields: 8, parts: 11 };

export interface AdapterRouteDeps {
  registry: AdapterRegistry;
  engine: EngineClient;
  config: ServerConfig;
  metrics: Metrics;
  schemaCtx: SchemaContext;
}

export function registerAdapterRoutes(app: FastifyInstance, deps: AdapterRouteDeps): void {
  const { registry, config, metrics } = deps;
  const schemas = adapterSchemas(deps.schemaCtx);
  const admin = async (req: FastifyRequest): Promise<void> => checkAdminKey(req, config.adminKey, config.enableLocalAdmin);
  const describe = async (a: AdapterInfo) => ({ ...a, object: 'adapter', merged: await deps.engine.hasMerged(a.version) });
  const counted = async <T>(p: Promise<T>): Promise<T> => {
    try {
      const v = await p;
      metrics.adapterLoads.inc({ result: 'ok' });
      return v;
    } catch (e) {
      metrics.adapterLoads.inc({ result: 'failed' });
      throw e;
    }
  };

  // the multipart schema documents the parts; they are checked as they stream in, below
  app.post('/v1/adapters', { preValidation: admin, schema: schemas.upload, validatorCompiler: acceptAll }, async (req, reply) => {
    if (!req.isMultipart()) throw invalidField('body', 'upload an adapter as multipart/form-data with a "name" field and the files adapter_config.json and adapter_model.safetensors');
    const fields: Record<string, string> = {};
    const files: Record<string, Buffer> = {};
    try {
      for await (const part of req.parts()) {
        if (part.type === 'file') {
          const key = [CONFIG_FILE, WEIGHTS_FILE, META_FILE].includes(part.filename) ? part.filename : part.fieldname;
          files[key] = await part.toBuffer();
        } else fields[part.fieldname] = String(part.value);
      }
    } catch (e) {
      throw multipartRefusal(e as { code?: string; statusCode?: number; message: string }, config.maxUploadBytes);
    }
    const missing = [CONFIG_FILE, WEIGHTS_FILE].filter((f) => !files[f]);
    if (missing.length) {
      if (files['adapter_model.bin']) throw new LoraserveError('invalid_adapter', 'adapter_model.bin is a pickle file, which can run arbitrary code when loaded; upload adapter_model.safetensors instead', { problems: ['adapter_model.bin (pickle) is refused'], param: 'file' });
      throw invalidField('file', `missing file(s): ${missing.join(', ')}`);
    }
    const name = fields.name;
    if (!name) throw invalidField('name', `the "name" field is required`);
    const replace = fields.replace === 'true' || fields.replace === '1';
    const meta = files[META_FILE] ? metaPart(files[META_FILE]) : undefined;
    const info = await counted(registry.upload(name, { config: files[CONFIG_FILE], weights: files[WEIGHTS_FILE] }, { replace, meta }));
    req.log.info({ adapter: name, version: info.version, rank: info.rank }, 'adapter uploaded');
    reply.code(201);
    return describe(info);
  });

  registerMergeRoute(app, { registry, admin, describe, counted, schema: schemas.merge });

  app.get('/v1/adapters', { preValidation: admin, schema: schemas.list }, async () => ({ object: 'list', data: await Promise.all(registry.list().map(describe)) }));

  app.get<{ Params: { name: string } }>('/v1/adapters/:name', { preValidation: admin, schema: schemas.get }, async (req) => {
    const a = registry.get(req.params.name);
    if (!a) throw new LoraserveError('model_not_found', `The lora adapter '${req.params.name}' cannot be found.`, { param: 'name' });
    return describe(a);
  });

  app.patch<{ Params: { name: string } }>('/v1/adapters/:name', { preValidation: admin, schema: schemas.patch }, async (req) => {
    const info = await registry.updateMeta(req.params.name, parseMeta(req.body));
    req.log.info({ adapter: req.params.name, examples: info.examples.length }, 'adapter metadata updated');
    return describe(info);
  });

  app.delete<{ Params: { name: string }; Querystring: { wait_ms?: string } }>('/v1/adapters/:name', { preValidation: admin, schema: schemas.remove }, async (req) => {
    await registry.unload(req.params.name, { waitMs: waitMs(req.query.wait_ms, config.unloadWaitMs), deleteFiles: true });
    metrics.adapterUnloads.inc();
    return { id: req.params.name, object: 'adapter', deleted: true };
  });

  app.post<{ Params: { name: string } }>('/v1/adapters/:name/reload', { preValidation: admin, schema: schemas.reload }, async (req) => {
    const info = await counted(registry.reload(req.params.name));
    req.log.info({ adapter: req.params.name, version: info.version }, 'adapter reloaded');
    return describe(info);
  });

  app.post('/v1/load_lora_adapter', { preValidation: admin, schema: schemas.load }, async (req, reply) => {
    const b = req.body as { lora_name: string; lora_path: string; load_inplace?: boolean | null };
    checkNewAdapterName(b.lora_name, 'lora_name');
    const dir = resolveAdapterPath(b.lora_path, adapterPathRoots(registry.store.root, config.allowAdapterDirs));
    try {
      await counted(registry.loadDir(b.lora_name, dir, { replace: b.load_inplace === true, register: true }));
    } catch (err) {
      // a name already loaded: 400, as vLLM answers it (its clients test for that), not upload's 409
      if (err instanceof LoraserveError && err.code === 'conflict') throw new LoraserveError('invalid_request', err.message, { param: 'lora_name' });
      throw err;
    }
    reply.type('text/plain; charset=utf-8');
    return `Success: LoRA adapter '${b.lora_name}' added successfully.`;
  });

  app.post('/v1/unload_lora_adapter', { preValidation: admin, schema: schemas.unload }, async (req, reply) => {
    const b = req.body as { lora_name: string; wait_ms?: number | string | null };
    await registry.unload(b.lora_name, { waitMs: waitMs(b.wait_ms, config.unloadWaitMs), deleteFiles: false });
    metrics.adapterUnloads.inc();
    reply.type('text/plain; charset=utf-8');
    return `Success: LoRA adapter '${b.lora_name}' removed successfully.`;
  });
}

// An upload's loraserve.json part → its metadata (400 naming the field when it is not valid).
function metaPart(bytes: Buffer): AdapterMeta {
  let v: unknown;
  try {
    v = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw invalidField(META_FILE, `${META_FILE} is not valid JSON`);
  }
  const m = parseMeta(v, META_FILE);
  return { description: m.description ?? null, examples: m.examples ?? [] };
}

// How long an unload may wait for requests in flight: `wait_ms` (query or body), at most the
// server's --unload-wait-ms, which is also the default. Its schema checks the form (digits, or a
// non-negative integer in a body); the limit is the server's, checked here.
function waitMs(v: unknown, max: number): number {
  if (v === undefined || v === null) return max;
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > max) throw invalidField('wait_ms', `'wait_ms' must be an integer in [0, ${max}] (--unload-wait-ms), got ${JSON.stringify(v)}`);
  return n;
}

// @fastify/multipart's limits → a 413 naming the limit that was hit; anything else is a 400.
function multipartRefusal(err: { code?: string; statusCode?: number; message: string }, maxFileBytes: number): LoraserveError {
  const limits: Record<string, string> = {
    FST_REQ_FILE_TOO_LARGE: `a file exceeds the upload limit of ${maxFileBytes} bytes (--max-upload-mb)`,
    FST_FILES_LIMIT: `the upload holds more than ${UPLOAD_LIMITS.files} files (adapter_config.json and adapter_model.safetensors)`,
    FST_FIELDS_LIMIT: `the upload holds more than ${UPLOAD_LIMITS.fields} text fields (name, replace)`,
    FST_PARTS_LIMIT: `the upload holds more than ${UPLOAD_LIMITS.parts} parts (at most ${UPLOAD_LIMITS.fields} text fields and ${UPLOAD_LIMITS.files} files)`,
  };
  const message = err.code ? limits[err.code] : undefined;
  if (message) return new LoraserveError('payload_too_large', message, { param: err.code === 'FST_REQ_FILE_TOO_LARGE' || err.code === 'FST_FILES_LIMIT' ? 'file' : 'body' });
  if (err.statusCode === 413) return new LoraserveError('payload_too_large', `the upload exceeds a limit: ${err.message}`, { param: 'file' });
  return invalidField('body', `malformed multipart upload: ${err.message}`);
}
