// buildApp: Fastify with every route on one screen, one error handler, and the plugins
// (@fastify/websocket for streaming, @fastify/multipart for adapter uploads).
import Fastify from 'fastify';
import type { FastifyError, FastifyInstance } from 'fastify';
import websocket from '@fastify/websocket';
import multipart from '@fastify/multipart';
import { randomUUID } from 'node:crypto';
import type { EngineClient } from '../runtime/engine-client.ts';
import type { AdapterRegistry } from '../adapters/registry.ts';
import type { TextTokenizer } from '../runtime/tokenizer.ts';
import { LoraserveError } from '../runtime/errors.ts';
import { ChatTemplate } from './chat-template.ts';
import { completionsHandler } from './completions.ts';
import type { CompletionDeps } from './completions.ts';
import { registerAdapterRoutes } from './adapter-routes.ts';
import { registerWebSocket } from './websocket.ts';
import { Admission } from './generation.ts';
import { errorBody } from './http-errors.ts';
import { checkApiKey } from './auth.ts';
import { Metrics } from './metrics.ts';
import type { ServerConfig } from './config.ts';

export interface AppDeps {
  config: ServerConfig;
  engine: EngineClient;
  registry: AdapterRegistry;
  tokenizer: TextTokenizer;
  modelName: string;
  metrics?: Metrics;
}

export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const { config, engine, registry, tokenizer, modelName } = deps;
  const app = Fastify({
    logger: {
      level: config.logLevel,
      redact: ['req.headers.authorization'],
    },
    genReqId: (req) => (typeof req.headers['x-request-id'] === 'string' && req.headers['x-request-id'].length <= 128 ? req.headers['x-request-id'] : randomUUID()),
    bodyLimit: 32 * 1024 * 1024,
  });
  const metrics = deps.metrics ?? new Metrics(config.metricsTopAdapters, config.kvBudgetBytes);
  engine.onStep = (s) => {
    if (s.kind === 'decode') metrics.batchSize.observe(s.batch);
    metrics.stepDuration.observe({ kind: s.kind, path: s.path }, s.ms / 1000);
  };
  const completionDeps: CompletionDeps = {
    engine, registry, modelName, metrics, tokenizer,
    admission: new Admission(config.maxQueue),
    chatTemplate: new ChatTemplate(tokenizer.chatTemplate, { bos_token: tokenizer.bosToken, eos_token: tokenizer.eosToken }),
    limits: { vocabSize: engine.info.vocabSize, maxContext: engine.info.maxContext, defaultMaxTokens: config.maxTokensDefault, maxPrompts: 64, maxChoices: config.maxQueue },
  };

  await app.register(websocket, { options: { maxPayload: 4 * 1024 * 1024 } });
  await app.register(multipart, { limits: { fileSize: config.maxUploadBytes, files: 2, fields: 8, parts: 10 } });

  app.setErrorHandler((err: FastifyError | LoraserveError, req, reply) => {
    let e: unknown = err;
    if (!(err instanceof LoraserveError) && typeof (err as FastifyError).statusCode === 'number' && (err as FastifyError).statusCode! < 500) {
      const status = (err as FastifyError).statusCode!;
      e = new LoraserveError(status === 413 ? 'payload_too_large' : status === 401 ? 'unauthorized' : 'invalid_request', err.message, { param: status === 413 ? 'body' : null });
    }
    const { status, body, retryAfter } = errorBody(e);
    if (status >= 500) req.log.error({ err }, 'request failed');
    if (retryAfter) reply.header('retry-after', String(retryAfter));
    reply.code(status).send(body);
  });
  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send(errorBody(new LoraserveError('model_not_found', `no route ${req.method} ${req.url}`)).body);
  });

  const inference = async (req: Parameters<typeof checkApiKey>[0]) => {
    checkApiKey(req, config.apiKey);
    if (config.logPrompts) req.log.info({ body: req.body }, 'request body');
  };
  app.post('/v1/completions', { preHandler: inference }, completionsHandler(completionDeps, 'completion'));
  app.post('/v1/chat/completions', { preHandler: inference }, completionsHandler(completionDeps, 'chat'));
  const card = (id: string, parent: string | null, extra: Record<string, unknown> = {}) => ({ id, object: 'model', created: Math.floor(Date.now() / 1000), owned_by: 'loraserve', root: parent ? id : modelName, parent, max_model_len: engine.info.maxContext, ...extra });
  app.get('/v1/models', { preHandler: inference }, async () => ({
    object: 'list',
    data: [card(modelName, null, { status: 'ready' }), ...registry.list().map((a) => card(a.name, modelName, { status: a.status, version: a.version }))],
  }));
  app.get<{ Params: { id: string } }>('/v1/models/:id', { preHandler: inference }, async (req) => {
    if (req.params.id === modelName) return card(modelName, null, { status: 'ready' });
    const a = registry.get(req.params.id);
    if (!a) throw new LoraserveError('model_not_found', `The model \`${req.params.id}\` does not exist.`, { param: 'model' });
    return card(a.name, modelName, { status: a.status, version: a.version });
  });
  registerAdapterRoutes(app, { registry, engine, config, metrics });
  registerWebSocket(app, completionDeps, config.apiKey);

  app.get('/health', async () => {
    const s = await engine.stats();
    return { status: 'ok', model: modelName, adapters: registry.list().length, running: s.running, waiting: s.waiting };
  });
  app.get('/metrics', async (_req, reply) => {
    metrics.updateEngine(await engine.stats());
    reply.type(metrics.registry.contentType);
    return metrics.registry.metrics();
  });
  return app;
}
