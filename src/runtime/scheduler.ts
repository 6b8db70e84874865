// Continuous batching over arena rows. Each tick:
//   1. admit  waiting sequences into free rows (bounded by running sequences and the KV budget);
//             a sequence whose adapter is still loading from disk waits without holding others up
//   2. warm    the pages of KV rows about to be read for the first time, within a time slice
//             (kv-arena.ts), so a first touch never stalls the streams in one step
//   3. prefill prompt chunks of one or more sequences, inside the first decode step (one pass
//             over the weights for both). How many prompt tokens, and whose, is the policy's
//             (schedule-policy.ts): the budget keeps the tick within the ITL target from costs
//             learned as it runs (tick-costs.ts); shortest remaining prompt first, aged; while
//             nothing decodes, prompts stop one token short of their end to start decoding together
//   4. decode  one token for every decoding sequence, one batched step per KV lane (merged
//             weights when every row uses the same adapter and the merge policy has them ready).
//             A merged-only adapter (ΔW kept without factors, lora-arena.ts isMergedOnly) has no
//             factors to batch: its rows step apart, on its merged session, prompt chunks included,
//             and wait (holding their rows) while that session builds
//   5. retire  finished and cancelled sequences at once, freeing their rows
// A failure is contained to what it belongs to: a sequence whose sampling or admission throws
// ends alone with an in-band error; a step whose run throws fails the sequences in that step;
// the loop goes on either way. A paused sequence (its client is not reading) keeps its row and
// KV but takes no steps until it is resumed or cancelled.
import type { Sequence } from './sequence.ts';
import type { Lane, LanePool } from './lanes.ts';
import type { StepGroup, StepRow, StepRunner } from './step.ts';
import type { AdapterRef, TokenEvent } from './generate-request.ts';
import type { AdapterSource } from './adapter-source.ts';
import type { ort } from './session.ts';
import { LoraserveError, serializeError } from './errors.ts';
import { isMergedOnly } from './lora-arena.ts';
import { chooseChunks, holdsLastToken, nextAdmission, prefillOrder, stepBudget } from './schedule-policy.ts';
import type { PrefillCandidate, SchedulingMode } from './schedule-policy.ts';
import { TickCosts } from './tick-costs.ts';

export interface SchedulerLimits {
  maxRunning: number;        // sequences in the running batch (rows per lane)
  prefillChunk: number;      // most prompt tokens in one step (chunked prefill)
  kvBudgetBytes: number;     // KV bytes reserved by running sequences (prompt + max_tokens each)
  scheduling?: SchedulingMode; // goodput (default) or strict (schedule-policy.ts)
  itlTargetMs?: number;      // goodput: the inter-token latency running streams are kept within
}

export const DEFAULT_ITL_TARGET_MS = 200;

// The merged-weights path (merge/merged-sessions.ts), consulted once per decode step.
export interface MergedPath {
  // A ready merged session for this adapter version, or undefined (then the step runs unmerged).
  sessionFor(version: string | null, batch: number): ort.InferenceSession | undefined;
  // Every decode step's timing, for the merge policy's cost model.
  observe(path: 'base' | 'unmerged' | 'merged', batch: number, ms: number): void;
  // The session a merged-only adapter's rows must step on, or undefined while it is not ready;
  // `inUse` are the merged-only versions with running rows. Throws when it can never be built.
  required(version: string, inUse: ReadonlySet<string>): ort.InferenceSession | undefined;
}

// A new sequence starts in the lane that holds its prompt and this many more tokens (or max_tokens
// if fewer): most sequences then never move, and the lanes stay few.
const INITIAL_ROOM = 256;
// While prompts wait, every this many ticks one runs without prompt tokens, to keep the decode
// cost the budget subtracts fresh (its streams still take their token).
const REMEASURE_EVERY = 8;
// While sequences decode, warming KV pages may add this share of a decode step to a tick.
export const WARM_SHARE = 0.25;
const WARM_MS_UNMEASURED = 5;
// A decoding sequence this close to its lane's capacity has its next lane's row warmed ahead.
const WARM_AHEAD = 32;

// What a decode step reads: the weights once, plus every row's KV up to its lane's capacity.
export interface StepCost {
  weightBytes: number;
  kvBytesPerPosition: number;
}

export type EmitFn = (seqId: string, events: TokenEvent[]) => void;

// Test-only fault points (engine-worker.ts sets them when faults are enabled).
export interface SchedulerFaults {
  beforeStep?: () => void;      // just before a batched step runs
  beforeAdvance?: (state: Sequence['state']) => void; // just before a sequence takes its step's result
}

export interface StepStats {
  kind: 'prefill' | 'decode' | 'mixed'; // mixed: prompt chunks riding in a decode step
  path: 'base' | 'unmerged' | 'merged';
  batch: number;
  promptRows: number;          // sequences whose prompt chunks rode in the step
  tokens: number;
  ms: number;
  adapters: (string | null)[]; // adapter name per sequence in the step
}

export class Scheduler {
  private readonly waiting: Sequence[] = [];
  private readonly running: Sequence[] = [];
  private reservedKv = 0;
  private readonly costs = new TickCosts();
  private mixedSinceDecode = 0;
  private readonly heldSince = new Map<Sequence, number>(); // prompts one token short of their end: promptTokensDone then
  private promptTokensDone = 0;                                // prompt tokens prefilled since start
  private tickStepMs = 0;                       // time in steps during the current tick
  lastBudget = 0;                               // prompt tokens the last tick could carry (tests)
  preemptions = 0;                              // rows given up by paused sequences
  onStep?: (s: StepStats) => void;
  onAdapterFailure?: (ref: AdapterRef, err: Error) => void; // an adapter version could not be loaded
  faults: SchedulerFaults = {};

  constructor(
    private readonly runner: StepRunner,
    private readonly lanes: LanePool,
    private readonly limits: SchedulerLimits,
    private readonly emit: EmitFn,
    private readonly adapters: AdapterSource | null = null,
    private readonly merged: MergedPath | null = null,
    private readonly cost: StepCost = { weightBytes: 0, kvBytesPerPosition: 1 }, // default: never fold lanes
  ) {}

  get waitingCount(): number { return this.waiting.length; }
  get runningCount(): number { return this.running.length; }
  get pausedCount(): number { return this.running.filter((s) => s.paused).length + this.waiting.filter((s) => s.paused).length; }
  get reservedKvBytes(): number { return this.reservedKv; }
  get idle(): boolean { return this.waiting.length === 0 && this.running.length === 0; }
  get busy(): boolean { return this.running.some((s) => !s.paused) || this.waiting.some((s) => !s.paused && this.adapterReady(s)); }

  // Flow control: a sequence whose client is not reading takes no steps (it keeps its row and KV).
  pause(seqId: string): void {
    const s = this.find(seqId);
    if (s) s.paused = true;
  }

  resume(seqId: string): void {
    const s = this.find(seqId);
    if (s) s.paused = false;
  }

  private find(seqId: string): Sequence | undefined {
    return this.running.find((s) => s.id === seqId) ?? this.waiting.find((s) => s.id === seqId);
  }

  submit(seq: Sequence): void {
    if (seq.req.adapter) this.adapters?.pin(seq.req.adapter.version);
    this.waiting.push(seq);
  }

  // Shutdown: every sequence ends now, without events.
  cancelAll(): void {
    for (const s of [...this.waiting]) this.cancel(s.id);
    for (const s of [...this.running]) this.cancel(s.id);
  }

  // Cancellation frees the row and the KV cache before the next step.
  cancel(seqId: string): void {
    const w = this.waiting.findIndex((s) => s.id === seqId);
    if (w !== -1) { const [s] = this.waiting.splice(w, 1); s.cancel(); this.unpin(s); return; }
    const r = this.running.find((s) => s.id === seqId);
    if (r) { r.cancel(); this.retire(); }
  }

  // One round of the five stages; false when there was nothing to step (the loop then waits for a
  // message: a new request, a resume, a cancel, a finished adapter load).
  async tick(): Promise<boolean> {
    this.admit();
    this.warmRows();
    // one decode step per lane (capacity class), shortest first, after folding small lanes into
    // bigger ones wherever the padding costs less than the extra step's weight pass; the prompt
    // chunks ride in the first of them (one pass over the weights for both)
    this.consolidate();
    // merged-only adapters' rows step apart (one group per lane and such adapter), once their session is ready
    const sessions = this.mergedOnlySessions();
    const canStep = (s: Sequence): boolean => s.mergedOnlyVersion === null || sessions.has(s.mergedOnlyVersion);
    const decodeGroups = this.lanes.lanes
      .flatMap((lane) => apart(this.running.filter((s) => s.state === 'decode' && !s.paused && s.lane === lane && canStep(s))));
    const decodeRows = decodeGroups.reduce((a, g) => a + g.length, 0);
    const candidates = this.prefillCandidates().filter(canStep);
    // now and then a tick without prompt tokens keeps the decode cost the budget relies on fresh
    const measure = decodeRows > 0 && candidates.length > 0 && (this.costs.decodeSamples === 0 || this.mixedSinceDecode >= REMEASURE_EVERY);
    const budget = measure ? 0 : this.budget(decodeRows);
    this.lastBudget = budget;
    let chunks = this.chooseChunks(candidates, budget, decodeRows > 0);
    // held prompts never stall the loop: with nothing else to run, they run
    if (decodeGroups.length === 0 && chunks.size === 0 && candidates.length > 0) chunks = this.chooseChunks(candidates, budget, decodeRows > 0, false);
    const prefill = [...chunks.keys()];
    if (decodeGroups.length === 0 && !prefill.length) return false;
    this.tickStepMs = 0;
    // prompt chunks ride in the first step they may share: one whose rows use the same merged-only
    // adapter, or none
    const steps = decodeGroups.map((decode) => ({ prefill: [] as Sequence[], decode }));
    for (const s of prefill) {
      let plan = steps.find((p) => (p.decode[0] ?? p.prefill[0]).mergedOnlyVersion === s.mergedOnlyVersion);
      if (!plan) steps.push((plan = { prefill: [], decode: [] }));
      plan.prefill.push(s);
    }
    for (const p of steps) await this.step(p.prefill, p.decode, chunks, sessions);
    const promptTokens = [...chunks.values()].reduce((a, n) => a + n, 0);
    this.promptTokensDone += promptTokens;
    this.costs.observe(promptTokens, decodeRows, this.tickStepMs);
    if (decodeRows > 0) this.mixedSinceDecode = promptTokens > 0 ? this.mixedSinceDecode + 1 : 0;
    return true;
  }

  // The ready sessions of the merged-only adapters with running rows (a build starts for the others);
  // the sequences of one whose session can never be built fail.
  private mergedOnlySessions(): Map<string, ort.InferenceSession> {
    const ready = new Map<string, ort.InferenceSession>();
    const inUse = new Set(this.running.flatMap((s) => (s.mergedOnlyVersion !== null ? [s.mergedOnlyVersion] : [])));
    for (const version of inUse) {
      try {
        if (!this.merged) throw new LoraserveError('unavailable', 'this adapter is kept as merged weights only, and this engine has no merged-weights path');
        const session = this.merged.required(version, inUse);
        if (session) ready.set(version, session);
      } catch (err) {
        for (const s of this.running) if (s.mergedOnlyVersion === version) this.fail(s, err);
        this.retire();
      }
    }
    return ready;
  }

  // Prompt tokens this tick may carry (schedule-policy.ts stepBudget).
  private budget(decodeRows: number): number {
    return stepBudget({
      mode: this.limits.scheduling ?? 'goodput',
      itlTargetMs: this.limits.itlTargetMs ?? DEFAULT_ITL_TARGET_MS,
      maxTokens: this.limits.prefillChunk,
      decoding: decodeRows > 0,
      decodeMs: this.costs.decodeMs(decodeRows),
      msPerPromptToken: this.costs.msPerPromptToken,
    });
  }

  // Sequences whose next prompt chunk can run now: in prefill, not paused, their KV row warm.
  private prefillCandidates(): Sequence[] {
    return this.running.filter((s) => s.state === 'prefill' && !s.paused && s.lane!.kv.isWarm(s.row));
  }

  // Whose prompt chunks ride in this step and how many tokens each (schedule-policy.ts). With
  // `together`, prompts start decoding together (holdsLastToken): one waiting one token short of
  // its end is left out, and one that would wait stops one token short of its end.
  private chooseChunks(seqs: Sequence[], budget: number, decoding: boolean, together = (this.limits.scheduling ?? 'goodput') === 'goodput'): Map<Sequence, number> {
    const now = performance.now();
    const held = together ? this.holds(seqs, decoding, budget) : (): boolean => false;
    const open = seqs.filter((s) => !(s.remainingPrefill === 1 && held(s)));
    const laneIndex = new Map(this.lanes.lanes.map((l, i) => [l, i]));
    const c: PrefillCandidate[] = open.map((s) => ({ lane: laneIndex.get(s.lane!)!, row: s.row, remaining: s.remainingPrefill - (s.remainingPrefill > 1 && held(s) ? 1 : 0), waitedMs: now - s.enqueuedAt, capacity: s.lane!.capacity }));
    const chosen = chooseChunks(c, prefillOrder(c, this.costs.msPerPromptToken), budget);
    return new Map(chosen.map((x) => [open[x.index], x.tokens]));
  }

  // Which prompts wait (or will, once one token short of their end) for the others to catch up.
  private holds(seqs: Sequence[], decoding: boolean, budget: number): (s: Sequence) => boolean {
    for (const s of this.heldSince.keys()) if (s.state !== 'prefill' || s.remainingPrefill !== 1) this.heldSince.delete(s);
    // one token short, a prompt waits for those with more left. Further from its end it stops one
    // short whenever nothing decodes, others in prefill or not: requests sent together reach the
    // engine some ms apart, and the first would otherwise finish its prompt in the first step and
    // decode alone before the rest were admitted (its last token then runs with theirs, or alone
    // in the next step: one small step more)
    const inPrefill = this.running.filter((s) => s.state === 'prefill' && !s.paused);
    const verdict = new Map<Sequence, boolean>();
    for (const s of seqs) {
      const ready = s.remainingPrefill === 1;
      if (ready && !this.heldSince.has(s)) this.heldSince.set(s, this.promptTokensDone);
      verdict.set(s, holdsLastToken({
        decoding,
        othersPending: !ready || inPrefill.some((p) => p !== s && p.remainingPrefill > 1),
        heldTokens: ready ? this.promptTokensDone - this.heldSince.get(s)! : 0,
        stepTokens: budget,
        ownTokens: s.contextLength,
        gang: inPrefill.length,
      }));
    }
    return (s) => verdict.get(s) ?? false;
  }

  private adapterReady(seq: Sequence): boolean {
    return !seq.req.adapter || !this.adapters || this.adapters.acquire(seq.req.adapter) !== undefined || this.adapters.failure(seq.req.adapter) !== undefined;
  }

  // Fair share between requests (schedule-policy.ts nextAdmission); a paused sequence (its client
  // is not reading) takes no row. When the batch or the KV budget is full, a paused decoding
  // sequence gives up its row (preempted: it recomputes its KV when admitted again), so clients
  // that stop reading never lock the others out.
  private admit(): void {
    const rowsOf = new Map<string, number>();
    for (const s of this.running) rowsOf.set(s.group, (rowsOf.get(s.group) ?? 0) + 1);
    const skipped = new Set<Sequence>(); // adapters still loading from disk: the others go ahead
    for (;;) {
      const i = nextAdmission(this.waiting.map((s) => ({ group: s.group, eligible: !s.paused && !skipped.has(s) })), rowsOf);
      if (i === -1) return;
      const seq = this.waiting[i];
      if (this.running.length >= this.limits.maxRunning && !this.preemptPaused()) return;
      const ref = seq.req.adapter;
      const prepared = ref && this.adapters ? this.adapters.acquire(ref) : null;
      if (ref && this.adapters && !prepared) {
        const err = this.adapters.failure(ref);
        if (err) {
          this.onAdapterFailure?.(ref, err);
          this.fail(seq, err);
        } else skipped.add(seq);
        continue;
      }
      const mergedOnly = prepared ? isMergedOnly(prepared) : false;
      if (prepared && !mergedOnly && !this.lanes.lora.canHold(prepared)) {
        // the LoRA arena's byte budget is spent by the adapters of the running batch: wait for
        // rows to finish (other adapters, or this one's, may still fit); alone, it can never fit
        if (this.running.length === 0) this.fail(seq, new LoraserveError('invalid_request', `adapter ${ref!.name} needs more LoRA arena memory than --lora-arena-mb allows`));
        else skipped.add(seq);
        continue;
      }
      if (this.running.length > 0 && this.reservedKv + seq.reservedKvBytes > this.limits.kvBudgetBytes && !this.preemptPaused()) return;
      this.waiting.splice(this.waiting.indexOf(seq), 1);
      try {
        const room = Math.min(seq.req.maxTokens - seq.output.length, INITIAL_ROOM);
        seq.lane = this.lanes.laneFor(Math.min(seq.contextLength + room, this.runner.maxPositions));
        seq.row = this.lanes.takeSlot();
        seq.lane.enter(seq.row);
        this.lanes.lora.setRow(seq.row, mergedOnly ? null : prepared ?? null); // merged-only: no factors
        seq.mergedOnlyVersion = mergedOnly ? ref!.version : null;
      } catch (err) {
        this.release(seq);
        this.fail(seq, err);
        continue;
      }
      this.reservedKv += seq.reservedKvBytes;
      seq.state = 'prefill';
      this.running.push(seq);
      rowsOf.set(seq.group, (rowsOf.get(seq.group) ?? 0) + 1);
    }
  }

  // Frees the row of a paused decoding sequence; it waits (first in line) until its client reads.
  private preemptPaused(): boolean {
    const i = this.running.findIndex((s) => s.paused && s.state === 'decode' && s.output.length > 0);
    if (i === -1) return false;
    const [victim] = this.running.splice(i, 1);
    this.reservedKv -= victim.reservedKvBytes;
    this.release(victim);
    victim.preempt();
    this.waiting.unshift(victim);
    this.preemptions++;
    return true;
  }

  // A sequence that cannot go on ends alone, with an in-band error; it is then retired.
  private fail(seq: Sequence, err: unknown): void {
    const waiting = this.waiting.indexOf(seq);
    if (waiting !== -1) this.waiting.splice(waiting, 1);
    if (!this.running.includes(seq) && seq.state !== 'done') this.unpin(seq);
    seq.cancel();
    this.emit(seq.id, [{ type: 'error', error: serializeError(err) }]);
  }

  // Every sequence running or waiting fails (a fault that belongs to no one sequence).
  failAll(err: unknown): void {
    for (const s of [...this.waiting, ...this.running]) this.fail(s, err);
    this.retire();
  }

  // Rows that a step will soon read whole for the first time: those of sequences in prefill (their
  // chunks wait until the row is warm), then the next lane's row of sequences about to outgrow
  // theirs. With nothing decoding nobody waits, so rows warm at once; else within a time slice.
  private warmRows(): void {
    const decoding = this.running.filter((s) => s.state === 'decode');
    const decodeMs = this.costs.decodeMs(decoding.length);
    const slice = decoding.length === 0 ? Infinity : decodeMs !== null ? WARM_SHARE * decodeMs : WARM_MS_UNMEASURED;
    const deadline = performance.now() + slice;
    for (const s of this.running) {
      if (s.state !== 'prefill' || s.lane!.kv.isWarm(s.row)) continue;
      if (!s.lane!.kv.warmRow(s.row, deadline)) return;
    }
    for (const s of decoding) {
      const lane = s.lane!;
      // only a sequence that may outgrow its lane (prompt + max_tokens beyond it), when it is close
      if (lane.kv.lengths[s.row] + WARM_AHEAD < lane.capacity || s.req.promptTokens.length + s.req.maxTokens <= lane.capacity) continue;
      const next = this.lanes.laneFor(lane.capacity + 1);
      if (next === lane || next.kv.isWarm(s.row)) continue;
      next.kv.ensure(this.lanes.slots);
      if (!next.kv.warmRow(s.row, deadline)) return;
    }
  }

  // Lanes with decoding sequences, smallest first: move all of a lane's sequences up into the next
  // active lane when attending over the bigger capacity (rows · Δcapacity · KV bytes) reads less than
  // a separate step would (the weights once more). The copy is paid once; the saving every step.
  private consolidate(): void {
    const decoding = (l: Lane) => this.running.filter((s) => s.state === 'decode' && s.lane === l);
    const active = this.lanes.lanes.filter((l) => decoding(l).length > 0);
    for (let i = 0; i + 1 < active.length; i++) {
      const small = active[i];
      const big = active[i + 1];
      const seqs = decoding(small);
      if (seqs.length * (big.capacity - small.capacity) * this.cost.kvBytesPerPosition >= this.cost.weightBytes) continue;
      for (const s of seqs) s.lane = this.lanes.moveTo(small, s.row, big);
    }
  }

  // One step: prompt chunks (group 0) and decode tokens (group 1), each group within one lane.
  private async step(prefillPlanned: Sequence[], decodePlanned: Sequence[], chunks: Map<Sequence, number>, sessions: ReadonlyMap<string, ort.InferenceSession>): Promise<void> {
    // a sequence cancelled while an earlier step of this tick ran has given its row back: left out
    const live = (g: Sequence[]): Sequence[] => g.filter((s) => s.state !== 'done');
    const prefill = live(prefillPlanned);
    const decode = live(decodePlanned);
    const all = [...prefill, ...decode];
    const tokensOf = new Map(all.map((s) => [s, s.nextTokens(chunks.get(s) ?? 1)]));
    // a sequence that outgrows its lane moves up first
    for (const s of all) {
      const need = s.lane!.kv.lengths[s.row] + tokensOf.get(s)!.length;
      if (need > s.lane!.capacity) s.lane = this.lanes.migrate(s.lane!, s.row, need);
    }
    // each group must sit in one lane; a sequence that just moved steps on its own
    const split = (g: Sequence[]): [Sequence[], Sequence[]] => [g.filter((s) => s.lane === g[0]?.lane), g.filter((s) => s.lane !== g[0]?.lane)];
    const [preStaying, preMoved] = split(prefill);
    const [decStaying, decMoved] = split(decode);
    for (const s of preMoved) await this.step([s], [], chunks, sessions);
    for (const s of decMoved) await this.step([], [s], chunks, sessions);
    const pre = live(preStaying);
    const dec = live(decStaying);
    if (pre.length === 0 && dec.length === 0) return;

    const rowsOf = (g: Sequence[]): StepRow[] => g.map((s) => ({ row: s.row, tokens: tokensOf.get(s)!, allLogits: s.wantsPromptLogits, hidden: s.wantsHidden }));
    const groupOf = (g: Sequence[]): StepGroup | null => (g.length ? { rows: rowsOf(g), kv: g[0].lane!.kv, lora: this.lanes.lora } : null);
    const seqs = [...pre, ...dec];
    const prefillTokens = pre.reduce((a, s) => a + tokensOf.get(s)!.length, 0);
    const versions = new Set(seqs.map((s) => s.req.adapter?.version ?? null));
    const only = versions.size === 1 ? [...versions][0] : undefined;
    const mergedOnly = seqs[0].mergedOnlyVersion; // the same for every sequence of the step (tick)
    const mergedSession = mergedOnly !== null ? sessions.get(mergedOnly) : dec.length && only !== undefined ? this.merged?.sessionFor(only, dec.length) : undefined;
    const kind: StepStats['kind'] = pre.length && dec.length ? 'mixed' : pre.length ? 'prefill' : 'decode';
    const t0 = performance.now();
    let result;
    try {
      this.faults.beforeStep?.();
      if (mergedOnly !== null && !mergedSession) throw new LoraserveError('internal', 'a merged-only adapter\'s step has no merged session');
      result = await this.runner.runGroups([groupOf(pre), groupOf(dec)], mergedSession);
    } catch (err) {
      for (const s of seqs) if (s.state !== 'done') this.fail(s, err);
      this.retire();
      return;
    }
    const path = mergedSession ? 'merged' : versions.has(null) && versions.size === 1 ? 'base' : 'unmerged';
    const ms = performance.now() - t0;
    this.tickStepMs += ms;
    if (kind === 'decode' && (path !== 'unmerged' || versions.size === 1)) this.merged?.observe(path, dec.length, ms);
    this.onStep?.({ kind, path, batch: dec.length || pre.length, promptRows: pre.length, tokens: prefillTokens + dec.length, ms, adapters: seqs.map((s) => s.req.adapter?.name ?? null) });
    const V = result.vocabSize;
    seqs.forEach((s, i) => {
      if (s.state === 'done') return; // cancelled while the step ran
      if (i >= pre.length) { if (mergedSession) s.mergedSteps++; else s.unmergedSteps++; }
      const n = tokensOf.get(s)!.length;
      const off = result.rowOffsets[i];
      const count = s.wantsPromptLogits ? n : 1;
      try {
        this.faults.beforeAdvance?.(s.state);
        const h = result.hiddenOffsets[i];
        const D = result.hiddenSize;
        const events = s.advance(n, result.logits.subarray(off * V, (off + count) * V), V, h >= 0 ? result.hidden.subarray(h * D, (h + n) * D) : undefined, result.lse?.subarray(off, off + count));
        if (events.length) this.emit(s.id, events);
      } catch (err) {
        this.fail(s, err); // sampling or detokenizing this sequence failed: it alone ends
      }
    });
    this.retire();
  }

  private retire(): void {
    for (let i = this.running.length - 1; i >= 0; i--) {
      const s = this.running[i];
      if (s.state !== 'done') continue;
      this.running.splice(i, 1);
      this.reservedKv -= s.reservedKvBytes;
      this.release(s);
      this.unpin(s);
    }
  }

  // Gives back a sequence's row (KV lane and slot), if it holds one.
  private release(s: Sequence): void {
    if (s.lane && s.row >= 0) s.lane.leave(s.row);
    if (s.row >= 0) this.lanes.giveSlot(s.row);
    s.lane = null;
    s.row = -1;
  }

  private unpin(s: Sequence): void {
    if (s.req.adapter) this.adapters?.unpin(s.req.adapter.version);
  }
}

// A lane's decoding sequences in step groups: those without a merged-only adapter together (first),
// then one group per merged-only adapter.
function apart(seqs: Sequence[]): Sequence[][] {
  const groups = new Map<string | null, Sequence[]>([[null, []]]);
  for (const s of seqs) {
    const g = groups.get(s.mergedOnlyVersion);
    if (g) g.push(s);
    else groups.set(s.mergedOnlyVersion, [s]);
  }
  return [...groups.values()].filter((g) => g.length > 0);
}
