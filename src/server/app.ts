// buildApp: Fastify with every route on one screen, one error handler, the request guard (Host,
// Origin: request-guard.ts) and the plugins (@fastify/websocket for streaming,
// @fastify/multipart for adapter uploads, @fastify/cors only when --cors-origin is given,
// @fastify/swagger for GET /openapi.json). Every route declares its schemas (request-schemas.ts),
// validated by the one validator (schema-validator.ts) that the WebSocket API uses too.
import Fastify from 'fastify';
import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify';
import websocket from '@fastify/websocket';
import multipart from '@fastify/multipart';
import cors from '@fastify/cors';
import swagger from '@fastify/swagger';
import { createRequire } from 'node:module';
import { createHash, randomUUID } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import type { EngineClient } from '../runtime/engine-client.ts';
import type { AdapterRegistry } from '../adapters/registry.ts';
import { LoraserveError } from '../runtime/errors.ts';
import type { ErrorCode } from '../runtime/errors.ts';
import { completionsHandler } from './completions.ts';
import type { CompletionDeps } from './completions.ts';
import { registerAdapterRoutes, UPLOAD_LIMITS } from './adapter-routes.ts';
import { registerWebSocket, WS_PATH } from './websocket.ts';
import { registerFineTuning } from './fine-tuning-routes.ts';
import { fineTuningWs } from './fine-tuning-ws.ts';
import { registerTokenizeRoutes } from './tokenize-routes.ts';
import { Admission } from './generation.ts';
import { embedTokens, routingTokens } from './embedder.ts';
import { registerRoutingRoutes } from './routing-routes.ts';
import { SemanticRouter } from './semantic-routing.ts';
import { errorBody } from './http-errors.ts';
import { checkApiKey } from './auth.ts';
import { guardRequest } from './request-guard.ts';
import { parseJsonBody } from './json-body.ts';
import type { PromptPreparer } from './prompt-preparer.ts';
import { Metrics } from './metrics.ts';
import { maxResidentAdapters } from './lora-activity.ts';
import { installDrain } from './drain.ts';
import type { ServerConfig } from './config.ts';
import { schemaCompiler, STRICT_AJV_OPTIONS } from './schema-validator.ts';
import { inferenceSchemas, modelSchemas, serviceSchemas } from './request-schemas.ts';
import type { SchemaContext } from './request-schemas.ts';
import { MAX_N } from './openai-request.ts';

export interface AppDeps {
  config: ServerConfig;
  engine: EngineClient;
  registry: AdapterRegistry;
  prompts: PromptPreparer;
  modelName: string;
  metrics?: Metrics;
}

const MAX_PROMPTS = 64;

// The largest JSON body a valid request can have: MAX_PROMPTS text prompts at the byte bound (×2
// for JSON escapes and the other fields), or MAX_PROMPTS token-id prompts of the whole context (≤ 8
// bytes an id); at least 1 MB (long chats, logit_bias), at most 32 MB. A bigger body cannot be
// served, and parsing it alone would hold the event loop (~25 ms per MB here).
export function bodyLimit(maxPromptBytes: number, maxContext: number): number {
  return Math.min(32 * 1024 * 1024, Math.max(1024 * 1024, 2 * MAX_PROMPTS * maxPromptBytes, MAX_PROMPTS * maxContext * 8));
}

// Fastify's own refusals (body parsing, limits) → our codes; the rest of 4xx is a 400.
const FASTIFY_CODES: Record<number, ErrorCode> = { 401: 'unauthorized', 403: 'forbidden', 413: 'payload_too_large', 415: 'unsupported_media_type' };

export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const { config, engine, registry, modelName } = deps;
  const maxBody = bodyLimit(deps.prompts.maxPromptBytes, engine.info.maxContext);
  const app = Fastify({
    logger: {
      level: config.logLevel,
      redact: ['req.headers.authorization'],
    },
    genReqId: (req) => (typeof req.headers['x-request-id'] === 'string' && req.headers['x-request-id'].length <= 128 ? req.headers['x-request-id'] : randomUUID()),
    bodyLimit: maxBody,
    clientErrorHandler: malformedHttp,
    ajv: { customOptions: { ...STRICT_AJV_OPTIONS } },
  });
  // One validator for every route (and the WebSocket messages): no coercion, no fields dropped
  // or added, refusals as LoraserveError naming the field. Response schemas document the
  // answers; they are sent as built (JSON.stringify), never reshaped to fit a schema.
  app.setValidatorCompiler(schemaCompiler);
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    try { done(null, parseJsonBody(body as string)); } catch (err) { done(err as Error, undefined); }
  });
  const guard = { host: config.host, allowedHosts: config.allowedHosts, corsOrigins: config.corsOrigins };
  if (config.corsOrigins.length) {
    await app.register(cors, { origin: config.corsOrigins.includes('*') ? '*' : config.corsOrigins, methods: ['GET', 'POST', 'DELETE', 'PATCH', 'OPTIONS'], allowedHeaders: ['authorization', 'content-type', 'x-request-id'], exposedHeaders: ['x-request-id', 'retry-after'], maxAge: 600 });
  }
  const metrics = deps.metrics ?? new Metrics(config.metricsTopAdapters, config.kvBudgetBytes, true, config.loraArenaBytes,
    { mode: config.metricsCompat, maxLora: maxResidentAdapters(registry.model, config.maxLoraRank, config.loraArenaBytes, config.maxBatch) });
  engine.onStep = (s) => {
    if (s.kind === 'decode') metrics.batchSize.observe(s.batch);
    metrics.stepDuration.observe({ kind: s.kind, path: s.path }, s.ms / 1000);
  };
  engine.onRestart = (why) => { metrics.engineRestarts.inc(); app.log.error({ why }, 'engine worker died: in-flight requests failed with 503; restarting it'); };
  engine.onRestarted = () => {
    app.log.warn('engine worker restarted; adapters reload from their directories');
    void engine.warmAdapters(registry.refs()).catch(() => undefined);
  };
  engine.onAdapterFailed = (name, version, err) => {
    registry.markFailed(name, version, err.message);
    app.log.error({ adapter: name, version, error: err.message }, 'adapter could not be loaded back from disk; marked failed');
  };
  const schemaCtx: SchemaContext = { modelName, limits: { vocabSize: engine.info.vocabSize, maxContext: engine.info.maxContext, maxN: MAX_N }, storeRoot: registry.store.root };
  const schemas = inferenceSchemas(schemaCtx);
  const admission = new Admission(config.maxQueue);
  const embedDeps = { engine, admission }; // embeddings take queue places like any request (embedder.ts)
  const completionDeps: CompletionDeps = {
    engine, registry, modelName, metrics, prompts: deps.prompts, schemas,
    admission,
    limits: { vocabSize: engine.info.vocabSize, maxContext: engine.info.maxContext, defaultMaxTokens: config.maxTokensDefault, maxPrompts: MAX_PROMPTS, maxChoices: config.maxQueue },
    stallTimeoutMs: config.clientStallTimeoutMs,
    maxMixture: config.maxMixture,
    router: null,
    embedText: async (text) => (await embedTokens(embedDeps, await routingTokens(deps.prompts, [text], engine.info.maxContext, 'prompt')))[0],
  };
  // semantic routing: adapters with example prompts (loraserve.json), their embeddings cached per version
  completionDeps.router = new SemanticRouter(
    async (texts) => embedTokens(embedDeps, await routingTokens(deps.prompts, texts, engine.info.maxContext, 'examples')),
    () => registry.list().filter((a) => a.status === 'ready').map((a) => ({ name: a.name, version: `${a.version}:${exampleKey(a.examples)}`, examples: a.examples, mixable: !a.useDora && a.rank > 0 })), // rank 0: merged weights only (an adapter holds factors or deltas, never both: decodeAdapter)
    { threshold: config.routeThreshold, mixTopK: config.routeMixK, mixTemperature: config.routeMixTemperature },
  );

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'loraserve', version: VERSION, description: `One frozen base model (${modelName}), many LoRA adapters, behind an OpenAI-compatible API. Errors are OpenAI's {"error": {"message", "type", "param", "code"}}. WebSocket streaming: GET ${WS_PATH} (not an OpenAPI operation): ${serviceSchemas.stream.description}` },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: '--api-key for inference, --admin-key for adapters, --metrics-key for /metrics' } } },
    },
  });
  await app.register(websocket, { options: { maxPayload: maxBody } });
  // after the WebSocket plugin's own hook, so that a refused upgrade's socket is closed
  app.addHook('onRequest', async (req) => guardRequest(req, guard));
  // SIGTERM: readiness false, new requests refused, in-flight ones finish (drain.ts, serve.ts)
  installDrain(app, { modelName, sequences: () => completionDeps.admission.inUse });
  await app.register(multipart, { limits: { fileSize: config.maxUploadBytes, ...UPLOAD_LIMITS } });

  app.setErrorHandler((err: FastifyError | LoraserveError, req, reply) => {
    let e: unknown = err;
    if (!(err instanceof LoraserveError) && typeof (err as FastifyError).statusCode === 'number' && (err as FastifyError).statusCode! < 500) {
      e = fastifyRefusal(err as FastifyError, maxBody);
    }
    const { status, body, retryAfter } = errorBody(e);
    if (status >= 500) req.log.error({ err }, 'request failed');
    if (retryAfter) reply.header('retry-after', String(retryAfter));
    reply.code(status).send(body);
  });
  app.setNotFoundHandler(async (req, reply) => {
    guardRequest(req, guard);
    reply.code(404).send(errorBody(new LoraserveError('not_found', `no route ${req.method} ${req.url}`)).body);
  });

  const inference = async (req: Parameters<typeof checkApiKey>[0]) => {
    checkApiKey(req, config.apiKey);
    if (config.logPrompts) req.log.info({ body: req.body }, 'request body');
  };
  // the key is checked before the body is judged (preValidation): a 401 comes before any 400
  app.post('/v1/completions', { preValidation: inference, schema: schemas.completion }, completionsHandler(completionDeps, 'completion'));
  app.post('/v1/chat/completions', { preValidation: inference, schema: schemas.chat }, completionsHandler(completionDeps, 'chat'));
  registerTokenizeRoutes(app, completionDeps, inference);
  registerRoutingRoutes(app, { ...embedDeps, modelName, prompts: deps.prompts, router: completionDeps.router, limits: { vocabSize: engine.info.vocabSize, maxContext: engine.info.maxContext, maxInputs: MAX_PROMPTS } }, inference);
  const card = (id: string, parent: string | null, extra: Record<string, unknown> = {}) => ({ id, object: 'model', created: Math.floor(Date.now() / 1000), owned_by: 'loraserve', root: parent ? id : modelName, parent, max_model_len: engine.info.maxContext, ...extra });
  // the base model's line, as an adapter's description reads: what it is, from its config
  const baseDescription = `The base model, without an adapter: ${engine.info.numLayers} layers, hidden size ${engine.info.hiddenSize}, vocabulary ${engine.info.vocabSize}`;
  const baseCard = () => card(modelName, null, { status: engine.state, description: baseDescription });
  app.get('/v1/models', { preValidation: inference, schema: modelSchemas.list }, async () => ({
    object: 'list',
    data: [baseCard(), ...registry.list().map((a) => card(a.name, modelName, adapterFields(a)))],
  }));
  app.get<{ Params: { id: string } }>('/v1/models/:id', { preValidation: inference, schema: modelSchemas.one }, async (req) => {
    if (req.params.id === modelName) return baseCard();
    // "<base>:<adapter>" (a fine-tuning job's fine_tuned_model, SGLang's form) names the adapter too
    const id = req.params.id;
    const a = registry.get(id) ?? (id.startsWith(`${modelName}:`) ? registry.get(id.slice(modelName.length + 1)) : undefined);
    if (!a) throw new LoraserveError('model_not_found', `The model \`${req.params.id}\` does not exist.`, { param: 'model' });
    return card(a.name, modelName, adapterFields(a));
  });
  registerAdapterRoutes(app, { registry, engine, config, metrics, schemaCtx });
  // files and fine-tuning jobs (OpenAI's shapes), trained in a worker thread while serving
  const fineTuning = registerFineTuning(app, { config, registry, engine, modelName });
  registerWebSocket(app, completionDeps, config.apiKey, [fineTuningWs(fineTuning, config)], config.adminKey);

  // Liveness and readiness both say whether the engine answers now: 503 while it restarts, or if
  // it does not answer within 5 s; /ready also waits for the adapter store to be served.
  const engineHealth = async (reply: FastifyReply) => {
    try {
      const s = await engine.stats();
      return { status: 'ok', model: modelName, adapters: registry.list().length, running: s.running, waiting: s.waiting, paused: s.paused, engine_restarts: engine.restarts };
    } catch (err) {
      reply.code(503);
      return { status: engine.state === 'ready' ? 'unresponsive' : engine.state, model: modelName, error: (err as Error).message, engine_restarts: engine.restarts };
    }
  };
  app.get('/health', { schema: serviceSchemas.health }, async (_req, reply) => engineHealth(reply));
  app.get('/ready', { schema: serviceSchemas.ready }, async (_req, reply) => {
    if (!registry.storeLoaded) { reply.code(503); return { status: 'starting', model: modelName }; }
    return engineHealth(reply);
  });
  app.get('/metrics', { schema: serviceSchemas.metrics }, async (req, reply) => {
    checkApiKey(req, config.metricsKey ?? config.apiKey, config.metricsKey ? 'metrics key' : 'API key');
    metrics.engineState.set(engine.state === 'ready' ? 1 : 0);
    try { metrics.updateEngine(await engine.stats()); } catch { /* engine restarting: the rest of the metrics still answer */ }
    reply.type(metrics.registry.contentType);
    return metrics.registry.metrics();
  });
  // Generated from the routes' schemas once every route is registered; public, like /health.
  app.get('/openapi.json', { schema: serviceSchemas.openapi }, async () => app.swagger());
  return app;
}

const VERSION = (createRequire(import.meta.url)('../../package.json') as { version: string }).version;

// An adapter's fields in /v1/models: its status and version, and its one-line description if it has one.
function adapterFields(a: { status: string; version: string; description: string | null }): Record<string, unknown> {
  return { status: a.status, version: a.version, ...(a.description !== null ? { description: a.description } : {}) };
}

// A request Node's HTTP parser refuses (a truncated body, a bad header, a timeout) gets OpenAI's
// error body too, then the connection closes.
function malformedHttp(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const [status, code, message]: [number, ErrorCode, string] = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'invalid_request', 'the request was not received in time']
    : err.code === 'HPE_HEADER_OVERFLOW' ? [431, 'invalid_request', 'the request headers exceed the size limit']
      : [400, 'invalid_request', `malformed HTTP request (${err.code ?? 'parse error'})`];
  const body = JSON.stringify(errorBody(new LoraserveError(code, message)).body);
  if (socket.writable) socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${body}`);
  socket.destroy(err);
}

function fastifyRefusal(err: FastifyError, maxBody: number): LoraserveError {
  const status = err.statusCode!;
  if (status === 413) return new LoraserveError('payload_too_large', `the request body exceeds the limit of ${maxBody} bytes (the largest request this model can serve)`, { param: 'body' });
  if (status === 415) return new LoraserveError('unsupported_media_type', `${err.message}; send a JSON body (content-type: application/json), or multipart/form-data to upload an adapter`, { param: 'content-type' });
  return new LoraserveError(FASTIFY_CODES[status] ?? 'invalid_request', err.message, { param: /json/i.test(err.message) ? 'body' : null });
}

// The routing cache's key for an adapter's examples (a PATCH makes a new entry).
function exampleKey(examples: readonly string[]): string {
  return createHash('sha256').update(JSON.stringify(examples)).digest('hex').slice(0, 16);
}
