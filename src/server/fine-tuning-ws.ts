// Fine-tuning job events on the WebSocket API (websocket.ts hands it the messages of its types):
//   client  {"type": "fine_tuning.job.subscribe", "fine_tuning_job_id": "ftjob-…"}
//           {"type": "fine_tuning.job.unsubscribe", "fine_tuning_job_id"}
//   server  {"type": "fine_tuning.job.event", "fine_tuning_job_id", "event": {…}} for every event so
//           far, then each new one; {"type": "fine_tuning.job.done", "fine_tuning_job_id", "job": {…}}
//           once the job has ended (at once for a job that had already ended); an `unavailable`
//           error event instead when the server shuts down before the job ends
// Subscribing needs the admin key (or --enable-local-admin), as the HTTP routes do; a refusal is an
// `error` event. Closing the socket ends its subscriptions. Events are sent as the client reads them:
// one that reads nothing for --client-stall-timeout-ms is dropped, as for streamed responses.
import type { FastifyRequest } from 'fastify';
import type { FineTuningManager } from '../train/jobs/manager.ts';
import { checkAdminKey } from './auth.ts';
import { LoraserveError } from '../runtime/errors.ts';
import { isTerminal } from '../train/jobs/job-types.ts';
import type { ServerConfig } from './config.ts';
import { liveEvents } from './fine-tuning-routes.ts';
import { validatorFor } from './schema-validator.ts';
import { wsSubscribeSchema } from './fine-tuning-schemas.ts';

export interface WsContext {
  req: FastifyRequest;
  send(ev: Record<string, unknown>): void;
  fail(responseId: string | null, err: unknown): void;
  // waits while the socket holds too much unsent; false once the client has been dropped for reading
  // nothing for the stall timeout (websocket.ts: the same rule as streamed responses)
  roomToSend(): Promise<boolean>;
}

export interface WsSession {
  handles(type: unknown): boolean;
  message(msg: Record<string, unknown>): void;
  close(): void;
}

export interface WsExtension {
  open(ctx: WsContext): WsSession;
}

const MAX_SUBSCRIPTIONS = 16;

export function fineTuningWs(need: () => FineTuningManager, config: Pick<ServerConfig, 'adminKey' | 'enableLocalAdmin'>): WsExtension {
  const check = validatorFor(wsSubscribeSchema, 'message');
  return {
    open: (ctx) => {
      const subs = new Map<string, AbortController>();
      return {
        handles: (type) => type === 'fine_tuning.job.subscribe' || type === 'fine_tuning.job.unsubscribe',
        message: (msg) => {
          try {
            const bad = check(msg);
            if (bad) throw bad;
            checkAdminKey(ctx.req, config.adminKey, config.enableLocalAdmin);
            const id = msg.fine_tuning_job_id as string;
            if (msg.type === 'fine_tuning.job.unsubscribe') { subs.get(id)?.abort(); subs.delete(id); return; }
            const manager = need();
            const job = manager.get(id); // 404 for an unknown id
            if (subs.has(job.id)) return;
            if (subs.size >= MAX_SUBSCRIPTIONS) throw Object.assign(new Error(`at most ${MAX_SUBSCRIPTIONS} subscriptions per socket`), { code: 'invalid_request', param: 'fine_tuning_job_id' });
            const ac = new AbortController();
            subs.set(job.id, ac);
            void (async () => {
              try {
                // a replay of a long job's events is megabytes: sent as the client reads them
                for await (const event of liveEvents(manager, job.id, ac.signal)) {
                  if (!(await ctx.roomToSend())) return;
                  ctx.send({ type: 'fine_tuning.job.event', fine_tuning_job_id: job.id, event });
                }
                if (ac.signal.aborted || !(await ctx.roomToSend())) return;
                const ended = manager.get(job.id);
                // a job that has not ended, at a shutdown: say so rather than "done"
                if (isTerminal(ended.status)) ctx.send({ type: 'fine_tuning.job.done', fine_tuning_job_id: job.id, job: ended });
                else ctx.fail(null, new LoraserveError('unavailable', `the server is shutting down; job ${job.id} is ${ended.status} and goes on after the restart: subscribe again then`, { param: 'fine_tuning_job_id', retryAfterSeconds: 1 }));
              } catch (err) {
                ctx.fail(null, err);
              } finally {
                if (subs.get(job.id) === ac) subs.delete(job.id);
              }
            })();
          } catch (err) {
            ctx.fail(null, err);
          }
        },
        close: () => { for (const ac of subs.values()) ac.abort(); subs.clear(); },
      };
    },
  };
}
