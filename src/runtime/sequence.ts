// One generation: prompt, output so far, its KV cache, sampler state and stop rules.
// Lifecycle: waiting → prefill (chunks) → decode → done(reason). A decoding sequence may be
// preempted (its row and KV given up while its client is not reading): it waits again, and when
// admitted recomputes the KV of its prompt and output so far (no events), then decodes on.
import { Rng, randomSeed } from './random.ts';
import { applyBiasAndPenalties, logSumExp, sampleToken, topK, workingCopy } from './sampler.ts';
import type { PenaltyState } from './sampler.ts';
import { StopMatcher } from './stop-matcher.ts';
import { StreamDecoder } from './tokenizer.ts';
import type { TextTokenizer } from './tokenizer.ts';
import { LoraserveError } from './errors.ts';
import type { Lane } from './lanes.ts';
import type { FinishReason, GenerateRequest, PromptLogprob, TokenEvent } from './generate-request.ts';

export interface SequenceLimits {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  maxContext: number;
  eosTokenIds: number[];
  vocabSize: number;
}

export class Sequence {
  lane: Lane | null = null;        // while running: the lane (capacity class) of its KV cache,
  row = -1;                        // and its slot: its row there and in the LoRA arena
  readonly output: number[] = [];
  state: 'waiting' | 'prefill' | 'decode' | 'done' = 'waiting';
  paused = false;                  // its client is not reading: no steps until resumed
  private prefilled = 0;
  private prefillTokens: number[];   // the prompt; after a preemption, the prompt and the output but its last token
  private recomputing = false;
  private readonly rng: Rng;
  private readonly penalty: PenaltyState;
  private readonly decoder: StreamDecoder;
  private readonly stopper: StopMatcher;
  private readonly stopIds: Set<number>;
  private text = '';
  mergedSteps = 0;
  unmergedSteps = 0;
  private pooled: Float64Array | null = null; // embeddings: the sum of the prompt's hidden states so far
  mergedOnlyVersion: string | null = null; // set at admission when its adapter is merged-only: it steps only on that session
  readonly enqueuedAt = performance.now();

  constructor(readonly id: string, readonly req: GenerateRequest, private readonly tok: TextTokenizer, private readonly limits: SequenceLimits) {
    checkPrompt(req.promptTokens, limits);
    this.rng = new Rng(req.seed ?? randomSeed());
    this.prefillTokens = req.promptTokens;
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

  // The request it belongs to (choices of one API request share it), for fair admission.
  get group(): string {
    return this.req.group ?? this.id;
  }

  // Tokens in its context so far: the prompt and the output.
  get contextLength(): number {
    return this.req.promptTokens.length + this.output.length;
  }

  get remainingPrefill(): number {
    return this.prefillTokens.length - this.prefilled;
  }

  // Gives up the KV cache (the scheduler frees the row): the next admission recomputes it.
  preempt(): void {
    if (this.state !== 'decode' || this.output.length === 0) throw new Error('only a decoding sequence can be preempted');
    this.prefillTokens = [...this.req.promptTokens, ...this.output.slice(0, -1)];
    this.prefilled = 0;
    this.recomputing = true;
    this.state = 'waiting';
  }

  // The tokens of the next step: a prompt chunk of at most `chunk` tokens, or the last output token.
  nextTokens(chunk: number): number[] {
    if (this.state === 'prefill') {
      const end = Math.min(this.prefillTokens.length, this.prefilled + chunk);
      return this.prefillTokens.slice(this.prefilled, end);
    }
    return [this.output[this.output.length - 1]];
  }

  // Whether the step should return the final hidden states of its tokens (an embedding's prompt).
  get wantsHidden(): boolean {
    return this.state === 'prefill' && this.req.embed === true;
  }

  // Whether the step should return logits for every prompt position (prompt logprobs).
  get wantsPromptLogits(): boolean {
    return this.state === 'prefill' && this.req.promptLogprobs != null && !this.recomputing;
  }

  // After a step that consumed `n` tokens. `logits` holds the rows the step returned for this
  // sequence: every position's (wantsPromptLogits) or only the last one's. Returns the events.
  // `hidden`: the step's hidden states of these n tokens [n, D] when wantsHidden. `lse`: log Σ exp
  // of each logits row as the graph computed it (float32); without it, computed here in float64.
  advance(n: number, logits: Float32Array, vocab: number, hidden?: Float32Array, lse?: Float32Array): TokenEvent[] {
    const events: TokenEvent[] = [];
    if (this.state === 'prefill') {
      if (this.wantsPromptLogits) events.push(this.promptLogprobs(n, logits, vocab, lse));
      if (this.wantsHidden) this.pool(n, hidden);
      this.prefilled += n;
      if (this.prefilled < this.prefillTokens.length) return events;
      this.state = 'decode';
      if (this.req.embed) {
        const count = this.prefillTokens.length;
        events.push({ type: 'embedding', vector: Array.from(this.pooled ?? [], (v) => v / count) });
        return this.finish(events, 'stop', null);
      }
      if (this.recomputing) { this.recomputing = false; return events; } // its next token is known already
      if (this.req.maxTokens === 0) return this.finish(events, 'length', null);
    }
    const rows = logits.length / vocab;
    return [...events, ...this.sample(logits.subarray(logits.length - vocab), lse && lse.length === rows ? lse[rows - 1] : undefined)];
  }

  // Adds a chunk's hidden states to the running sum (mean pooling over the whole prompt).
  private pool(n: number, hidden: Float32Array | undefined): void {
    if (!hidden || n === 0 || hidden.length % n !== 0) throw new Error(`embedding: the step returned ${hidden?.length ?? 0} hidden values for ${n} tokens`);
    const D = hidden.length / n;
    const sum = (this.pooled ??= new Float64Array(D));
    for (let i = 0; i < n; i++) for (let j = 0; j < D; j++) sum[j] += hidden[i * D + j];
  }

  // Row i of a prefill chunk predicts prompt token prefilled + i + 1.
  private promptLogprobs(n: number, logits: Float32Array, vocab: number, rowLse?: Float32Array): TokenEvent {
    const k = this.req.promptLogprobs!;
    const entries: PromptLogprob[] = [];
    const prompt = this.req.promptTokens;
    if (this.prefilled === 0) entries.push({ id: prompt[0], tokenText: this.tok.tokenText(prompt[0]), logprob: null, top: [] });
    for (let i = 0; i < n && this.prefilled + i + 1 < prompt.length; i++) {
      const id = prompt[this.prefilled + i + 1];
      const row = logits.subarray(i * vocab, (i + 1) * vocab);
      const lse = rowLse && rowLse.length === n ? rowLse[i] : logSumExp(row);
      this.checkFinite(lse, `prompt token ${this.prefilled + i + 2}`);
      entries.push({ id, tokenText: this.tok.tokenText(id), logprob: row[id] - lse, top: topK(row, k).map((t) => ({ id: t.id, text: this.tok.tokenText(t.id), logprob: t.value - lse })) });
    }
    return { type: 'prompt', logprobs: entries };
  }

  // A row's log Σ exp is NaN or infinite when any of its logits is: an adapter whose (finite but
  // huge) weights overflow float32. Logprobs or tokens from such a row would be made up, as a 200.
  private checkFinite(lse: number, at: string): void {
    if (Number.isFinite(lse)) return;
    const a = this.req.adapter;
    const what = a ? `adapter '${a.name}' makes the model's output` : 'the model\'s output is';
    throw new LoraserveError(a ? 'invalid_adapter' : 'internal', `${what} not finite (a NaN or infinite logit at ${at}): its weights overflow float32 on this prompt`, { param: a ? 'model' : null });
  }

  private sample(raw: Float32Array, rawLse?: number): TokenEvent[] {
    const { req } = this;
    if (rawLse !== undefined) this.checkFinite(rawLse, `output token ${this.output.length + 1}`);
    const lse = req.logprobs !== null ? rawLse ?? logSumExp(raw) : null; // logprobs of the raw distribution
    const work = workingCopy(raw);
    applyBiasAndPenalties(work, req.sampling, this.penalty);
    const id = sampleToken(work, req.sampling, () => this.rng.next());
    this.output.push(id);
    this.penalty.seen.add(id);
    this.penalty.outputCounts.set(id, (this.penalty.outputCounts.get(id) ?? 0) + 1);

    const events: TokenEvent[] = [];
    const token: TokenEvent & { type: 'token' } = { type: 'token', id, text: '', tokenText: this.tok.tokenText(id) };
    if (lse !== null) {
      token.logprob = raw[id] - lse;
      token.bytes = this.tok.tokenBytes(id);
      token.top = topK(raw, req.logprobs!).map((t) => ({ id: t.id, text: this.tok.tokenText(t.id), logprob: t.value - lse, bytes: this.tok.tokenBytes(t.id) }));
    }
    events.push(token);

    // stop_reason as vLLM reports it: the id for a stop_token_ids match, null for EOS
    if (this.stopIds.has(id)) return this.finish(events, 'stop', this.req.stopTokenIds.includes(id) ? id : null);
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
    const path = !this.req.adapter ? 'base' : this.mergedSteps > this.unmergedSteps ? 'merged' : 'unmerged';
    events.push({ type: 'done', finishReason: reason, stopReason, promptTokens: this.req.promptTokens.length, completionTokens: this.output.length, text: this.text, path });
    return events;
  }

  // A cancelled or failed sequence ends without a 'done' event.
  cancel(): void {
    this.state = 'done';
  }
}

// What a step can run: a prompt the server let through must still fit the model, or its step would
// fail for every sequence in it (step.ts refuses a position past the context; an id past the vocab
// would index past the embedding). The server checks requests field by field first; this is the
// engine's own guard, so one bad request fails alone (engine-worker.ts answers it with an error).
function checkPrompt(tokens: readonly number[], limits: SequenceLimits): void {
  if (tokens.length === 0) throw new LoraserveError('invalid_request', 'the prompt has no tokens', { param: 'prompt' });
  if (tokens.length > limits.maxContext) {
    throw new LoraserveError('invalid_request', `the prompt has ${tokens.length} tokens; the model's context holds ${limits.maxContext}`, { param: 'prompt' });
  }
  for (const t of tokens) {
    if (!Number.isInteger(t) || t < 0 || t >= limits.vocabSize) throw new LoraserveError('invalid_request', `prompt token id ${t} is outside the vocabulary [0, ${limits.vocabSize})`, { param: 'prompt' });
  }
}
