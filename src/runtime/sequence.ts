// One generation: prompt, output so far, its KV cache, sampler state and stop rules.
// Lifecycle: waiting → prefill (chunks) → decode → done(reason).
import { Rng, randomSeed } from './random.ts';
import { applyBiasAndPenalties, logSoftmax, sampleToken, topK } from './sampler.ts';
import type { PenaltyState } from './sampler.ts';
import { StopMatcher } from './stop-matcher.ts';
import { StreamDecoder } from './tokenizer.ts';
import type { TextTokenizer } from './tokenizer.ts';
import type { FinishReason, GenerateRequest, TokenEvent } from './generate-request.ts';

export interface SequenceLimits {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  maxContext: number;
  eosTokenIds: number[];
}

export class Sequence {
  row = -1;                        // arena row while running (KV cache and LoRA factors)
  readonly output: number[] = [];
  state: 'waiting' | 'prefill' | 'decode' | 'done' = 'waiting';
  private prefilled = 0;
  private readonly rng: Rng;
  private readonly penalty: PenaltyState;
  private readonly decoder: StreamDecoder;
  private readonly stopper: StopMatcher;
  private readonly stopIds: Set<number>;
  private text = '';
  readonly enqueuedAt = performance.now();

  constructor(readonly id: string, readonly req: GenerateRequest, private readonly tok: TextTokenizer, private readonly limits: SequenceLimits) {
    this.rng = new Rng(req.seed ?? randomSeed());
    this.penalty = { seen: new Set(req.promptTokens), outputCounts: new Map() };
    this.decoder = new StreamDecoder(tok, req.promptTokens);
    this.stopper = new StopMatcher(req.stop);
    this.stopIds = new Set([...req.stopTokenIds, ...(req.ignoreEos ? [] : limits.eosTokenIds)]);
  }

  // KV bytes this sequence may need at most: reserved at admission so running sequences never break.
  get reservedKvBytes(): number {
    const { numLayers, numKvHeads, headDim } = this.limits;
    return (this.req.promptTokens.length + this.req.maxTokens) * numKvHeads * headDim * numLayers * 2 * 4;
  }

  get remainingPrefill(): number {
    return this.req.promptTokens.length - this.prefilled;
  }

  // The tokens of the next step: a prompt chunk of at most `chunk` tokens, or the last output token.
  nextTokens(chunk: number): number[] {
    if (this.state === 'prefill') {
      const end = Math.min(this.req.promptTokens.length, this.prefilled + chunk);
      return this.req.promptTokens.slice(this.prefilled, end);
    }
    return [this.output[this.output.length - 1]];
  }

  // After a step that consumed `n` tokens; `logits` is the row of the last one, if it was the
  // last prompt token or a decode token. Returns the events the step produced.
  advance(n: number, logits: Float32Array | null): TokenEvent[] {
    if (this.state === 'prefill') {
      this.prefilled += n;
      if (this.prefilled < this.req.promptTokens.length) return [];
      this.state = 'decode';
    }
    if (!logits) return [];
    return this.sample(logits);
  }

  private sample(raw: Float32Array): TokenEvent[] {
    const { req } = this;
    let lp: Float64Array | null = null;
    if (req.logprobs !== null) lp = logSoftmax(raw);
    const work = Float32Array.from(raw);
    applyBiasAndPenalties(work, req.sampling, this.penalty);
    const id = sampleToken(work, req.sampling, () => this.rng.next());
    this.output.push(id);
    this.penalty.seen.add(id);
    this.penalty.outputCounts.set(id, (this.penalty.outputCounts.get(id) ?? 0) + 1);

    const events: TokenEvent[] = [];
    const token: TokenEvent & { type: 'token' } = { type: 'token', id, text: '', tokenText: this.tok.tokenText(id) };
    if (lp) {
      token.logprob = lp[id];
      token.top = topK(lp, req.logprobs!).map((t) => ({ id: t.id, text: this.tok.tokenText(t.id), logprob: t.value }));
    }
    events.push(token);

    if (this.stopIds.has(id)) return this.finish(events, 'stop', id);
    const { emit, stopped } = this.stopper.push(this.decoder.push(id));
    token.text = emit;
    this.text += emit;
    if (stopped !== null) return this.finish(events, 'stop', stopped, false);
    if (this.output.length >= req.maxTokens || req.promptTokens.length + this.output.length >= this.limits.maxContext) return this.finish(events, 'length', null);
    return events;
  }

  private finish(events: TokenEvent[], reason: FinishReason, stopReason: string | number | null, flush = true): TokenEvent[] {
    this.state = 'done';
    if (flush) {
      const { emit, stopped } = this.stopper.push(this.decoder.flush());
      const rest = stopped === null ? emit + this.stopper.flush() : emit;
      if (stopped !== null) { reason = 'stop'; stopReason = stopped; }
      if (rest) {
        const last = events[events.length - 1];
        if (last?.type === 'token') last.text += rest;
        this.text += rest;
      }
    }
    events.push({ type: 'done', finishReason: reason, stopReason, promptTokens: this.req.promptTokens.length, completionTokens: this.output.length, text: this.text });
    return events;
  }

  // A cancelled or failed sequence ends without a 'done' event.
  cancel(): void {
    this.state = 'done';
  }
}
