// Continuous batching. Each tick: admit waiting sequences (bounded by running sequences and the KV
// budget), run one prefill step over the prompt chunks in flight, then one decode step over every
// decoding sequence, and emit their events. New requests join at the next tick; finished and
// cancelled ones leave at once.
import type { Sequence } from './sequence.ts';
import type { StepRow, StepRunner } from './step.ts';
import type { TokenEvent } from './generate-request.ts';
import { serializeError } from './errors.ts';

export interface SchedulerLimits {
  maxRunning: number;        // sequences in the running batch
  maxStepTokens: number;     // tokens per prefill step (chunked prefill)
  prefillChunk: number;      // tokens of one sequence's prompt per step
  kvBudgetBytes: number;     // reserved KV bytes of running sequences
}

export type EmitFn = (seqId: string, events: TokenEvent[]) => void;

export interface StepStats {
  kind: 'prefill' | 'decode';
  batch: number;
  tokens: number;
  ms: number;
}

export class Scheduler {
  private readonly waiting: Sequence[] = [];
  private readonly running: Sequence[] = [];
  private reservedKv = 0;
  onStep?: (s: StepStats) => void;

  constructor(private readonly runner: StepRunner, private readonly limits: SchedulerLimits, private readonly emit: EmitFn) {}

  get waitingCount(): number { return this.waiting.length; }
  get runningCount(): number { return this.running.length; }
  get reservedKvBytes(): number { return this.reservedKv; }
  get idle(): boolean { return this.waiting.length === 0 && this.running.length === 0; }

  submit(seq: Sequence): void {
    this.waiting.push(seq);
  }

  // Cancellation frees the slot and the KV cache before the next step.
  cancel(seqId: string): void {
    const w = this.waiting.findIndex((s) => s.id === seqId);
    if (w !== -1) { this.waiting[w].cancel(); this.waiting.splice(w, 1); return; }
    const r = this.running.find((s) => s.id === seqId);
    if (r) { r.cancel(); this.retire(); }
  }

  async tick(): Promise<void> {
    this.admit();
    const prefill = this.pickPrefill();
    if (prefill.length) await this.step(prefill, 'prefill');
    const decode = this.running.filter((s) => s.state === 'decode');
    if (decode.length) await this.step(decode, 'decode');
  }

  private admit(): void {
    while (this.waiting.length && this.running.length < this.limits.maxRunning) {
      const seq = this.waiting[0];
      if (this.running.length > 0 && this.reservedKv + seq.reservedKvBytes > this.limits.kvBudgetBytes) break;
      this.waiting.shift();
      this.reservedKv += seq.reservedKvBytes;
      seq.state = 'prefill';
      this.running.push(seq);
    }
  }

  // Prompt chunks of the sequences still in prefill, oldest first, within the step's token budget.
  private pickPrefill(): Sequence[] {
    const picked: Sequence[] = [];
    let tokens = 0;
    for (const s of this.running) {
      if (s.state !== 'prefill') continue;
      const n = Math.min(s.remainingPrefill, this.limits.prefillChunk);
      if (picked.length && tokens + n > this.limits.maxStepTokens) break;
      picked.push(s);
      tokens += n;
    }
    return picked;
  }

  private async step(seqs: Sequence[], kind: 'prefill' | 'decode'): Promise<void> {
    const rows: StepRow[] = seqs.map((s) => ({ kv: s.kv, tokens: s.nextTokens(this.limits.prefillChunk) }));
    const t0 = performance.now();
    let result;
    try {
      result = await this.runner.run(rows);
    } catch (err) {
      for (const s of seqs) {
        s.cancel();
        this.emit(s.id, [{ type: 'error', error: serializeError(err) }]);
      }
      this.retire();
      return;
    }
    this.onStep?.({ kind, batch: seqs.length, tokens: rows.reduce((a, r) => a + r.tokens.length, 0), ms: performance.now() - t0 });
    const V = result.vocabSize;
    seqs.forEach((s, i) => {
      if (s.state === 'done') return; // cancelled while the step ran
      const n = rows[i].tokens.length;
      const complete = kind === 'decode' || s.remainingPrefill === n;
      const off = result.rowOffsets[i];
      const logits = complete ? result.logits.subarray(off * V, (off + 1) * V) : null;
      const events = s.advance(n, logits);
      if (events.length) this.emit(s.id, events);
    });
    this.retire();
  }

  private retire(): void {
    for (let i = this.running.length - 1; i >= 0; i--) {
      const s = this.running[i];
      if (s.state === 'done') {
        this.running.splice(i, 1);
        this.reservedKv -= s.reservedKvBytes;
      }
    }
  }
}
