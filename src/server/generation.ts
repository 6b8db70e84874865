// One API request's generation: resolve the model name, admit the choices (bounded queue), run
// every choice on the engine concurrently and merge their events, in order per choice. Releases
// the adapter and the queue places however the request ends (done, error, client gone).
// The merged queue is bounded: a consumer that stops reading (a stalled client) stops the pumps,
// whose engine streams then fill up and pause their sequences (engine-client.ts).
import type { EngineClient } from '../runtime/engine-client.ts';
import type { AdapterRegistry } from '../adapters/registry.ts';
import type { AdapterRef, GenerateRequest, TokenEvent } from '../runtime/generate-request.ts';
import { setMaxListeners } from 'node:events';
import { randomUUID } from 'node:crypto';
import { invalidField, LoraserveError, serializeError } from '../runtime/errors.ts';
import { mixtureRef } from '../adapters/mixture.ts';
import { selectModel } from './model-selector.ts';
import type { RouteDecision, SemanticRouter } from './semantic-routing.ts';
import type { GenerationJob } from './openai-request.ts';
import { MIXTURE_LABEL } from './metrics.ts';
import type { Metrics } from './metrics.ts';

export interface ChoiceEvent {
  index: number;      // prompt index · n + sample index
  prompt: number;
  event: TokenEvent;
}

export interface GenerationDeps {
  engine: EngineClient;
  registry: AdapterRegistry;
  modelName: string;
  metrics: Metrics;
  admission: Admission;
  maxMixture: number;              // --max-mixture: adapters in one per-request mixture
  router: SemanticRouter | null;   // model "auto" / "auto:mix" (semantic-routing.ts)
  embedText: (text: string) => Promise<number[]>; // the base-model embedding routing compares
}

// What a request runs on, once `model` and `adapters` are resolved (model-selector.ts): the base
// model, one adapter or a mixture; `label` is what the response's `model` and the x-loraserve-adapter
// header report ("auto" requests: the choice), `routed` the routing decision, if one was made.
export interface Target {
  adapter: string | null;
  mixture: { name: string; weight: number }[] | null;
  label: string;
  routed: RouteDecision | null;
}

export async function resolveTarget(job: GenerationJob, deps: GenerationDeps): Promise<Target> {
  const sel = selectModel(job.model, job.adapters ?? undefined, { modelName: deps.modelName, maxMixture: deps.maxMixture, has: (n) => deps.registry.has(n) });
  if (sel.kind === 'base') return { adapter: null, mixture: null, label: deps.modelName, routed: null };
  if (sel.kind === 'adapter') return { adapter: resolveAdapter(sel.name, deps.modelName, deps.registry), mixture: null, label: sel.name, routed: null };
  if (sel.kind === 'mixture') return mixtureTarget(sel.parts, deps, null);
  if (!deps.router) throw invalidField('model', `semantic routing ("auto") is off on this server`);
  const query = await deps.embedText(job.routingText);
  // The router sees the adapters that are ready when it scores, and then awaits their examples'
  // embeddings: meanwhile its choice may start unloading, fail a reload or be deleted. Then it
  // decides again, without it, a few times at most, rather than answer 503 or 404 for an adapter
  // the client never named.
  // If deciding again fails (its choice was the last adapter with examples: a 400 that would
  // advise adding examples), the request fails with the first choice's own error (a 503 with
  // Retry-After, or a 404).
  let gone: LoraserveError | null = null;
  for (let attempt = 1; ; attempt++) {
    let decision: RouteDecision;
    try {
      decision = await deps.router.decide(query, sel.mix);
    } catch (err) {
      throw gone ?? err;
    }
    let target: Target;
    try {
      target = routedTarget(decision, deps);
    } catch (err) {
      const unservable = err instanceof LoraserveError && (err.code === 'unavailable' || err.code === 'model_not_found');
      if (!unservable || attempt >= ROUTE_ATTEMPTS) throw err;
      gone ??= err;
      continue;
    }
    deps.metrics.routingDecisions.inc({ adapter: decision.mixture ? 'mixture' : decision.adapter ?? 'base' });
    return target;
  }
}

const ROUTE_ATTEMPTS = 3;

function routedTarget(decision: RouteDecision, deps: GenerationDeps): Target {
  if (decision.mixture) return mixtureTarget(decision.mixture, deps, decision);
  const name = decision.adapter;
  return name === null ? { adapter: null, mixture: null, label: deps.modelName, routed: decision } : { adapter: resolveAdapter(name, deps.modelName, deps.registry), mixture: null, label: name, routed: decision };
}

function mixtureTarget(parts: { name: string; weight: number }[], deps: GenerationDeps, routed: RouteDecision | null): Target {
  for (const p of parts) resolveAdapter(p.name, deps.modelName, deps.registry); // 404 / 503 naming the part
  return { adapter: null, mixture: parts, label: parts.map((p) => `${p.name}*${p.weight}`).join('+'), routed };
}

// Sequences admitted (waiting or running in the engine). Beyond the limit: 429 + Retry-After.
export class Admission {
  private used = 0;
  constructor(readonly limit: number) {}
  get inUse(): number { return this.used; }
  acquire(n: number): void {
    if (this.used + n > this.limit) {
      throw new LoraserveError('overloaded', `the server is at its limit of ${this.limit} queued or running sequences; retry later`, { retryAfterSeconds: 1 });
    }
    this.used += n;
  }
  release(n: number): void {
    this.used = Math.max(0, this.used - n);
  }
}

// Events a request may hold unread before its choices stop pulling from the engine.
const MERGED_QUEUE_LIMIT = 256;

// `model`: the base model's id, an adapter's name, or "<base>:<adapter>" (SGLang's form).
export function resolveAdapter(model: string, modelName: string, registry: AdapterRegistry): string | null {
  if (model === modelName) return null;
  const colon = model.indexOf(':');
  const name = registry.has(model) || colon <= 0 || model.slice(0, colon) !== modelName ? model : model.slice(colon + 1);
  const a = registry.get(name);
  if (a?.status === 'ready') return name;
  if (a?.status === 'failed') {
    throw new LoraserveError('unavailable', `adapter '${name}' cannot be served: ${a.error ?? 'its last load failed'}. Reload it (POST /v1/adapters/${name}/reload, or /v1/load_lora_adapter with load_inplace) once its files are right.`, { param: 'model' });
  }
  if (a?.status === 'unloading') {
    throw new LoraserveError('unavailable', `adapter '${name}' is being unloaded; it is gone once its requests in flight end, or back if the unload gives up`, { param: 'model', retryAfterSeconds: 1 });
  }
  throw new LoraserveError('model_not_found', `The model \`${model}\` does not exist.`, { param: 'model' });
}

export async function* runJob(job: GenerationJob, deps: GenerationDeps, signal: AbortSignal, resolved?: Target): AsyncGenerator<ChoiceEvent> {
  const target = resolved ?? await resolveTarget(job, deps);
  // cancelled before it started (a WebSocket's response.cancel right behind its create, while the
  // prompt was prepared): nothing runs. The listener below only hears an abort still to come
  if (signal.aborted) return;
  const adapterName = target.adapter;
  const total = job.prompts.length * job.n;
  const group = randomUUID(); // this request's choices share one fair share of the batch
  deps.admission.acquire(total);
  const refs: AdapterRef[] = [];
  const abort = new AbortController();
  const onAbort = (): void => abort.abort();
  signal.addEventListener('abort', onAbort);
  setMaxListeners(0, abort.signal); // one listener per choice (n may be large)
  const queue: ChoiceEvent[] = [];
  let wake: (() => void) | null = null;
  let room: (() => void)[] = [];  // pumps waiting for the consumer to read
  let active = 0;
  const push = async (ev: ChoiceEvent): Promise<void> => {
    queue.push(ev);
    wake?.();
    while (queue.length > MERGED_QUEUE_LIMIT && !abort.signal.aborted) await new Promise<void>((r) => room.push(r));
  };
  try {
    const label = target.mixture ? MIXTURE_LABEL : deps.metrics.adapterLabel(adapterName);
    const t0 = performance.now();
    job.prompts.forEach((prompt, p) => {
      for (let j = 0; j < job.n; j++) {
        let adapter: AdapterRef | null = null;
        if (target.mixture) {
          const parts = target.mixture.map((p) => ({ ref: deps.registry.acquire(p.name), weight: p.weight }));
          refs.push(...parts.map((p) => p.ref));
          adapter = mixtureRef(parts);
        } else if (adapterName) {
          adapter = deps.registry.acquire(adapterName);
          refs.push(adapter);
        }
        const req: GenerateRequest = { ...job.request, promptTokens: prompt, adapter, seed: choiceSeed(job.request.seed, j), group };
        active++;
        void pump(deps, req, p * job.n + j, p, label, t0, abort.signal, push, job.kind).finally(() => { active--; wake?.(); });
      }
    });
    while (active > 0 || queue.length > 0) {
      const ev = queue.shift();
      if (queue.length <= MERGED_QUEUE_LIMIT && room.length) { const rs = room; room = []; for (const r of rs) r(); }
      if (ev) { yield ev; continue; }
      await new Promise<void>((r) => { wake = r; });
      wake = null;
    }
  } finally {
    abort.abort(); // a consumer that stops early cancels every choice still running
    for (const r of room) r();
    signal.removeEventListener('abort', onAbort);
    for (const r of refs) deps.registry.release(r);
    deps.admission.release(total);
  }
}

// One choice: engine events → the merged queue, with latency metrics.
async function pump(deps: GenerationDeps, req: GenerateRequest, index: number, prompt: number, label: string, t0: number, signal: AbortSignal, push: (e: ChoiceEvent) => Promise<void>, endpoint: string): Promise<void> {
  const m = deps.metrics;
  const tokenTimes: number[] = [];
  let finished = false;
  // waiting until the engine's first event for it, then running (lora-activity.ts), under the names
  // of the adapters it uses: a mixture's inputs (its own name holds weights: a label value per blend)
  const adapters = req.adapter ? [...new Set(req.adapter.mixture ? req.adapter.mixture.map((p) => p.ref.name) : [req.adapter.name])] : [];
  let started = false;
  for (const a of adapters) m.lora.queued(a);
  try {
    for await (const event of deps.engine.generate(req, signal)) {
      if (!started) { started = true; for (const a of adapters) m.lora.started(a); }
      if (event.type === 'token') tokenTimes.push(performance.now());
      if (event.type === 'error') finished = true;
      if (event.type === 'done') {
        finished = true;
        const end = performance.now();
        const labels = { path: event.path, adapter: label };
        if (tokenTimes.length) m.ttft.observe(labels, (tokenTimes[0] - t0) / 1000);
        for (let i = 1; i < tokenTimes.length; i++) m.itl.observe(labels, (tokenTimes[i] - tokenTimes[i - 1]) / 1000);
        m.duration.observe(labels, (end - t0) / 1000);
        m.promptTokens.inc({ adapter: label }, event.promptTokens);
        m.generationTokens.inc({ adapter: label }, event.completionTokens);
        m.requests.inc({ endpoint, finish_reason: event.finishReason });
      }
      await push({ index, prompt, event });
    }
  } catch (err) {
    finished = true;
    await push({ index, prompt, event: { type: 'error', error: serializeError(err) } });
  } finally {
    for (const a of adapters) m.lora.finished(a, started);
    // cancelled (the client left, or the consumer stopped): counted, with the tokens it got
    if (!finished && signal.aborted) {
      m.requests.inc({ endpoint, finish_reason: 'cancelled' });
      if (tokenTimes.length) m.generationTokens.inc({ adapter: label }, tokenTimes.length);
    }
  }
}

// Choice j of n uses seed + j (vLLM's rule). Near |seed| = 2^53 a float sum would round two choices
// onto one seed, so such a sum is made exactly, as a bigint (Rng takes either).
export function choiceSeed(seed: number | bigint | null, j: number): number | bigint | null {
  if (seed === null) return null;
  const sum = Number(seed) + j;
  return typeof seed === 'number' && Number.isSafeInteger(sum) ? sum : BigInt(seed) + BigInt(j);
}
