// Engine events → OpenAI response objects: whole responses and stream chunks, for completions
// and chat, with logprobs in each endpoint's shape (shared/reference/formats-and-apis.md §5.2–5.4).
import { randomUUID } from 'node:crypto';
import type { PromptLogprob, TokenEvent, TopLogprob } from '../runtime/generate-request.ts';
import type { GenerationJob } from './openai-request.ts';
import type { ChoiceEvent } from './generation.ts';

type TokenEv = Extract<TokenEvent, { type: 'token' }>;
type DoneEv = Extract<TokenEvent, { type: 'done' }>;

export interface Usage { prompt_tokens: number; completion_tokens: number; total_tokens: number }

export class ResponseBuilder {
  readonly id: string;
  readonly created = Math.floor(Date.now() / 1000);
  private readonly usage = { prompt: new Map<number, number>(), completion: 0 };
  private readonly offsets = new Map<number, number>(); // completions text_offset per choice

  constructor(private readonly job: GenerationJob) {
    this.id = `${job.kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replace(/-/g, '')}`;
  }

  tokenString(id: number, text: string): string {
    return this.job.tokenIdsAsText ? `token_id:${id}` : text;
  }

  noteDone(prompt: number, d: DoneEv): void {
    this.usage.prompt.set(prompt, d.promptTokens);
    this.usage.completion += d.completionTokens;
  }

  totals(): Usage {
    let p = 0;
    for (const v of this.usage.prompt.values()) p += v;
    return { prompt_tokens: p, completion_tokens: this.usage.completion, total_tokens: p + this.usage.completion };
  }

  // ---- completions: logprobs {tokens, token_logprobs, top_logprobs, text_offset}
  completionLogprobs(index: number, entries: { id: number; tokenText: string; logprob: number | null; top: TopLogprob[] }[]): Record<string, unknown> {
    let off = this.offsets.get(index) ?? 0;
    const out = { tokens: [] as string[], token_logprobs: [] as (number | null)[], top_logprobs: [] as (Record<string, number> | null)[], text_offset: [] as number[] };
    for (const e of entries) {
      out.tokens.push(this.tokenString(e.id, e.tokenText));
      out.token_logprobs.push(e.logprob);
      out.top_logprobs.push(e.logprob === null ? null : Object.fromEntries(e.top.map((t) => [this.tokenString(t.id, t.text), t.logprob])));
      out.text_offset.push(off);
      off += e.tokenText.length;
    }
    this.offsets.set(index, off);
    return out;
  }

  // ---- chat: logprobs {content: [{token, logprob, bytes, top_logprobs}]}
  chatLogprobs(tokens: TokenEv[]): Record<string, unknown> {
    const entry = (id: number, text: string, logprob: number) => ({ token: this.tokenString(id, text), logprob, bytes: [...Buffer.from(text, 'utf8')] });
    return { content: tokens.map((t) => ({ ...entry(t.id, t.tokenText, t.logprob!), top_logprobs: (t.top ?? []).map((x) => entry(x.id, x.text, x.logprob)) })), refusal: null };
  }

  // A whole (non-streamed) response from all events.
  collect(events: ChoiceEvent[]): Record<string, unknown> {
    const { job } = this;
    const choices = Array.from({ length: job.prompts.length * job.n }, (_, index) => {
      const mine = events.filter((e) => e.index === index).map((e) => e.event);
      const tokens = mine.filter((e): e is TokenEv => e.type === 'token');
      const done = mine.find((e): e is DoneEv => e.type === 'done')!;
      const prompt = Math.floor(index / job.n);
      this.noteDone(prompt, done);
      const text = tokens.map((t) => t.text).join('');
      if (job.kind === 'chat') {
        return {
          index,
          message: { role: 'assistant', content: text, refusal: null },
          logprobs: job.logprobs === null ? null : this.chatLogprobs(tokens),
          finish_reason: done.finishReason,
          stop_reason: done.stopReason,
        };
      }
      let logprobs: Record<string, unknown> | null = null;
      if (job.logprobs !== null) {
        const promptLp = job.echo ? mine.filter((e): e is Extract<TokenEvent, { type: 'prompt' }> => e.type === 'prompt').flatMap((e) => e.logprobs) : [];
        logprobs = this.completionLogprobs(index, [...promptLp, ...tokens.map((t) => ({ id: t.id, tokenText: t.tokenText, logprob: t.logprob!, top: t.top ?? [] }))]);
      }
      return { index, text: (job.echo ? job.promptTexts[prompt] : '') + text, logprobs, finish_reason: done.finishReason, stop_reason: done.stopReason };
    });
    return {
      id: this.id,
      object: job.kind === 'chat' ? 'chat.completion' : 'text_completion',
      created: this.created,
      model: job.model,
      system_fingerprint: null,
      choices,
      usage: this.totals(),
    };
  }

  // ---- stream chunks
  chunk(choices: Record<string, unknown>[], usage: Usage | null = null): Record<string, unknown> {
    const chat = this.job.kind === 'chat';
    const c: Record<string, unknown> = { id: this.id, object: chat ? 'chat.completion.chunk' : 'text_completion', created: this.created, model: this.job.model, system_fingerprint: null, choices };
    if (this.job.includeUsage) c.usage = usage;
    return c;
  }

  // The chunks one engine event produces, in the shape of the job's endpoint.
  chunksFor(e: ChoiceEvent, started: Set<number>): Record<string, unknown>[] {
    const { job } = this;
    const out: Record<string, unknown>[] = [];
    const ev = e.event;
    if (job.kind === 'chat') {
      if (!started.has(e.index)) { started.add(e.index); out.push(this.chunk([{ index: e.index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }])); }
      if (ev.type === 'token' && (ev.text || job.logprobs !== null)) out.push(this.chunk([{ index: e.index, delta: ev.text ? { content: ev.text } : {}, logprobs: job.logprobs === null ? null : this.chatLogprobs([ev]), finish_reason: null }]));
      if (ev.type === 'done') { this.noteDone(e.prompt, ev); out.push(this.chunk([{ index: e.index, delta: {}, logprobs: null, finish_reason: ev.finishReason, stop_reason: ev.stopReason }])); }
      return out;
    }
    if (!started.has(e.index)) {
      started.add(e.index);
      if (job.echo) {
        const lp = ev.type === 'prompt' && job.logprobs !== null ? this.completionLogprobs(e.index, ev.logprobs as PromptLogprob[]) : null;
        out.push(this.chunk([{ index: e.index, text: job.promptTexts[e.prompt], logprobs: lp, finish_reason: null }]));
        if (ev.type === 'prompt') return out;
      }
    }
    if (ev.type === 'prompt' && job.logprobs !== null) out.push(this.chunk([{ index: e.index, text: '', logprobs: this.completionLogprobs(e.index, ev.logprobs), finish_reason: null }]));
    if (ev.type === 'token' && (ev.text || job.logprobs !== null)) {
      const lp = job.logprobs === null ? null : this.completionLogprobs(e.index, [{ id: ev.id, tokenText: ev.tokenText, logprob: ev.logprob!, top: ev.top ?? [] }]);
      out.push(this.chunk([{ index: e.index, text: ev.text, logprobs: lp, finish_reason: null }]));
    }
    if (ev.type === 'done') { this.noteDone(e.prompt, ev); out.push(this.chunk([{ index: e.index, text: '', logprobs: null, finish_reason: ev.finishReason, stop_reason: ev.stopReason }])); }
    return out;
  }
}
