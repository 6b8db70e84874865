// Adapter management:
//   POST   /v1/adapters               multipart: name, replace?, adapter_config.json, adapter_model.safetensors
//   GET    /v1/adapters               every adapter: rank, targets, size, version, status, merged, requests
//   GET    /v1/adapters/:name
//   DELETE /v1/adapters/:name         unload and delete the stored files
//   POST   /v1/load_lora_adapter      vLLM: {lora_name, lora_path, load_inplace}
//   POST   /v1/unload_lora_adapter    vLLM: {lora_name}
// Uploads go through validation before anything is written (422 with every problem), then into
// the store atomically (adapter-store.ts).
import { realpathSync, existsSync, statSync } from 'node:fs';
import { sep } from 'node:path';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { AdapterRegistry, AdapterInfo } from '../adapters/registry.ts';
import { CONFIG_FILE, WEIGHTS_FILE } from '../adapters/lora-adapter.ts';
import { invalidField, LoraserveError } from '../runtime/errors.ts';
import type { EngineClient } from '../runtime/engine-client.ts';
import { checkAdminKey } from './auth.ts';
import type { ServerConfig } from './config.ts';
import type { Metrics } from './metrics.ts';

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
      const err = e as { code?: string; statusCode?: number; message: string };
      if (err.statusCode === 413 || err.code === 'FST_REQ_FILE_TOO_LARGE' || err.code === 'FST_FILES_LIMIT' || err.code === 'FST_PARTS_LIMIT') {
        throw new LoraserveError('payload_too_large', `the upload exceeds the limit of ${config.maxUploadBytes} bytes per file (--max-upload-mb) or 2 files`, { param: 'file' });
      }
      throw invalidField('body', `malformed multipart upload: ${err.message}`);
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

  app.get('/v1/adapters', { preHandler: admin }, async () => ({ object: 'list', data: await Promise.all(registry.list().map(describe)) }));

  app.get<{ Params: { name: string } }>('/v1/adapters/:name', { preHandler: admin }, async (req) => {
    const a = registry.get(req.params.name);
    if (!a) throw new LoraserveError('model_not_found', `The lora adapter '${req.params.name}' cannot be found.`, { param: 'name' });
    return describe(a);
  });

  app.delete<{ Params: { name: string } }>('/v1/adapters/:name', { preHandler: admin }, async (req) => {
    await registry.unload(req.params.name, { waitMs: config.unloadWaitMs, deleteFiles: true });
    metrics.adapterUnloads.inc();
    return { id: req.params.name, object: 'adapter', deleted: true };
  });

  app.post('/v1/load_lora_adapter', { preHandler: admin }, async (req, reply) => {
    const b = (req.body ?? {}) as { lora_name?: unknown; lora_path?: unknown; load_inplace?: unknown };
    if (typeof b.lora_name !== 'string' || typeof b.lora_path !== 'string') throw invalidField(typeof b.lora_name !== 'string' ? 'lora_name' : 'lora_path', "Both 'lora_name' and 'lora_path' must be provided.");
    const dir = allowedDir(b.lora_path, [registry.store.root, ...config.allowAdapterDirs]);
    await counted(registry.loadDir(b.lora_name, dir, { replace: b.load_inplace === true }));
    reply.type('text/plain; charset=utf-8');
    return `Success: LoRA adapter '${b.lora_name}' added successfully.`;
  });

  app.post('/v1/unload_lora_adapter', { preHandler: admin }, async (req, reply) => {
    const b = (req.body ?? {}) as { lora_name?: unknown };
    if (typeof b.lora_name !== 'string') throw invalidField('lora_name', "'lora_name' must be provided.");
    await registry.unload(b.lora_name, { waitMs: config.unloadWaitMs, deleteFiles: false });
    metrics.adapterUnloads.inc();
    reply.type('text/plain; charset=utf-8');
    return `Success: LoRA adapter '${b.lora_name}' removed successfully.`;
  });
}

// A server-side path is accepted only inside the store or an --allow-adapter-dir (after resolving
// symbolic links, so a link cannot point outside).
function allowedDir(path: string, roots: string[]): string {
  if (!existsSync(path)) throw new LoraserveError('model_not_found', `No adapter found for ${path}`, { param: 'lora_path' });
  const real = realpathSync(path);
  if (!statSync(real).isDirectory()) throw invalidField('lora_path', `'lora_path' must be a directory`);
  const ok = roots.some((r) => existsSync(r) && (real === realpathSync(r) || real.startsWith(realpathSync(r) + sep)));
  if (!ok) throw new LoraserveError('forbidden', `'lora_path' ${path} is outside the adapter store and the directories given with --allow-adapter-dir`, { param: 'lora_path' });
  return real;
}
