// Fine-tuning jobs over the API (OpenAI's /v1/fine_tuning/jobs), trained while the server serves:
//   POST /v1/fine_tuning/jobs                        create (validating_files → queued → running → …)
//   GET  /v1/fine_tuning/jobs                        ?after, ?limit
//   GET  /v1/fine_tuning/jobs/:id
//   GET  /v1/fine_tuning/jobs/:id/events             ?after, ?limit; ?stream=true: server-sent events
//   GET  /v1/fine_tuning/jobs/:id/checkpoints
//   POST /v1/fine_tuning/jobs/:id/cancel
// plus the files routes (files-routes.ts) and the WebSocket subscription (fine-tuning-ws.ts). The
// jobs themselves (queue, worker thread, persistence, registration) are src/train/jobs/manager.ts.
// Admin key (or --enable-local-admin), as adapter management.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { LoraserveError } from '../runtime/errors.ts';
import type { AdapterRegistry } from '../adapters/registry.ts';
import type { EngineClient } from '../runtime/engine-client.ts';
import { FineTuningManager, page } from '../train/jobs/manager.ts';
import type { JobUpdate } from '../train/jobs/manager.ts';
import type { JobRequest } from '../train/jobs/job-spec.ts';
import type { FineTuningJob } from '../train/jobs/job-types.ts';
import { isCheckpointId, isEventId, isJobId } from '../train/jobs/ids.ts';
import { isTerminal } from '../train/jobs/job-types.ts';
import { checkAdminKey } from './auth.ts';
import { dataDirOf } from './config.ts';
import type { ServerConfig } from './config.ts';
import { registerFileRoutes, limitOf } from './files-routes.ts';
import { fineTuningSchemas } from './fine-tuning-schemas.ts';
import { writeSse } from './sse.ts';
import { drainOf } from './drain.ts';

// A cancel answers once the running job has stopped (at its next step), or after this long, saying running.
const CANCEL_WAIT_MS = 10_000;

export interface FineTuningDeps {
  config: ServerConfig;
  registry: AdapterRegistry;
  engine: EngineClient;
  modelName: string;
}

// Returns the manager, or a function that throws why fine-tuning is off: a data directory that cannot
// be created or read (a read-only root file system, say) turns the files and jobs routes into 503s
// naming it, and never stops the server from serving.
export function registerFineTuning(app: FastifyInstance, deps: FineTuningDeps): () => FineTuningManager {
  const { config, registry, engine, modelName } = deps;
  const dataDir = dataDirOf(config);
  let started: FineTuningManager | null = null;
  let why = '';
  try {
    started = new FineTuningManager({
      dataDir, modelDir: config.model, modelName, registry,
      threads: config.fineTuneThreads, nice: config.fineTuneNice, maxQueued: config.fineTuneMaxQueue,
      pauseWhenWaiting: config.fineTunePauseWaiting, servingLoad: async () => engine.stats(),
      fileLimits: { maxBytes: config.maxTrainingFileBytes, maxLines: config.maxTrainingFileLines },
      log: app.log,
    });
  } catch (err) {
    why = `the data directory ${dataDir} cannot be used (${(err as Error).message}); start the server with --data-dir set to a writable directory`;
    app.log.warn({ dataDir, error: (err as Error).message }, 'fine-tuning is off: its data directory cannot be used');
  }
  const need = (): FineTuningManager => {
    if (!started) throw new LoraserveError('unavailable', `fine-tuning is unavailable: ${why}`);
    return started;
  };
  app.addHook('onClose', async () => started?.close());
  drainOf(app)?.onStart(() => started?.close()); // a job stops at once on SIGTERM, not after the drain
  const admin = async (req: FastifyRequest): Promise<void> => checkAdminKey(req, config.adminKey, config.enableLocalAdmin);
  registerFileRoutes(app, { manager: need, admin, limits: { maxBytes: config.maxTrainingFileBytes, maxLines: config.maxTrainingFileLines } });
  const schemas = fineTuningSchemas(modelName);
  type JobParams = { Params: { fine_tuning_job_id: string } };
  type PageQuery = { Querystring: { after?: string; limit?: string; stream?: string; [metadata: string]: string | undefined } };

  app.post('/v1/fine_tuning/jobs', { preValidation: admin, schema: schemas.create }, async (req) => {
    const job = need().create(req.body as JobRequest);
    req.log.info({ job: job.id }, 'fine-tuning job created');
    return job;
  });

  app.get<PageQuery>('/v1/fine_tuning/jobs', { preValidation: admin, schema: schemas.list }, async (req) => page(need().list().filter(metadataFilter(req.query)), req.query.after, limitOf(req.query.limit, 20), isJobId));

  app.get<JobParams>('/v1/fine_tuning/jobs/:fine_tuning_job_id', { preValidation: admin, schema: schemas.get }, async (req) => need().get(req.params.fine_tuning_job_id));

  app.get<JobParams & PageQuery>('/v1/fine_tuning/jobs/:fine_tuning_job_id/events', { preValidation: admin, schema: schemas.events }, async (req, reply) => {
    const id = req.params.fine_tuning_job_id;
    if (req.query.stream !== 'true') return page(need().events(id), req.query.after, limitOf(req.query.limit, 20), isEventId);
    need().get(id); // 404 before the stream starts
    const closed = new AbortController();
    reply.raw.on('close', () => closed.abort());
    await writeSse(reply, liveEvents(need(), id, closed.signal), config.clientStallTimeoutMs);
    return reply;
  });

  app.get<JobParams & PageQuery>('/v1/fine_tuning/jobs/:fine_tuning_job_id/checkpoints', { preValidation: admin, schema: schemas.checkpoints }, async (req) => page(need().checkpoints(req.params.fine_tuning_job_id), req.query.after, limitOf(req.query.limit, 10), isCheckpointId));

  app.post<JobParams>('/v1/fine_tuning/jobs/:fine_tuning_job_id/cancel', { preValidation: admin, schema: schemas.cancel }, async (req) => {
    const job = await need().cancelSettled(req.params.fine_tuning_job_id, CANCEL_WAIT_MS);
    req.log.info({ job: job.id, status: job.status }, 'fine-tuning job cancel requested');
    return job;
  });
  return need;
}

// A job's events as a stream: every one so far (oldest first), then each new one, until the job
// has ended (or `signal`: the client went away).
export async function* liveEvents(manager: FineTuningManager, id: string, signal: AbortSignal): AsyncGenerator<Record<string, unknown>> {
  const queue: JobUpdate[] = [];
  let wake: (() => void) | null = null;
  const unsubscribe = manager.subscribe(id, (u) => { queue.push(u); wake?.(); });
  const onAbort = (): void => wake?.();
  signal.addEventListener('abort', onAbort);
  try {
    const seen = new Set<string>();
    for (const ev of manager.eventsOldestFirst(id)) { seen.add(ev.id); yield { ...ev }; }
    if (isTerminal(manager.get(id).status)) return;
    for (;;) {
      while (queue.length) {
        const u = queue.shift()!;
        if (u.type === 'status') return;
        if (!seen.has(u.event.id)) yield { ...u.event };
      }
      if (signal.aborted) return;
      await new Promise<void>((r) => { wake = r; });
      wake = null;
    }
  } finally {
    unsubscribe();
    signal.removeEventListener('abort', onAbort);
  }
}

// OpenAI's metadata filter of the jobs list: metadata[key]=value for each pair that must match, or
// metadata=null for jobs without metadata (the schema admits only those keys).
function metadataFilter(query: Record<string, string | undefined>): (job: FineTuningJob) => boolean {
  const want = Object.entries(query).flatMap(([k, v]) => (k.startsWith('metadata[') && v !== undefined ? [[k.slice('metadata['.length, -1), v] as const] : []));
  const none = query.metadata === 'null';
  return (job) => (none ? job.metadata === null || Object.keys(job.metadata).length === 0 : true) && want.every(([k, v]) => job.metadata?.[k] === v);
}
