// `loraserve serve` / `npm start`: config → engine worker → adapter registry (serving the store,
// then the load_lora_adapter registrations, then preloaded adapters) → HTTP app → listen. Shuts down cleanly on SIGINT; on SIGTERM it drains
// first: in-flight requests finish, up to --drain-timeout (drain.ts).
import { loadConfig, ConfigError } from './config.ts';
import type { ServerConfig } from './config.ts';
import { buildApp } from './app.ts';
import type { EngineClient } from '../runtime/engine-client.ts';
import { startEngine } from '../start-engine.ts';
import { AdapterRegistry } from '../adapters/registry.ts';
import type { RegistrationReport } from '../adapters/registry.ts';
import { adapterPathRoots, resolveAdapterPath } from './adapter-path.ts';
import { AdapterStore } from '../adapters/adapter-store.ts';
import { StoreSync } from '../adapters/store-sync.ts';
import { PromptWorker } from './prompt-preparer.ts';
import { loadModelFiles } from '../runtime/model-loader.ts';
import type { FastifyInstance } from 'fastify';
import { relative } from 'node:path';
import { drainOf } from './drain.ts';

export interface RunningServer {
  app: FastifyInstance;
  engine: EngineClient;
  registry: AdapterRegistry;
  prompts: PromptWorker;
  storeSync: StoreSync | null; // --store-sync-ms > 0: polls the shared adapter store
  url: string;
  close(): Promise<void>;
}

export async function startServer(config: ServerConfig): Promise<RunningServer> {
  const files = loadModelFiles(config.model, { name: config.modelName ?? undefined });
  const engine = await startEngine({
    faults: config.testFaults,
    runtime: { modelDir: config.model, modelName: files.name, maxContext: config.maxContext, executionProvider: config.executionProvider, intraOpThreads: config.threads, loraArenaBytes: config.loraArenaBytes, quantize: config.quantize },
    scheduler: { maxRunning: config.maxBatch, prefillChunk: config.prefillChunk, kvBudgetBytes: config.kvBudgetBytes, itlTargetMs: config.itlTargetMs, scheduling: config.scheduling },
    adapters: { loraMode: config.loraMode, maxLoraRank: config.maxLoraRank, hostCacheBytes: config.hostCacheBytes, mergedCacheBytes: config.mergedCacheBytes, mergedQuantError: config.mergedQuantError },
  });
  let prompts: PromptWorker | null = null;
  try {
    prompts = await PromptWorker.start({ tokenizerJson: files.tokenizerJson, tokenizerConfig: files.tokenizerConfig, maxContext: engine.info.maxContext });
    const registry = new AdapterRegistry(engine, files.config, files.name, config.maxLoraRank, new AdapterStore(config.adapters, { shared: config.storeSyncMs > 0 }));
    const app = await buildApp({ config, engine, registry, prompts, modelName: files.name });
    const stored = await registry.loadStore();
    for (const f of stored.failed) app.log.warn({ adapter: f.name, error: f.error }, 'stored adapter not served');
    // each recorded path passes the rule load_lora_adapter applies before anything is read there
    const roots = adapterPathRoots(registry.store.root, config.allowAdapterDirs);
    const registered = await registry.loadRegistrations((path) => resolveAdapterPath(path, roots));
    logRegistrations(app, registered);
    const preloaded = config.preloadAdapters !== null ? await registry.loadPreloaded(config.preloadAdapters) : { loaded: [], failed: [] };
    for (const f of preloaded.failed) app.log.warn({ adapter: f.name, error: f.error, dir: config.preloadAdapters }, 'preloaded adapter not served');
    app.log.info({ model: files.name, adapters: stored.loaded.length, registered: registered.loaded.length, preloaded: preloaded.loaded.length }, 'model and adapters loaded');
    const url = await app.listen({ host: config.host, port: config.port });
    // other replicas' uploads, replaces, deletes and registrations in the shared store (store-sync.ts)
    const storeSync = config.storeSyncMs > 0 ? new StoreSync(registry, { intervalMs: config.storeSyncMs, log: app.log }) : null;
    storeSync?.start();
    return {
      app, engine, registry, prompts, storeSync, url,
      close: async () => { await storeSync?.stop(); await app.close(); await engine.close(); await prompts?.close(); },
    };
  } catch (err) {
    await engine.close();
    await prompts?.close();
    throw err;
  }
}

// What start-up made of the load_lora_adapter registrations: every one that is not served as it was
// registered is a warning naming the adapter, its path and what changed.
function logRegistrations(app: FastifyInstance, r: RegistrationReport): void {
  if (r.problems.length) {
    app.log.warn({ file: r.file, keptAside: r.keptAside, problems: r.problems }, `adapter registrations file ${r.file} is corrupt: ${r.problems.join('; ')}; a copy is kept at ${r.keptAside ?? '(none)'}; starting without what could not be read`);
  }
  for (const c of r.changed) {
    const what = [
      c.version !== c.was.version ? `its content changed (version ${c.was.version} → ${c.version}); serving the new content` : null,
      c.path !== c.was.path ? `its path now resolves to ${c.path}` : null,
    ].filter((x) => x !== null).join('; ');
    app.log.warn({ adapter: c.name, path: c.was.path, resolvedPath: c.path, previousVersion: c.was.version, version: c.version }, `registered adapter '${c.name}' at ${c.was.path}: ${what}`);
  }
  for (const f of r.failed) {
    app.log.warn({ adapter: f.name, path: f.path, error: f.error }, `registered adapter '${f.name}' at ${f.path} is not served: ${f.error}; it is listed as failed until it is reloaded (once its files are back) or unloaded`);
  }
}

export async function serve(argv: string[]): Promise<void> {
  let config: ServerConfig;
  try {
    config = loadConfig(argv);
  } catch (e) {
    if (e instanceof ConfigError) { process.stderr.write(`loraserve: ${e.message}\n`); process.exit(2); }
    throw e;
  }
  const server = await startServer(config);
  process.stderr.write(banner(server, config));
  const stop = async (): Promise<void> => { await server.close(); process.exit(0); };
  // SIGTERM (Kubernetes, a rolling update): drain first, up to --drain-timeout (drain.ts), then exit 0
  const drainThenStop = async (): Promise<void> => { await drainOf(server.app)?.drain(config.drainTimeoutMs); await stop(); };
  process.once('SIGINT', () => void stop());
  process.once('SIGTERM', () => void drainThenStop());
}

// What a person sees in the terminal once the server listens: the URL, every model it serves (the
// base model and each adapter, with its description), and a request to paste.
export function banner(server: Pick<RunningServer, 'url' | 'registry'>, config: Pick<ServerConfig, 'apiKey' | 'model'>): string {
  const base = server.registry.modelName;
  const adapters = server.registry.list();
  const width = Math.max(base.length, ...adapters.map((a) => a.name.length)) + 2;
  const example = adapters[0]?.name ?? base;
  const auth = config.apiKey ? ` -H "authorization: Bearer $LORASERVE_API_KEY"` : '';
  const body = JSON.stringify({ model: example, prompt: 'Once upon a time', max_tokens: 48, temperature: 0 });
  return [
    '',
    `loraserve is ready on ${server.url}`,
    '',
    'models (the "model" field of a request):',
    `  ${base.padEnd(width)}the base model (${relative(process.cwd(), config.model) || config.model})`,
    ...adapters.map((a) => `  ${a.name.padEnd(width)}${a.description ?? 'adapter'}`),
    '',
    'try:',
    `  curl ${server.url}/v1/completions -H 'content-type: application/json'${auth} \\`,
    `    -d '${body}'`,
    '',
    '',
  ].join('\n');
}
