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
  private readonly aligned = new Map<number, TextAlignment>(); // completions: returned text and logprobs tokens per choice

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
  // `text` is what this choice's response adds to its returned text before these tokens' logprobs go
  // out: the whole text (echoed prompt + completion) for a whole response, the chunk's text in a stream.
  completionLogprobs(index: number, text: string, entries: { id: number; tokenText: string; logprob: number | null; top: TopLogprob[] }[]): Record<string, unknown> {
    let state = this.aligned.get(index);
    if (!state) { state = { text: '', cursor: 0, unmatched: false }; this.aligned.set(index, state); }
    state.text += text;
    const { strings, offsets } = alignTokens(state, entries.map((e) => e.tokenText));
    const out = { tokens: [] as string[], token_logprobs: [] as (number | null)[], top_logprobs: [] as (Record<string, number> | null)[], text_offset: offsets };
    entries.forEach((e, i) => {
      const own = this.job.tokenIdsAsText ? this.tokenString(e.id, e.tokenText) : strings[i];
      out.tokens.push(own);
      out.token_logprobs.push(e.logprob);
      if (e.logprob === null) { out.top_logprobs.push(null); return; }
      // the chosen token among the alternatives under the string it has in `tokens`, unless another holds it
      const keys = e.top.map((t) => this.tokenString(t.id, t.text));
      const mine = e.top.findIndex((t) => t.id === e.id);
      if (mine !== -1 && own !== '' && !keys.some((k, j) => j !== mine && k === own)) keys[mine] = own;
      const top: [string, number][] = e.top.map((t, j) => [keys[j], t.logprob]);
      // OpenAI: "the API will always return the logprob of the sampled token, so there may be up to
      // logprobs+1 elements" (vLLM too): the chosen token after the alternatives when not among them
      if (mine === -1) {
        const key = own !== '' && !keys.includes(own) ? own : this.tokenString(e.id, e.tokenText);
        if (!keys.includes(key)) top.push([key, e.logprob]);
      }
      out.top_logprobs.push(Object.fromEntries(top));
    });
    return out;
  }

  // ---- chat: logprobs {content: [{token, logprob, bytes, top_logprobs}]}
  chatLogprobs(tokens: TokenEv[]): Record<string, unknown> {
    // bytes: the token's own (a byte token's one byte), which the engine sends with logprobs
    const entry = (id: number, text: string, logprob: number, bytes?: number[]) => ({ token: this.tokenString(id, text), logprob, bytes: bytes ?? [...Buffer.from(text, 'utf8')] });
    return { content: tokens.map((t) => ({ ...entry(t.id, t.tokenText, t.logprob!, t.bytes), top_logprobs: (t.top ?? []).map((x) => entry(x.id, x.text, x.logprob, x.bytes)) })), refusal: null };
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
        // the prompt's tokens against the prompt's text, then the completion's against its own, as a
        // stream aligns them: no prompt token can take completion text
        const promptPart = job.echo ? this.completionLogprobs(index, job.promptTexts[prompt], promptLp) : null;
        const completionPart = this.completionLogprobs(index, text, tokens.map((t) => ({ id: t.id, tokenText: t.tokenText, logprob: t.logprob!, top: t.top ?? [] })));
        logprobs = promptPart ? concatLogprobs(promptPart, completionPart) : completionPart;
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
        const lp = ev.type === 'prompt' && job.logprobs !== null ? this.completionLogprobs(e.index, job.promptTexts[e.prompt], ev.logprobs as PromptLogprob[]) : null;
        if (lp === null && job.logprobs !== null) this.completionLogprobs(e.index, job.promptTexts[e.prompt], []); // the text its tokens come in later
        out.push(this.chunk([{ index: e.index, text: job.promptTexts[e.prompt], logprobs: lp, finish_reason: null }]));
        if (ev.type === 'prompt') return out;
      }
    }
    if (ev.type === 'prompt' && job.logprobs !== null) out.push(this.chunk([{ index: e.index, text: '', logprobs: this.completionLogprobs(e.index, '', ev.logprobs), finish_reason: null }]));
    if (ev.type === 'token' && (ev.text || job.logprobs !== null)) {
      const lp = job.logprobs === null ? null : this.completionLogprobs(e.index, ev.text, [{ id: ev.id, tokenText: ev.tokenText, logprob: ev.logprob!, top: ev.top ?? [] }]);
      out.push(this.chunk([{ index: e.index, text: ev.text, logprobs: lp, finish_reason: null }]));
    }
    if (ev.type === 'done') { this.noteDone(e.prompt, ev); out.push(this.chunk([{ index: e.index, text: '', logprobs: null, finish_reason: ev.finishReason, stop_reason: ev.stopReason }])); }
    return out;
  }
}

// Two completions logprobs objects in order, as one.
function concatLogprobs(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(a).map(([k, v]) => [k, [...(v as unknown[]), ...(b[k] as unknown[])]]));
}

// ---- completions: which text each logprobs token stands for, and where (text_offset)
//
// The rule (as vLLM's incremental detokenization gives it, and as OpenAI's legacy completions, whose
// tokens concatenate to the text): a token's string in `logprobs.tokens` is the text it adds to the
// returned `text` (with echo: the prompt as returned, then the completion), and text_offset[i] is where
// that string starts in `text`, counted from the start of the choice's text (across a stream's chunks).
// So text.slice(text_offset[i], text_offset[i] + tokens[i].length) === tokens[i] for every token, and
// the offsets never decrease. Tokens are matched to the text in order:
//  - a token whose own text (tokenText) comes next in the text keeps it;
//  - a token whose leading space the detokenizer drops ("▁Once" at the start of a text, or after a
//    special token) is the text without that space: "Once upon" over <s>, ▁Once, ▁upon gives tokens
//    "", "Once", " upon" at offsets 0, 0, 4; a lone "▁" at the start (the tokenizer's prefix space,
//    split from a digit or a sign: "1. Once" is <s>, ▁, 1, ., ▁Once) is "" there;
//  - a token whose text is not in the returned text gets "" at the current offset: BOS and other special
//    tokens (decoding skips them), the bytes of a character split over byte tokens, text a stop string
//    cut, or text a stream still holds back (it comes with a later token's chunk). After such a token,
//    the next token is looked for a few characters further on; the text skipped goes to the last
//    token without text in this call (the byte that completes a character), or to none when that token
//    went out in an earlier chunk.
// `return_tokens_as_token_ids` keeps its `token_id:N` strings; the offsets are the same.
interface TextAlignment { text: string; cursor: number; unmatched: boolean }

const LOOKAHEAD = 16; // UTF-16 units a token may be looked for past the cursor, after tokens without text

export function alignTokens(state: TextAlignment, tokens: string[]): { strings: string[]; offsets: number[] } {
  const { text } = state;
  const strings: string[] = [];
  const offsets: number[] = [];
  let pending = -1; // the last token of this call given "" since the last match
  const match = (s: string, at: number): string | null => {
    if (s === '') return null;
    if (text.startsWith(s, at)) return s;
    if (s.length > 1 && s[0] === ' ' && text.startsWith(s.slice(1), at)) return s.slice(1);
    if (s === ' ' && at === 0) return ''; // the dropped space alone: "▁" before "1" in "1. Once"
    return null;
  };
  tokens.forEach((s, i) => {
    let found = match(s, state.cursor);
    if (found === null && state.unmatched && s !== '') {
      const end = Math.min(text.length - s.length, state.cursor + LOOKAHEAD);
      for (let j = state.cursor + 1; j <= end; j++) {
        if (!text.startsWith(s, j)) continue;
        if (pending !== -1) strings[pending] = text.slice(offsets[pending], j);
        state.cursor = j;
        found = s;
        break;
      }
    }
    offsets.push(state.cursor);
    if (found === null) { strings.push(''); pending = i; state.unmatched = true; return; }
    strings.push(found);
    state.cursor += found.length;
    pending = -1;
    state.unmatched = false;
  });
  // text after the last token, right after tokens without text in this call: the last of them made it
  if (pending !== -1 && state.cursor < text.length && text.length - state.cursor <= LOOKAHEAD) {
    strings[pending] = text.slice(state.cursor);
    state.cursor = text.length;
    state.unmatched = false;
  }
  return { strings, offsets };
}
