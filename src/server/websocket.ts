// WebSocket streaming at GET /v1/stream, with the event vocabulary of OpenAI's Responses API
// WebSocket mode (shared/reference/formats-and-apis.md §6):
//   client  {"type": "response.create", "response_id": "<yours>", "model", "prompt" | "messages", …API fields}
//           {"type": "response.cancel", "response_id"}
//   server  response.created → response.output_text.delta … → response.output_text.done (per choice)
//           → response.completed {usage}; response.incomplete {reason: "cancelled"}; error {status, error}
// Every server event carries response_id and a per-socket sequence_number. Several responses may
// run at once on one socket; closing the socket cancels all of them. `response.created` is sent
// only once the request is admitted (a 404 or 429 is an `error` event alone). Backpressure: past
// SOCKET_HIGH_BYTES unsent, responses stop pulling events until the socket drains; a client that
// reads nothing for the stall timeout is disconnected, which cancels its responses. With `echo`, a
// choice's first delta is its prompt's text (its logprobs too, when asked), and the done text holds it.
// A message's own fields are checked by wsEnvelopeSchema, its keys as an HTTP body's (json-body.ts),
// and a response.create's fields by the very validator of POST /v1/completions (or, with
// `messages`, /v1/chat/completions): the same input is refused with the same status and param.
import type { FastifyInstance } from 'fastify';
import type { WebSocket } from 'ws';
import { parseChatBody, parseCompletionBody } from './openai-request.ts';
import { SOCKET_HIGH_BYTES } from './sse.ts';
import { resolveTarget, runJob } from './generation.ts';
import type { CompletionDeps } from './completions.ts';
import { ResponseBuilder } from './openai-response.ts';
import { errorBody } from './http-errors.ts';
import { checkApiKey } from './auth.ts';
import { invalidField } from '../runtime/errors.ts';
import { deserializeError } from '../runtime/errors.ts';
import { refuseForbiddenKeys } from './json-body.ts';
import { validatorFor } from './schema-validator.ts';
import { serviceSchemas, wsEnvelopeSchema } from './request-schemas.ts';
import type { WsExtension } from './fine-tuning-ws.ts';

export const WS_PATH = '/v1/stream';
const MAX_PER_SOCKET = 64;

// extensions: other message types on the same socket (fine-tuning-ws.ts: job event subscriptions)
// A socket opens with the API key, or with the admin key: a socket carries one Authorization header,
// and job subscriptions (fine-tuning-ws.ts) need the admin key, so with both keys set a subscriber
// could not open one otherwise. The admin key can do on it what the API key can.
export function registerWebSocket(app: FastifyInstance, deps: CompletionDeps, apiKey: string | null, extensions: WsExtension[] = [], adminKey: string | null = null): void {
  const envelope = validatorFor(wsEnvelopeSchema, 'message');
  // @fastify/websocket marks the route hidden (OpenAPI has no WebSocket operation): the
  // description says it, in /openapi.json's info (app.ts)
  app.get(WS_PATH, { websocket: true, schema: { ...serviceSchemas.stream } }, (socket: WebSocket, req) => {
    let seq = 0;
    const running = new Map<string, AbortController>();
    const send = (ev: Record<string, unknown>): void => {
      if (socket.readyState === socket.OPEN) socket.send(JSON.stringify({ ...ev, sequence_number: seq++ }));
    };
    const fail = (responseId: string | null, err: unknown): void => {
      const { status, body } = errorBody(err);
      send({ type: 'error', response_id: responseId, status, error: body.error });
    };
    try {
      try {
        checkApiKey(req, apiKey);
      } catch (err) {
        if (adminKey === null) throw err;
        checkApiKey(req, adminKey, 'API key (or admin key)');
      }
    } catch (err) {
      fail(null, err);
      socket.close(1008, 'unauthorized');
      return;
    }
    const sessions = extensions.map((x) => x.open({ req, send, fail, roomToSend: () => roomToSend() }));
    socket.on('close', () => { for (const ac of running.values()) ac.abort(); running.clear(); for (const s of sessions) s.close(); });

    socket.on('message', (data) => {
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(String(data)) as Record<string, unknown>;
        if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) throw new Error('not an object');
      } catch {
        fail(null, invalidField('message', 'each message must be a JSON object'));
        return;
      }
      const ext = sessions.find((s) => s.handles(msg.type));
      if (ext) { ext.message(msg); return; }
      const bad = envelope(msg);
      // an error without a response_id cannot be told apart from another: it quotes no value
      if (bad?.param === 'response_id') { fail(null, invalidField('response_id', `'response_id' must be a string of 1–256 characters`)); return; }
      if (bad) { fail(msg.response_id as string, bad); return; }
      const id = msg.response_id as string;
      // a forbidden key (__proto__) is refused by its path, as over HTTP (json-body.ts)
      try { refuseForbiddenKeys(msg); } catch (err) { fail(id, err); return; }
      if (msg.type === 'response.cancel') {
        running.get(id)?.abort();
        return;
      }
      if (running.has(id)) { fail(id, invalidField('response_id', `response ${id} is already running on this socket`)); return; }
      if (running.size >= MAX_PER_SOCKET) { fail(id, invalidField('response_id', `at most ${MAX_PER_SOCKET} responses may run at once on one socket`)); return; }
      const ac = new AbortController();
      running.set(id, ac);
      void respond(id, msg, ac.signal).finally(() => running.delete(id));
    });

    // Waits while the socket holds too much unsent; false (and the socket is dropped) if the
    // client reads nothing for the stall timeout.
    const roomToSend = async (): Promise<boolean> => {
      const deadline = Date.now() + deps.stallTimeoutMs;
      while (socket.readyState === socket.OPEN && socket.bufferedAmount > SOCKET_HIGH_BYTES) {
        if (Date.now() > deadline) {
          req.log.warn({ unsentBytes: socket.bufferedAmount, stallTimeoutMs: deps.stallTimeoutMs }, 'WebSocket client stopped reading; dropped');
          socket.terminate();
          return false;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      return socket.readyState === socket.OPEN;
    };

    const respond = async (id: string, body: Record<string, unknown>, signal: AbortSignal): Promise<void> => {
      try {
        const fields = { ...body, stream: false, stream_options: undefined };
        const chat = 'messages' in body;
        const refused = validatorFor(chat ? deps.schemas.chat.body : deps.schemas.completion.body)(fields);
        if (refused) throw refused;
        const job = chat ? await parseChatBody(fields, deps.prompts, deps.limits) : await parseCompletionBody(fields, deps.prompts, deps.limits);
        const target = await resolveTarget(job, deps);
        if (target.routed) job.model = target.label; // "auto": the response names the choice
        const b = new ResponseBuilder(job);
        const texts = new Map<number, string>();
        const finish: { index: number; finish_reason: string; text: string }[] = [];
        let created = false;
        for await (const e of runJob(job, deps, signal, target)) {
          const ev = e.event;
          if (ev.type === 'error') throw deserializeError(ev.error);
          if (!created) { created = true; send({ type: 'response.created', response_id: id, model: job.model }); }
          if (!(await roomToSend())) return;
          // echo: the prompt's text comes first, as its own delta (with its tokens' logprobs when
          // asked: the first has none), and is part of the choice's whole text
          if (job.echo && !texts.has(e.index)) {
            const text = job.promptTexts[e.prompt];
            texts.set(e.index, text);
            const delta: Record<string, unknown> = { type: 'response.output_text.delta', response_id: id, output_index: e.index, delta: text };
            if (job.logprobs !== null) delta.logprobs = ev.type === 'prompt' ? ev.logprobs.map((t) => ({ token: b.tokenString(t.id, t.tokenText), logprob: t.logprob, top_logprobs: t.top.map((x) => ({ token: b.tokenString(x.id, x.text), logprob: x.logprob })) })) : [];
            send(delta);
          }
          if (ev.type === 'token') {
            texts.set(e.index, (texts.get(e.index) ?? '') + ev.text);
            const delta: Record<string, unknown> = { type: 'response.output_text.delta', response_id: id, output_index: e.index, delta: ev.text };
            if (job.logprobs !== null) delta.logprobs = [{ token: b.tokenString(ev.id, ev.tokenText), logprob: ev.logprob, top_logprobs: (ev.top ?? []).map((t) => ({ token: b.tokenString(t.id, t.text), logprob: t.logprob })) }];
            send(delta);
          } else if (ev.type === 'done') {
            b.noteDone(e.prompt, ev);
            const text = texts.get(e.index) ?? '';
            finish.push({ index: e.index, finish_reason: ev.finishReason, text });
            send({ type: 'response.output_text.done', response_id: id, output_index: e.index, text, finish_reason: ev.finishReason });
          }
        }
        if (signal.aborted) { send({ type: 'response.incomplete', response_id: id, reason: 'cancelled' }); return; }
        send({ type: 'response.completed', response_id: id, response: { id: b.id, model: job.model, status: 'completed', output: finish.sort((x, y) => x.index - y.index), usage: b.totals() } });
      } catch (err) {
        if (signal.aborted) send({ type: 'response.incomplete', response_id: id, reason: 'cancelled' });
        else fail(id, err);
      }
    };
  });
}
