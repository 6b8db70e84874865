// Graceful drain, for a rolling update or a scale-in behind a load balancer (Kubernetes sends
// SIGTERM, serve.ts calls drain()):
//   1. at once: GET /ready answers 503 {"status":"draining"}, so the pod leaves the Service's and the
//      InferencePool's endpoints; every new request but the probes (/health, /ready) and /metrics is
//      refused with 503 `unavailable` + Retry-After and `connection: close`, so the client retries
//      elsewhere;
//   2. requests in flight (streams included, and WebSocket generations) go on until they end, for up
//      to the drain timeout (--drain-timeout);
//   3. past it, those left are cancelled: every HTTP connection is closed, which cancels its
//      generation as a client leaving does (completions.ts), and the WebSocket ones end when the app
//      closes. Then the caller closes the app and the engine and exits.
// In flight: HTTP requests from arrival to the end of their response (the probes and /metrics
// aside), and sequences admitted to the engine (generation.ts Admission: WebSocket generations too).
import type { FastifyInstance } from 'fastify';
import { LoraserveError } from '../runtime/errors.ts';

const drains = new WeakMap<FastifyInstance, Drain>();
const UNCOUNTED = new Set(['/health', '/ready', '/metrics']);
const POLL_MS = 25;

export interface DrainResult {
  drained: boolean;   // everything in flight ended within the timeout
  cancelled: number;  // HTTP requests in flight when the timeout passed
  ms: number;
}

export class Drain {
  private state: 'serving' | 'draining' = 'serving';
  private requests = 0;
  private readonly starts: (() => Promise<void> | void)[] = [];

  constructor(private readonly app: FastifyInstance, private readonly sequences: () => number) {}

  get draining(): boolean { return this.state === 'draining'; }

  // Work to stop when the drain starts, not when the app closes after it: what would otherwise
  // keep going through the drain (a fine-tuning job, and the event streams watching it).
  onStart(fn: () => Promise<void> | void): void {
    this.starts.push(fn);
  }
  get inFlight(): { requests: number; sequences: number } { return { requests: this.requests, sequences: this.sequences() }; }

  private busy(): boolean { return this.requests > 0 || this.sequences() > 0; }

  // Starts draining (readiness false, new requests refused), waits up to timeoutMs for what is in
  // flight, then cancels what is left and waits (a few seconds at most) for the engine to let go.
  async drain(timeoutMs: number): Promise<DrainResult> {
    const t0 = Date.now();
    this.state = 'draining';
    this.app.log.info({ inFlight: this.inFlight, timeoutMs }, 'draining: readiness is false, new requests are refused');
    for (const fn of this.starts) {
      Promise.resolve().then(fn).catch((err: unknown) => this.app.log.error({ error: (err as Error).message }, 'a drain hook failed'));
    }
    await until(() => !this.busy(), timeoutMs);
    const cancelled = this.requests;
    const drained = !this.busy();
    if (!drained) {
      this.app.log.warn({ inFlight: this.inFlight }, 'drain timeout passed: cancelling the requests left');
      this.app.server.closeAllConnections();
      await until(() => this.sequences() === 0, 5_000);
    }
    const result = { drained, cancelled: drained ? 0 : cancelled, ms: Date.now() - t0 };
    this.app.log.info(result, 'drained');
    return result;
  }

  install(modelName: string): void {
    this.app.addHook('onRequest', async (req, reply) => {
      const path = req.url.split('?')[0];
      if (this.draining) {
        if (path === '/health' || path === '/metrics') return;
        reply.header('connection', 'close');
        if (path === '/ready') return reply.code(503).send({ status: 'draining', model: modelName });
        throw new LoraserveError('unavailable', 'the server is shutting down (draining); retry the request, another replica will serve it', { retryAfterSeconds: 1 });
      }
      if (UNCOUNTED.has(path) || req.headers.upgrade !== undefined) return;
      this.requests++;
      reply.raw.once('close', () => { this.requests--; });
    });
  }
}

// Adds the drain's hook to the app (call it where the onRequest hooks go, before the routes);
// serve.ts finds it again with drainOf().
export function installDrain(app: FastifyInstance, opts: { modelName: string; sequences: () => number }): Drain {
  const d = new Drain(app, opts.sequences);
  d.install(opts.modelName);
  drains.set(app, d);
  return d;
}

export function drainOf(app: FastifyInstance): Drain | undefined {
  return drains.get(app);
}

async function until(done: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!done() && Date.now() < end) await new Promise((r) => setTimeout(r, Math.min(POLL_MS, Math.max(1, end - Date.now()))));
}
