// Adapter management:
//   POST   /v1/adapters               multipart: name, replace?, adapter_config.json, adapter_model.safetensors
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
// the store atomically (adapter-store.ts).
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { AdapterRegistry, AdapterInfo } from '../adapters/registry.ts';
import { CONFIG_FILE, WEIGHTS_FILE } from '../adapters/lora-adapter.ts';
import { invalidField, LoraserveError } from '../runtime/errors.ts';
import type { EngineClient } from '../runtime/engine-client.ts';
import { checkAdminKey } from './auth.ts';
import { adapterPathRoots, resolveAdapterPath } from './adapter-path.ts';
import { registerMergeRoute } from './merge-route.ts';
import type { ServerConfig } from './config.ts';
import type { Metrics } from './metrics.ts';

// Per upload (app.ts registers @fastify/multipart with these and the file size limit).
export const UPLOAD_LIMITS = { files: 2, fields: 8, parts: 10 };

export interface AdapterRouteDeps {
  registry: AdapterRegistry;
  engine: EngineClient;
  config: ServerConfig;
  metrics: Metrics;
}

export function registerAdapterRoutes(app: FastifyInstance, deps: AdapterRouteDeps): void {
  const { registry, config, metrics } = deps;
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

  app.post('/v1/adapters', { preHandler: admin }, async (req, reply) => {
    if (!req.isMultipart()) throw invalidField('body', 'upload an adapter as multipart/form-data with a "name" field and the files adapter_config.json and adapter_model.safetensors');
    const fields: Record<string, string> = {};
    const files: Record<string, Buffer> = {};
    try {
      for await (const part of req.parts()) {
        if (part.type === 'file') {
          const key = [CONFIG_FILE, WEIGHTS_FILE].includes(part.filename) ? part.filename : part.fieldname;
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
    const info = await counted(registry.upload(name, { config: files[CONFIG_FILE], weights: files[WEIGHTS_FILE] }, { replace }));
    req.log.info({ adapter: name, version: info.version, rank: info.rank }, 'adapter uploaded');
    reply.code(201);
    return describe(info);
  });

  registerMergeRoute(app, { registry, admin, describe, counted });

  app.get('/v1/adapters', { preHandler: admin }, async () => ({ object: 'list', data: await Promise.all(registry.list().map(describe)) }));

  app.get<{ Params: { name: string } }>('/v1/adapters/:name', { preHandler: admin }, async (req) => {
    const a = registry.get(req.params.name);
    if (!a) throw new LoraserveError('model_not_found', `The lora adapter '${req.params.name}' cannot be found.`, { param: 'name' });
    return describe(a);
  });

  app.delete<{ Params: { name: string }; Querystring: { wait_ms?: string } }>('/v1/adapters/:name', { preHandler: admin }, async (req) => {
    await registry.unload(req.params.name, { waitMs: waitMs(req.query.wait_ms, config.unloadWaitMs), deleteFiles: true });
    metrics.adapterUnloads.inc();
    return { id: req.params.name, object: 'adapter', deleted: true };
  });

  app.post<{ Params: { name: string } }>('/v1/adapters/:name/reload', { preHandler: admin }, async (req) => {
    const info = await counted(registry.reload(req.params.name));
    req.log.info({ adapter: req.params.name, version: info.version }, 'adapter reloaded');
    return describe(info);
  });

  app.post('/v1/load_lora_adapter', { preHandler: admin }, async (req, reply) => {
    const b = (req.body ?? {}) as { lora_name?: unknown; lora_path?: unknown; load_inplace?: unknown };
    if (typeof b.lora_name !== 'string') throw invalidField('lora_name', "Both 'lora_name' and 'lora_path' must be provided.");
    const dir = resolveAdapterPath(b.lora_path, adapterPathRoots(registry.store.root, config.allowAdapterDirs));
    await counted(registry.loadDir(b.lora_name, dir, { replace: b.load_inplace === true, register: true }));
    reply.type('text/plain; charset=utf-8');
    return `Success: LoRA adapter '${b.lora_name}' added successfully.`;
  });

  app.post('/v1/unload_lora_adapter', { preHandler: admin }, async (req, reply) => {
    const b = (req.body ?? {}) as { lora_name?: unknown; wait_ms?: unknown };
    if (typeof b.lora_name !== 'string') throw invalidField('lora_name', "'lora_name' must be provided.");
    await registry.unload(b.lora_name, { waitMs: waitMs(b.wait_ms, config.unloadWaitMs), deleteFiles: false });
    metrics.adapterUnloads.inc();
    reply.type('text/plain; charset=utf-8');
    return `Success: LoRA adapter '${b.lora_name}' removed successfully.`;
  });
}

// How long an unload may wait for requests in flight: `wait_ms` (query or body), at most the
// server's --unload-wait-ms, which is also the default.
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
