// Scheduling policy: the choices a tick makes, as small pure functions over plain numbers, so each
// can be tested on its own (test/runtime/schedule-policy.test.ts). The scheduler (scheduler.ts)
// gathers the numbers and applies the answers.
//   stepBudget     how many prompt tokens (padded, as the step computes them) this tick may carry
//   nextAdmission  which waiting sequence takes the next free row
//   prefillOrder   which prompts go first: shortest remaining first, aged by time waited
//   chooseChunks   whose prompt chunks ride in this step, and how many tokens each
//   holdsLastToken whether a prompt waits, one token short of its end, to start decoding together
//
// Goodput (the default): a tick may take as long as the operator's inter-token latency target
// (--itl-target-ms) allows, with a safety margin; what is left after the decode rows goes to
// prompt tokens. With nothing decoding there is no latency to protect and a step takes the most
// prompt tokens (--prefill-chunk). Strict: a prompt chunk costs at most PREFILL_SHARE of a decode
// step, so streams stay near their plain decode speed while prompts trickle in.

export type SchedulingMode = 'goodput' | 'strict';

// Tick time aimed at, as a share of the ITL target: the rest absorbs noise, KV warming and delivery.
export const ITL_SAFETY = 0.8;
// Strict mode: a prompt chunk costs about this share of a decode step.
export const PREFILL_SHARE = 0.7;
// The smallest chunk while streams decode (a prompt always progresses), and the chunk used before
// the costs are measured.
export const MIN_CHUNK = 8;
export const UNMEASURED_CHUNK = 16;

export interface BudgetInput {
  mode: SchedulingMode;
  itlTargetMs: number;
  maxTokens: number;               // the most prompt tokens in one step (--prefill-chunk)
  decoding: boolean;               // some stream is decoding (its ITL is what the budget protects)
  decodeMs: number | null;         // this tick's decode steps without prompt tokens, predicted (null: unknown)
  msPerPromptToken: number | null; // marginal cost of a prompt token in a step (null: unknown)
}

export function stepBudget(x: BudgetInput): number {
  if (!x.decoding) return x.maxTokens;
  if (x.decodeMs === null || x.msPerPromptToken === null || !(x.msPerPromptToken > 0)) return Math.min(x.maxTokens, UNMEASURED_CHUNK);
  const roomMs = x.mode === 'strict' ? PREFILL_SHARE * x.decodeMs : ITL_SAFETY * x.itlTargetMs - x.decodeMs;
  const tokens = Math.floor(roomMs / x.msPerPromptToken);
  return Math.max(Math.min(MIN_CHUNK, x.maxTokens), Math.min(x.maxTokens, tokens));
}

// ---- admission

export interface WaitingEntry {
  group: string;       // the API request it belongs to (choices of one request share it)
  eligible: boolean;   // not paused, not skipped this tick (its adapter is still loading)
}

// Fair share between requests: the oldest eligible entry of the group holding the fewest rows
// (entries are in arrival order), so one request with n = 64 cannot take every row from the
// requests behind it. Returns an index into `waiting`, or -1.
export function nextAdmission(waiting: readonly WaitingEntry[], rowsOf: ReadonlyMap<string, number>): number {
  let best = -1;
  for (let i = 0; i < waiting.length; i++) {
    const w = waiting[i];
    if (!w.eligible) continue;
    if (best === -1 || (rowsOf.get(w.group) ?? 0) < (rowsOf.get(waiting[best].group) ?? 0)) best = i;
  }
  return best;
}

// ---- prompt chunks

export interface PrefillCandidate {
  lane: number;        // the KV lane it lives in (a step's prompt group sits in one lane)
  row: number;         // its row there
  remaining: number;   // prompt tokens not yet prefilled
  waitedMs: number;    // since its request arrived
  capacity: number;    // its lane's capacity (positions)
}

// Shortest remaining prefill first, so a short prompt is not stuck behind a long one's whole
// prefill; aged by time waited (in prompt tokens' worth of compute), so a long prompt is not
// starved by a stream of short ones: it overtakes once it has waited as long as the short ones'
// prefill would take. Returns indices into `c`, in the order to serve them.
export function prefillOrder(c: readonly PrefillCandidate[], msPerPromptToken: number | null): number[] {
  const ms = msPerPromptToken && msPerPromptToken > 0 ? msPerPromptToken : 1;
  const key = (x: PrefillCandidate): number => x.remaining - x.waitedMs / ms;
  return c.map((_, i) => i).sort((a, b) => key(c[a]) - key(c[b]) || a - b);
}

export interface Chunk {
  index: number;   // into the candidates
  tokens: number;
}

// Each row of a prompt group beyond the first costs prompt tokens' worth in proportion to its
// lane's capacity: its attention reads its whole KV row once per head, in GEMMs too small to run at
// full speed. Measured on the 110M model in the 640 lane: 16 rows × 16 tokens take ~430 ms where
// 1 row × 256 takes ~300–360 ms, about 8 ms (≈ 6 tokens) per added row; so 1/80 of a token per
// position of capacity (8 tokens at 640, 1.6 at 128).
export const ROW_COST_PER_POSITION = 1 / 80;
export const rowCostTokens = (capacity: number): number => ROW_COST_PER_POSITION * capacity;

// The prompt chunks of one step, within `budget` tokens as the step computes them: a group of
// prompt rows runs as [rows lo..hi, width] (rows between that are not in the group ride along as
// padding), so the cost is the row span times the widest chunk, plus rowCostTokens(capacity) per
// row of the span beyond the first. The first in `order` is always served; then the prefix of same-lane
// candidates (in order) that carries the most real prompt tokens, each taking min(remaining,
// width) with width = (budget − rowCost·(span − 1)) / span. Ties go to fewer rows, so
// equal prompts are prefilled one after another (the first starts decoding soonest), and a row is
// added only when it brings more tokens than it costs: short prompts share a step, long ones don't.
export function chooseChunks(c: readonly PrefillCandidate[], order: readonly number[], budget: number): Chunk[] {
  if (order.length === 0 || budget < 1) return [];
  const lane = c[order[0]].lane;
  const rowCost = rowCostTokens(c[order[0]].capacity);
  const same = order.filter((i) => c[i].lane === lane);
  let best: Chunk[] = [{ index: same[0], tokens: Math.min(c[same[0]].remaining, budget) }];
  let bestTokens = best[0].tokens;
  let lo = c[same[0]].row;
  let hi = c[same[0]].row;
  for (let k = 2; k <= same.length; k++) {
    const row = c[same[k - 1]].row;
    lo = Math.min(lo, row);
    hi = Math.max(hi, row);
    const span = hi - lo + 1;
    const width = Math.floor((budget - rowCost * (span - 1)) / span);
    if (width < 1) break;
    const chunks = same.slice(0, k).map((i) => ({ index: i, tokens: Math.min(c[i].remaining, width) }));
    const tokens = chunks.reduce((a, x) => a + x.tokens, 0);
    if (tokens > bestTokens) { best = chunks; bestTokens = tokens; }
  }
  return best;
}

// ---- starting together

export interface HoldInput {
  decoding: boolean;            // some stream is decoding (its ITL then bounds every step anyway)
  othersPending: boolean;       // one token short of its end: another running prompt has more than its
                                // last token to prefill (further from it the scheduler passes true)
  heldTokens: number;           // prompt tokens prefilled (for others) since it came one token short
  stepTokens: number;           // the next step's prompt tokens (the budget)
  ownTokens: number;            // its own prompt's length
  gang: number;                 // running prompts in prefill, itself included
}

// Start together: while nothing decodes, a prompt stops one token short of its end (its first
// token not yet sampled) until the other running prompts have too; their last tokens then run in
// one step and the batch starts decoding full. The alternative, a batch of one decoding while the
// rest prefill, is the worst state: its ITL holds every later prompt chunk to the ITL budget (a
// fraction of --prefill-chunk), and each of those steps pays a decode step for one row. Nothing
// decoding means no ITL to protect, so prompts run at full chunk size meanwhile. Bounded in prompt
// tokens, not time (so a busy machine cannot break a batch up): a prompt waits while at most
// HOLD_MARGIN × gang × its own length of other prompts' tokens are prefilled, as if the others were
// like it, and only while another step fits in that. Prompts of like length therefore start
// together, and a short prompt sent after a much longer one is held for a few of its own lengths
// at most (a 2-token one behind a 394-token one: not at all, one chunk outruns its bound).
export const HOLD_MARGIN = 1.5;

export function holdsLastToken(x: HoldInput): boolean {
  if (x.decoding || !x.othersPending) return false;
  return x.heldTokens + x.stepTokens <= HOLD_MARGIN * x.gang * x.ownTokens;
}
