// The scheduling policy's functions (schedule-policy.ts), each on its own: properties over random
// inputs (fast-check) and the cases the policy exists for.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ITL_SAFETY, MIN_CHUNK, PREFILL_SHARE, UNMEASURED_CHUNK, HOLD_MARGIN, chooseChunks, holdsLastToken, nextAdmission, prefillOrder, rowCostTokens, stepBudget } from '../../src/runtime/schedule-policy.ts';
import type { BudgetInput, HoldInput, PrefillCandidate } from '../../src/runtime/schedule-policy.ts';

const budgetInput = fc.record({
  mode: fc.constantFrom('goodput' as const, 'strict' as const),
  itlTargetMs: fc.integer({ min: 10, max: 5000 }),
  maxTokens: fc.integer({ min: 16, max: 4096 }),
  decoding: fc.boolean(),
  decodeMs: fc.option(fc.double({ min: 0.1, max: 2000, noNaN: true }), { nil: null }),
  msPerPromptToken: fc.option(fc.double({ min: 0.001, max: 100, noNaN: true }), { nil: null }),
});

const candidates = fc.array(fc.record({
  lane: fc.integer({ min: 0, max: 2 }),
  row: fc.integer({ min: 0, max: 15 }),
  remaining: fc.integer({ min: 1, max: 2000 }),
  waitedMs: fc.integer({ min: 0, max: 10_000 }),
}), { minLength: 1, maxLength: 12 }).map((cs) => cs.map((c) => ({ ...c, capacity: 128 * 2 ** c.lane }))).map((cs) => {
  // rows are unique within a lane (one sequence per row)
  const seen = new Set<string>();
  return cs.filter((c) => { const k = `${c.lane}:${c.row}`; if (seen.has(k)) return false; seen.add(k); return true; });
});

describe('stepBudget', () => {
  it('is within [MIN_CHUNK, --prefill-chunk]; the whole chunk when nothing decodes; small until costs are known', () => {
    fc.assert(fc.property(budgetInput, (x) => {
      const b = stepBudget(x);
      expect(b).toBeGreaterThanOrEqual(MIN_CHUNK);
      expect(b).toBeLessThanOrEqual(x.maxTokens);
      if (!x.decoding) expect(b).toBe(x.maxTokens);
      else if (x.decodeMs === null || x.msPerPromptToken === null) expect(b).toBe(Math.min(UNMEASURED_CHUNK, x.maxTokens));
    }));
  });

  it('goodput: the predicted tick (decode + prompt tokens) stays within the ITL target with its margin, when the target allows more than the minimum', () => {
    fc.assert(fc.property(budgetInput, (x) => {
      const y: BudgetInput = { ...x, mode: 'goodput', decoding: true, decodeMs: x.decodeMs ?? 20, msPerPromptToken: x.msPerPromptToken ?? 1 };
      const b = stepBudget(y);
      if (b > MIN_CHUNK) expect(y.decodeMs! + b * y.msPerPromptToken!).toBeLessThanOrEqual(ITL_SAFETY * y.itlTargetMs + 1e-9);
      // and it uses the room: one more token (below the cap) would break the target
      if (b < y.maxTokens && b > MIN_CHUNK) expect(y.decodeMs! + (b + 1) * y.msPerPromptToken!).toBeGreaterThan(ITL_SAFETY * y.itlTargetMs);
    }));
  });

  it('grows with the ITL target and shrinks as decode steps or prompt tokens cost more', () => {
    fc.assert(fc.property(budgetInput, fc.double({ min: 1, max: 4, noNaN: true }), (x, f) => {
      const y: BudgetInput = { ...x, mode: 'goodput', decoding: true, decodeMs: x.decodeMs ?? 20, msPerPromptToken: x.msPerPromptToken ?? 1 };
      expect(stepBudget({ ...y, itlTargetMs: y.itlTargetMs * f })).toBeGreaterThanOrEqual(stepBudget(y));
      expect(stepBudget({ ...y, decodeMs: y.decodeMs! * f })).toBeLessThanOrEqual(stepBudget(y));
      expect(stepBudget({ ...y, msPerPromptToken: y.msPerPromptToken! * f })).toBeLessThanOrEqual(stepBudget(y));
    }));
  });

  it('strict: a chunk costs about PREFILL_SHARE of a decode step, whatever the target', () => {
    const x: BudgetInput = { mode: 'strict', itlTargetMs: 1000, maxTokens: 512, decoding: true, decodeMs: 40, msPerPromptToken: 0.5 };
    expect(stepBudget(x)).toBe(Math.floor((PREFILL_SHARE * 40) / 0.5));
    expect(stepBudget({ ...x, itlTargetMs: 100_000 })).toBe(stepBudget(x));
    // the goodput budget on the same costs: what 0.8 × 1000 ms leaves after the decode step
    expect(stepBudget({ ...x, mode: 'goodput', maxTokens: 4096 })).toBe(Math.floor((ITL_SAFETY * 1000 - 40) / 0.5));
  });

  it('a batch of one decoding while prompts wait: goodput admits many times the strict chunk', () => {
    const x: BudgetInput = { mode: 'goodput', itlTargetMs: 200, maxTokens: 256, decoding: true, decodeMs: 25, msPerPromptToken: 1.7 };
    expect(stepBudget(x)).toBeGreaterThanOrEqual(4 * stepBudget({ ...x, mode: 'strict' }));
  });
});

describe('nextAdmission', () => {
  it('picks an eligible entry of the group with the fewest rows, the oldest among those; -1 when none is eligible', () => {
    fc.assert(fc.property(
      fc.array(fc.record({ group: fc.constantFrom('a', 'b', 'c', 'd'), eligible: fc.boolean() }), { maxLength: 20 }),
      fc.dictionary(fc.constantFrom('a', 'b', 'c', 'd'), fc.integer({ min: 0, max: 8 })),
      (waiting, rows) => {
        const rowsOf = new Map(Object.entries(rows));
        const i = nextAdmission(waiting, rowsOf);
        const eligible = waiting.map((w, k) => ({ ...w, k })).filter((w) => w.eligible);
        if (eligible.length === 0) { expect(i).toBe(-1); return; }
        const fewest = Math.min(...eligible.map((w) => rowsOf.get(w.group) ?? 0));
        const expected = eligible.find((w) => (rowsOf.get(w.group) ?? 0) === fewest)!.k;
        expect(i).toBe(expected);
      },
    ));
  });
});

describe('prefillOrder', () => {
  it('is a permutation; with equal waits, shortest remaining first', () => {
    fc.assert(fc.property(candidates, (c) => {
      const order = prefillOrder(c, 1);
      expect([...order].sort((a, b) => a - b)).toEqual(c.map((_, i) => i));
      const same = c.map((x) => ({ ...x, waitedMs: 0 }));
      const o = prefillOrder(same, 1);
      for (let i = 1; i < o.length; i++) expect(same[o[i - 1]].remaining).toBeLessThanOrEqual(same[o[i]].remaining);
    }));
  });

  it('a short prompt arriving after a long one goes first; a long prompt that has waited its worth overtakes', () => {
    const long: PrefillCandidate = { lane: 3, row: 0, remaining: 394 - 76, waitedMs: 150, capacity: 512 };
    const short: PrefillCandidate = { lane: 0, row: 1, remaining: 2, waitedMs: 0, capacity: 128 };
    expect(prefillOrder([long, short], 1.7)).toEqual([1, 0]);
    // the long one has waited longer than the short one's prefill would take: it goes first
    expect(prefillOrder([{ ...long, waitedMs: 1000 }, { ...short, remaining: 200 }], 1.7)).toEqual([0, 1]);
  });
});

describe('chooseChunks', () => {
  it('serves the first in order; chunks of one lane, each 1..remaining tokens; the padded cost fits the budget', () => {
    fc.assert(fc.property(candidates, fc.integer({ min: 1, max: 600 }), fc.double({ min: 0.01, max: 10, noNaN: true }), (c, budget, ms) => {
      const order = prefillOrder(c, ms);
      const chunks = chooseChunks(c, order, budget);
      expect(chunks.length).toBeGreaterThan(0);
      expect(chunks[0].index).toBe(order[0]);
      expect(new Set(chunks.map((x) => c[x.index].lane)).size).toBe(1);
      for (const x of chunks) {
        expect(x.tokens).toBeGreaterThanOrEqual(1);
        expect(x.tokens).toBeLessThanOrEqual(c[x.index].remaining);
      }
      const rows = chunks.map((x) => c[x.index].row);
      const span = Math.max(...rows) - Math.min(...rows) + 1;
      if (chunks.length === 1) expect(chunks[0].tokens).toBeLessThanOrEqual(budget);
      else expect(span * Math.max(...chunks.map((x) => x.tokens)) + rowCostTokens(c[order[0]].capacity) * (span - 1)).toBeLessThanOrEqual(budget);
      // never fewer real tokens than the first alone would carry
      const real = chunks.reduce((a, x) => a + x.tokens, 0);
      expect(real).toBeGreaterThanOrEqual(Math.min(c[order[0]].remaining, budget));
    }));
  });

  it('several short prompts share one step; equal long prompts go one after another', () => {
    const short = [4, 6, 12, 25, 71].map((remaining, row) => ({ lane: 0, row, remaining, waitedMs: 0, capacity: 128 }));
    const chunks = chooseChunks(short, prefillOrder(short, 1), 64);
    expect(chunks.length).toBeGreaterThanOrEqual(4);
    const long = Array.from({ length: 8 }, (_, row) => ({ lane: 2, row, remaining: 512, waitedMs: 0, capacity: 640 }));
    expect(chooseChunks(long, prefillOrder(long, 1), 256)).toEqual([{ index: 0, tokens: 256 }]);
    // uneven long prompts (one stopped a token short of a chunk): still one row, not a spread of
    // many rows each carrying a sliver (each added row costs rowCostTokens(640) = 8 tokens' worth)
    const uneven = [255, 511, 511, 511].map((remaining, row) => ({ lane: 2, row, remaining, waitedMs: 0, capacity: 640 }));
    expect(chooseChunks(uneven, prefillOrder(uneven, 1), 256)).toEqual([{ index: 0, tokens: 255 }]);
  });

  it('nothing to serve, or no budget: no chunks', () => {
    expect(chooseChunks([], [], 100)).toEqual([]);
    expect(chooseChunks([{ lane: 0, row: 0, remaining: 5, waitedMs: 0, capacity: 128 }], [0], 0)).toEqual([]);
  });
});

describe('holdsLastToken', () => {
  const holdInput = fc.record({
    decoding: fc.boolean(),
    othersPending: fc.boolean(),
    heldTokens: fc.integer({ min: 0, max: 1e6 }),
    stepTokens: fc.integer({ min: 1, max: 4096 }),
    ownTokens: fc.integer({ min: 1, max: 8192 }),
    gang: fc.integer({ min: 1, max: 256 }),
  });

  it('never while a stream decodes or with no other prompt to wait for; never beyond HOLD_MARGIN × gang × its own length of others\' tokens', () => {
    fc.assert(fc.property(holdInput, (x: HoldInput) => {
      const held = holdsLastToken(x);
      if (x.decoding || !x.othersPending) expect(held).toBe(false);
      if (held) expect(x.heldTokens + x.stepTokens).toBeLessThanOrEqual(HOLD_MARGIN * x.gang * x.ownTokens);
    }));
  });

  it('monotone: a prompt that no longer holds does not hold again later', () => {
    fc.assert(fc.property(holdInput, fc.integer({ min: 0, max: 1e6 }), (x, more) => {
      if (!holdsLastToken(x)) expect(holdsLastToken({ ...x, heldTokens: x.heldTokens + more })).toBe(false);
    }));
  });

  it('the cases it exists for: 8 or 32 prompts of 512 tokens start together; a short prompt behind a long one is hardly held', () => {
    const chunk = 512;
    // the first 512-token prompt waits for the other seven, and the first of 32 for the other 31
    expect(holdsLastToken({ decoding: false, othersPending: true, heldTokens: 7 * 512 - chunk, stepTokens: chunk, ownTokens: 512, gang: 8 })).toBe(true);
    expect(holdsLastToken({ decoding: false, othersPending: true, heldTokens: 31 * 512 - chunk, stepTokens: chunk, ownTokens: 512, gang: 32 })).toBe(true);
    // a 2-token prompt behind a 394-token one: one chunk outruns its bound (1.5 × 2 × 2 tokens)
    expect(holdsLastToken({ decoding: false, othersPending: true, heldTokens: 0, stepTokens: chunk, ownTokens: 2, gang: 2 })).toBe(false);
    // a 100-token prompt behind a 4000-token one waits for at most 300 of its tokens, not 4000
    expect(holdsLastToken({ decoding: false, othersPending: true, heldTokens: 0, stepTokens: 256, ownTokens: 100, gang: 2 })).toBe(true);
    expect(holdsLastToken({ decoding: false, othersPending: true, heldTokens: 256, stepTokens: 256, ownTokens: 100, gang: 2 })).toBe(false);
  });
});
