// Fine-tuning jobs while the server serves (the OpenAI fine_tuning API; src/server/fine-tuning-routes.ts):
// a bounded queue, one job training at a time in its own worker thread (train-runner.ts), events and
// checkpoints, and the finished adapter registered through the adapter registry exactly like an
// upload (staged in the store, then renamed: atomic).
//
// On disk, under <data dir>/jobs/<job id>/:
//   job.json        the job (JobRecord), replaced atomically at every change of status
//   events.jsonl    its events, appended (fsynced) as they happen
//   adapter/        the trainer's output once it finished (checkpoints, metrics, loss curve);
//   adapter.partial while it trains (trainer.ts / peft-output.ts)
// Durability: a job that was running when the server stopped (a restart, a crash, kill -9) is
// `failed` after the restart, with an error saying so ("server_restarted"), unless its adapter had
// already been committed to the store, in which case it is `succeeded` (the commit is the decisive,
// atomic step). Training is never resumed. Its training output is removed; the store never held
// any of it. Queued jobs stay queued and run after the restart.
//
// Statuses: validating_files → queued → running → succeeded | failed | cancelled.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { randomInt } from 'node:crypto';
import { LoraserveError, toLoraserveError } from '../../runtime/errors.ts';
import { CONFIG_FILE, WEIGHTS_FILE } from '../../adapters/lora-adapter.ts';
import type { AdapterRegistry } from '../../adapters/registry.ts';
import { METRICS_FILE } from '../metrics-log.ts';
import type { MetricsRecord } from '../metrics-log.ts';
import { FileStore } from './file-store.ts';
import type { FileLimits } from './file-store.ts';
import { isJobId, newId, shortId } from './ids.ts';
import { appendLineDurable, writeJsonDurable } from './atomic.ts';
import { resolveSpec, trainArgsFor } from './job-spec.ts';
import type { JobRequest } from './job-spec.ts';
import { isTerminal } from './job-types.ts';
import type { FineTuningJob, JobCheckpoint, JobEvent, JobRecord, JobStatus } from './job-types.ts';
import { startTraining } from './train-runner.ts';
import type { TrainingHandle } from './train-runner.ts';

export interface FineTuningOptions {
  dataDir: string;
  modelDir: string;
  modelName: string;
  registry: AdapterRegistry;
  threads: number;            // onnxruntime intra-op threads of the training session
  nice: number;               // the training thread's nice value (0–19): serving first
  maxQueued: number;          // jobs validating or queued at most; beyond, 429
  pauseWhenWaiting: number;   // pause training while this many sequences wait to be served (0: never)
  servingLoad?: () => Promise<{ waiting: number }>;
  fileLimits: FileLimits;
  log?: { info(o: object, m: string): void; warn(o: object, m: string): void; error(o: object, m: string): void };
}

export type JobUpdate = { type: 'event'; event: JobEvent } | { type: 'status'; job: FineTuningJob };

interface Entry {
  record: JobRecord;
  events: JobEvent[];
  listeners: Set<(u: JobUpdate) => void>;
  cancelRequested: boolean;
  registering: boolean;
}

export const RESTART_ERROR = 'the server stopped while this job was running (a restart, a crash or a shutdown); jobs are not resumed: create the job again';

export class FineTuningManager {
  readonly files: FileStore;
  private readonly jobsDir: string;
  private readonly jobs = new Map<string, Entry>();
  private current: { id: string; handle: TrainingHandle; done: Promise<void> } | null = null;
  private closing = false;
  private pumping = false;

  constructor(private readonly opts: FineTuningOptions) {
    mkdirSync(opts.dataDir, { recursive: true });
    this.files = new FileStore(opts.dataDir);
    this.jobsDir = join(opts.dataDir, 'jobs');
    mkdirSync(this.jobsDir, { recursive: true });
    this.recover();
    setImmediate(() => this.pump());
  }

  // ------------------------------------------------------------------ start-up

  private recover(): void {
    const stored = new Set(this.opts.registry.store.list());
    for (const id of readdirSync(this.jobsDir)) {
      if (!isJobId(id)) continue;
      let record: JobRecord;
      try {
        record = JSON.parse(readFileSync(join(this.jobsDir, id, 'job.json'), 'utf8')) as JobRecord;
        if (record.job?.id !== id) continue;
      } catch { continue; } // a job directory without a whole job.json was never acknowledged
      const entry: Entry = { record, events: readEvents(join(this.jobsDir, id, 'events.jsonl')), listeners: new Set(), cancelRequested: false, registering: false };
      this.jobs.set(id, entry);
      const job = record.job;
      if (job.status === 'running') {
        rmSync(join(this.jobsDir, id, 'adapter.partial'), { recursive: true, force: true });
        if (stored.has(record.adapter)) {
          job.fine_tuned_model = `${this.opts.modelName}:${record.adapter}`;
          this.finish(entry, 'succeeded', null, `The server stopped after the adapter was registered; the job is complete: ${job.fine_tuned_model}`);
        } else {
          rmSync(join(this.jobsDir, id, 'adapter'), { recursive: true, force: true });
          this.finish(entry, 'failed', { code: 'server_restarted', message: RESTART_ERROR, param: null });
        }
      } else if (job.status === 'validating_files') {
        this.validate(entry);
      }
    }
  }

  // ------------------------------------------------------------------ jobs

  create(req: JobRequest): FineTuningJob {
    if (this.closing) throw new LoraserveError('unavailable', 'the server is shutting down');
    const { modelName, registry } = this.opts;
    if (req.model !== modelName) throw new LoraserveError('model_not_found', `The model \`${req.model}\` cannot be fine-tuned here: the base model is \`${modelName}\``, { param: 'model' });
    const train = this.files.require(req.training_file, 'training_file');
    if (train.purpose !== 'fine-tune') throw new LoraserveError('invalid_request', `File ${train.id} has purpose ${JSON.stringify(train.purpose)}; upload the training file with purpose "fine-tune"`, { param: 'training_file' });
    const valid = req.validation_file ? this.files.require(req.validation_file, 'validation_file') : null;
    if (valid && valid.purpose !== 'fine-tune') throw new LoraserveError('invalid_request', `File ${valid.id} has purpose ${JSON.stringify(valid.purpose)}; upload the validation file with purpose "fine-tune"`, { param: 'validation_file' });
    const spec = resolveSpec(req, registry.model, registry.maxRank);
    const suffix = req.suffix ?? null;
    if (suffix !== null) {
      const active = [...this.jobs.values()].find((e) => e.record.job.user_provided_suffix === suffix && !isTerminal(e.record.job.status));
      if (active) throw new LoraserveError('conflict', `the suffix ${JSON.stringify(suffix)} is used by job ${active.record.job.id} (${active.record.job.status}); choose another suffix`, { param: 'suffix' });
      const served = registry.list().find((a) => a.name.startsWith(`ft-${suffix}-`));
      if (served) throw new LoraserveError('conflict', `the suffix ${JSON.stringify(suffix)} is used by the served adapter ${served.name} (${modelName}:${served.name}); choose another suffix, or delete that adapter`, { param: 'suffix' });
    }
    const waiting = [...this.jobs.values()].filter((e) => e.record.job.status === 'queued' || e.record.job.status === 'validating_files').length;
    if (waiting >= this.opts.maxQueued) {
      throw new LoraserveError('overloaded', `${waiting} fine-tuning jobs are waiting already (the limit, --fine-tune-max-queue); one job trains at a time: retry once one has started`, { retryAfterSeconds: 30 });
    }
    const id = newId('ftjob');
    const adapter = suffix !== null ? `ft-${suffix}-${shortId(id)}` : `ft-${shortId(id)}`;
    const job: FineTuningJob = {
      id, object: 'fine_tuning.job', created_at: now(), finished_at: null, error: null, fine_tuned_model: null,
      model: modelName, organization_id: 'loraserve', result_files: [], seed: req.seed ?? randomInt(0, 2 ** 31 - 1), status: 'validating_files',
      trained_tokens: null, training_file: train.id, validation_file: valid?.id ?? null, estimated_finish: null, integrations: [],
      metadata: req.metadata ?? null, user_provided_suffix: suffix,
      hyperparameters: spec.hyperparameters, method: { type: 'supervised', supervised: { hyperparameters: spec.hyperparameters } }, lora: spec.lora,
    };
    const entry: Entry = { record: { job, adapter, checkpoints: [] }, events: [], listeners: new Set(), cancelRequested: false, registering: false };
    mkdirSync(this.jobDir(id), { recursive: true });
    this.jobs.set(id, entry);
    this.save(entry);
    this.event(entry, `Validating training file: ${train.id}${valid ? ` and validation file: ${valid.id}` : ''}`);
    this.opts.log?.info({ job: id, adapter }, 'fine-tuning job created');
    setImmediate(() => this.validate(entry));
    return { ...job };
  }

  // The files were checked line by line at upload; here: they are still there.
  private validate(entry: Entry): void {
    const job = entry.record.job;
    if (job.status !== 'validating_files') return;
    const missing = [job.training_file, job.validation_file].filter((f): f is string => f !== null && !this.files.get(f));
    if (missing.length) { this.finish(entry, 'failed', { code: 'invalid_training_file', message: `file(s) deleted before the job started: ${missing.join(', ')}`, param: 'training_file' }); return; }
    this.setStatus(entry, 'queued');
    this.event(entry, 'Files validated, moving job to queued state');
    this.pump();
  }

  get(id: string): FineTuningJob {
    return { ...this.entry(id).record.job };
  }

  list(): FineTuningJob[] {
    return [...this.jobs.values()].map((e) => e.record.job).sort((a, b) => b.created_at - a.created_at || (a.id < b.id ? 1 : -1)).map((j) => ({ ...j }));
  }

  // Newest first, as OpenAI lists them.
  events(id: string): JobEvent[] {
    return [...this.entry(id).events].reverse();
  }

  eventsOldestFirst(id: string): JobEvent[] {
    return [...this.entry(id).events];
  }

  checkpoints(id: string): JobCheckpoint[] {
    return [...this.entry(id).record.checkpoints].reverse();
  }

  cancel(id: string): FineTuningJob {
    const entry = this.entry(id);
    const job = entry.record.job;
    if (isTerminal(job.status)) throw new LoraserveError('conflict', `job ${id} has already ${job.status === 'succeeded' ? 'succeeded' : `ended (${job.status})`}; it cannot be cancelled`, { param: 'fine_tuning_job_id' });
    if (job.status === 'running') {
      if (!entry.registering) {
        entry.cancelRequested = true;
        if (this.current?.id === id) this.current.handle.cancel();
      }
      return { ...job };
    }
    this.finish(entry, 'cancelled', null);
    return { ...job };
  }

  // Cancels, then waits (at most `waitMs`) for a running job to stop at its next step, so that the
  // answer says cancelled, as OpenAI's does; past the wait it says running (the stop is requested).
  async cancelSettled(id: string, waitMs: number): Promise<FineTuningJob> {
    const job = this.cancel(id);
    if (job.status !== 'running') return job;
    await new Promise<void>((resolve) => {
      const done = (): void => { clearTimeout(timer); off(); resolve(); };
      const timer = setTimeout(done, waitMs);
      const off = this.subscribe(id, (u) => { if (u.type === 'status' && isTerminal(u.job.status)) done(); });
      if (isTerminal(this.entry(id).record.job.status)) done();
    });
    return { ...this.entry(id).record.job };
  }

  // Live updates: each new event, then the job once it ends. Returns the unsubscribe function.
  // Once the manager is closing (a drain has started), the job's state comes at once and nothing
  // more: a queued job will not start before the restart, and no watcher may hold the drain open.
  subscribe(id: string, fn: (u: JobUpdate) => void): () => void {
    const entry = this.entry(id);
    if (this.closing) {
      fn({ type: 'status', job: { ...entry.record.job } });
      return () => undefined;
    }
    entry.listeners.add(fn);
    return () => entry.listeners.delete(fn);
  }

  // Whether a file is an input of a job that has not ended (it cannot be deleted then).
  fileInUse(fileId: string): string | null {
    for (const e of this.jobs.values()) {
      const j = e.record.job;
      if (!isTerminal(j.status) && (j.training_file === fileId || j.validation_file === fileId)) return j.id;
    }
    return null;
  }

  get runningJob(): string | null {
    return this.current?.id ?? null;
  }

  // Shutdown (a drain's start, then the app's close): no queued job starts; the running job stops
  // at its next step (or its worker is terminated after `graceMs`) and is failed with
  // RESTART_ERROR, exactly as a restart finds it; then every live subscription (an events stream,
  // a WebSocket) gets its job's state and ends, so that none holds the drain open.
  async close(graceMs = 5000): Promise<void> {
    this.closing = true;
    await this.stopCurrent(graceMs);
    for (const e of this.jobs.values()) this.endListeners(e);
  }

  // Every live subscription of a job gets its state, and ends (liveEvents ends on a status).
  private endListeners(entry: Entry): void {
    for (const fn of entry.listeners) fn({ type: 'status', job: { ...entry.record.job } });
    entry.listeners.clear();
  }

  private async stopCurrent(graceMs: number): Promise<void> {
    const cur = this.current;
    if (!cur) return;
    cur.handle.cancel();
    const timer = new Promise<'late'>((r) => setTimeout(() => r('late'), graceMs).unref());
    if ((await Promise.race([cur.done.then(() => 'ok' as const), timer])) === 'late') {
      await cur.handle.terminate();
      await cur.done;
    }
  }

  // ------------------------------------------------------------------ the queue

  private pump(): void {
    if (this.current || this.closing || this.pumping) return;
    const next = [...this.jobs.values()].filter((e) => e.record.job.status === 'queued').sort((a, b) => a.record.job.created_at - b.record.job.created_at || (a.record.job.id < b.record.job.id ? -1 : 1))[0];
    if (!next) return;
    const id = next.record.job.id;
    // its output name taken meanwhile (an upload or a merge while it was queued): fail it now, not
    // after a whole training run whose adapter could not be registered
    if (this.opts.registry.has(next.record.adapter)) {
      this.finish(next, 'failed', { code: 'conflict', message: nameTaken(next.record.adapter), param: 'suffix' });
      setImmediate(() => this.pump());
      return;
    }
    this.pumping = true;
    try {
      const { handle, done } = this.start(next);
      this.current = { id, handle, done: done.finally(() => { this.current = null; setImmediate(() => this.pump()); }) };
    } finally {
      this.pumping = false;
    }
  }

  private start(entry: Entry): { handle: TrainingHandle; done: Promise<void> } {
    const { opts } = this;
    const { job, adapter } = entry.record;
    const dir = this.jobDir(job.id);
    const train = this.files.get(job.training_file)!;
    const args = trainArgsFor({
      modelDir: opts.modelDir, modelName: job.model, jobDir: dir, trainPath: this.files.contentPath(job.training_file),
      validationPath: job.validation_file ? this.files.contentPath(job.validation_file) : null, examples: train.lines ?? 1,
      trainFile: job.training_file, validationFile: job.validation_file,
      hyperparameters: job.hyperparameters, lora: job.lora, seed: job.seed, threads: opts.threads,
    });
    this.setStatus(entry, 'running');
    this.event(entry, 'Fine-tuning job started');
    let tokens = 0;
    let lastStep: MetricsRecord | null = null;
    const handle = startTraining(args, { nice: opts.nice }, {
      onMetrics: (r, total, stepTokens) => {
        tokens += stepTokens;
        lastStep = r;
        job.trained_tokens = tokens;
        const loss = Number.isFinite(r.loss) ? r.loss : null;
        const data = { step: r.step, total_steps: total, train_loss: loss, eval_loss: r.eval_loss ?? null, tokens_per_s: r.tokens_per_s, lr: r.lr };
        if (!reportsStep(r.step, total, r.eval_loss !== undefined)) return;
        const msg = r.step === 0 ? `Eval loss before training (the base model): ${fmt(r.eval_loss ?? null)}` : `Step ${r.step}/${total}: training loss=${fmt(loss)}${r.eval_loss !== undefined ? `, eval loss=${fmt(r.eval_loss)}` : ''}`;
        this.event(entry, msg, { type: 'metrics', data });
      },
      onCheckpoint: (step) => {
        const r = lastStep;
        const ckpt: JobCheckpoint = {
          id: newId('ftckpt'), object: 'fine_tuning.job.checkpoint', created_at: now(), fine_tuned_model_checkpoint: `${opts.modelName}:${adapter}:ckpt-step-${step}`,
          fine_tuning_job_id: job.id, step_number: step, metrics: { step, train_loss: r && Number.isFinite(r.loss) ? r.loss : null, valid_loss: r?.eval_loss ?? null },
        };
        entry.record.checkpoints.push(ckpt);
        this.save(entry);
        this.event(entry, `Checkpoint created at step ${step}`);
      },
      onPaused: (paused) => this.event(entry, paused ? 'Training paused: the serving queue is long (--fine-tune-pause-waiting)' : 'Training resumed', paused ? { level: 'warn' } : {}),
    });
    let poll: NodeJS.Timeout | null = null;
    if (opts.pauseWhenWaiting > 0 && opts.servingLoad) {
      const load = opts.servingLoad;
      let busy = false;
      poll = setInterval(() => {
        if (busy) return;
        busy = true;
        load().then((s) => handle.pause(s.waiting >= opts.pauseWhenWaiting), () => undefined).finally(() => { busy = false; });
      }, 100);
      poll.unref();
    }
    const done = (async () => {
      try {
        await handle.done;
        if (entry.cancelRequested) throw new LoraserveError('client_closed', 'the job was cancelled');
        if (this.closing) throw new LoraserveError('unavailable', RESTART_ERROR);
        entry.registering = true;
        const out = args.out;
        const files = { config: readFileSync(join(out, CONFIG_FILE)), weights: readFileSync(join(out, WEIGHTS_FILE)) };
        await opts.registry.upload(adapter, files, { replace: false });
        job.fine_tuned_model = `${opts.modelName}:${adapter}`;
        const results: string[] = [];
        for (const [name, purposeName] of [[METRICS_FILE, 'metrics.jsonl'], ['loss.png', 'loss.png']] as const) {
          const p = join(out, name);
          if (existsSync(p)) results.push(this.files.add(readFileSync(p), `${job.id}-${purposeName}`, 'fine-tune-results').id);
        }
        job.result_files = results;
        this.event(entry, `New fine-tuned model created: ${job.fine_tuned_model}`);
        opts.log?.info({ job: job.id, adapter, tokens }, 'fine-tuning job succeeded; adapter registered');
        this.finish(entry, 'succeeded', null, 'The job has successfully completed');
      } catch (err) {
        rmSync(`${args.out}.partial`, { recursive: true, force: true });
        if (!entry.registering || job.fine_tuned_model === null) rmSync(args.out, { recursive: true, force: true });
        if (job.fine_tuned_model !== null) {
          // registered, then a result file failed: the model is served, the job succeeded
          this.finish(entry, 'succeeded', null, `The job has completed; its result files could not be stored: ${(err as Error).message}`);
        } else if (entry.cancelRequested) {
          this.finish(entry, 'cancelled', null);
        } else if (this.closing) {
          this.finish(entry, 'failed', { code: 'server_restarted', message: RESTART_ERROR, param: null });
        } else {
          const e = toLoraserveError(err);
          opts.log?.warn({ job: job.id, error: e.message }, 'fine-tuning job failed');
          // the output name taken while it trained: say so in the job's terms (the registry's
          // conflict speaks of upload fields)
          if (e.code === 'conflict' && entry.registering) this.finish(entry, 'failed', { code: 'conflict', message: nameTaken(adapter), param: 'suffix' });
          else this.finish(entry, 'failed', { code: e.code === 'internal' ? 'training_failed' : e.code, message: e.message, param: e.param });
        }
      } finally {
        if (poll) clearInterval(poll);
      }
    })();
    return { handle, done };
  }

  // ------------------------------------------------------------------ state, events, persistence

  private entry(id: string): Entry {
    const e = isJobId(id) ? this.jobs.get(id) : undefined;
    if (!e) throw new LoraserveError('not_found', `No such fine-tuning job: ${JSON.stringify(id)}`, { param: 'fine_tuning_job_id' });
    return e;
  }

  private jobDir(id: string): string {
    if (!isJobId(id)) throw new LoraserveError('internal', `not a job id: ${JSON.stringify(id)}`);
    return join(this.jobsDir, id);
  }

  private setStatus(entry: Entry, status: JobStatus): void {
    entry.record.job.status = status;
    this.save(entry);
  }

  private finish(entry: Entry, status: 'succeeded' | 'failed' | 'cancelled', error: FineTuningJob['error'], message?: string): void {
    const job = entry.record.job;
    job.status = status;
    job.error = error;
    job.finished_at = now();
    this.save(entry);
    if (status === 'failed') this.event(entry, `The job failed: ${error?.message ?? 'unknown error'}`, { level: 'error' });
    else if (status === 'cancelled') this.event(entry, 'The job was cancelled');
    else this.event(entry, message ?? 'The job has successfully completed');
    this.endListeners(entry);
  }

  private event(entry: Entry, message: string, o: { level?: JobEvent['level']; type?: JobEvent['type']; data?: Record<string, unknown> } = {}): void {
    const ev: JobEvent = { id: newId('ftevent'), object: 'fine_tuning.job.event', created_at: now(), level: o.level ?? 'info', message, type: o.type ?? 'message', data: o.data ?? null };
    entry.events.push(ev);
    try {
      appendLineDurable(join(this.jobDir(entry.record.job.id), 'events.jsonl'), ev);
    } catch (err) {
      this.opts.log?.error({ job: entry.record.job.id, error: (err as Error).message }, 'could not persist a job event');
    }
    for (const fn of entry.listeners) fn({ type: 'event', event: ev });
  }

  private save(entry: Entry): void {
    writeJsonDurable(join(this.jobDir(entry.record.job.id), 'job.json'), entry.record);
  }
}

// A page of a list (newest first, or oldest first with `order` asc) after the item `after` (its id),
// OpenAI's cursor pagination. Ids sort in creation order (ids.ts), so an `after` deleted since the
// page before still marks a place: the page starts at the first item past it.
export function page<T extends { id: string }>(items: T[], after: string | undefined, limit: number, valid: (id: string) => boolean = () => true, order: 'asc' | 'desc' = 'desc'): { object: 'list'; data: T[]; has_more: boolean; first_id: string | null; last_id: string | null } {
  let start = 0;
  if (after !== undefined) {
    if (!valid(after)) throw new LoraserveError('invalid_request', `'after' must be the id of an item of this list, got ${JSON.stringify(after)}`, { param: 'after' });
    const i = items.findIndex((x) => x.id === after);
    const past = items.findIndex((x) => (order === 'desc' ? x.id < after : x.id > after));
    start = i !== -1 ? i + 1 : past === -1 ? items.length : past;
  }
  const data = items.slice(start, start + limit);
  return { object: 'list', data, has_more: start + limit < items.length, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null };
}


// Metrics events per job at most (about: each eval and the last step are always reported).
export const MAX_METRICS_EVENTS = 1000;

// Whether step `step` of `total` gets a metrics event: every step of a job up to `max` steps;
// beyond, every k-th, each step with an eval loss, and the last. A job's events are kept in memory
// and each is appended durably, so a job of a million steps must not make a million of them.
export function reportsStep(step: number, total: number, hasEval: boolean, max = MAX_METRICS_EVENTS): boolean {
  const every = Math.max(1, Math.ceil(total / max));
  return step === 0 || step % every === 0 || step === total || hasEval;
}

const nameTaken = (adapter: string): string => `an adapter named '${adapter}' was created (uploaded or merged) after this job was, so the job's adapter cannot take that name; create the job again (another suffix gives another name)`;

function readEvents(path: string): JobEvent[] {
  if (!existsSync(path)) return [];
  const out: JobEvent[] = [];
  for (const l of readFileSync(path, 'utf8').split('\n')) {
    if (!l.trim()) continue;
    try { out.push(JSON.parse(l) as JobEvent); } catch { /* a line cut by a crash */ }
  }
  return out;
}

const now = (): number => Math.floor(Date.now() / 1000);
const fmt = (v: number | null): string => (v === null ? '–' : v.toFixed(4));
