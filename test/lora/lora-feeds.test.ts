// The LoRA token feeds (lora-feeds.ts tokenFeeds): each token's lora_src row is where its delta
// lands among the two bands' deltas stacked band 1, band 0, then the zero row (llama-graph.ts
// loraLinear). Property: the delta row a token reads was computed from that token's own x row,
// and a token with no adapter reads the zero row.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { tokenFeeds } from '../../src/runtime/lora-feeds.ts';
import type { BandTokens, LoraTokens } from '../../src/runtime/lora-feeds.ts';

const ints = (t: { data: unknown }): number[] => Array.from(t.data as BigInt64Array, Number);

// rows of a step laid out one after another; each row has a slot (or none) and a band
const stepArb = fc.array(fc.record({ count: fc.integer({ min: 1, max: 9 }), slot: fc.integer({ min: -1, max: 5 }), band: fc.integer({ min: 0, max: 1 }) }), { minLength: 1, maxLength: 12 });

describe('tokenFeeds', () => {
  it('sends each adapter token to the delta row computed from its own x, and the rest to the zero row', () => {
    fc.assert(fc.property(stepArb, (spec) => {
      let first = 0;
      const bands: [BandTokens, BandTokens] = [{ entries: [], bySlot: new Map() }, { entries: [], bySlot: new Map() }];
      const slotOfToken: number[] = [];
      spec.forEach((r, row) => {
        const rt: LoraTokens = { row, first, count: r.count };
        for (let t = 0; t < r.count; t++) slotOfToken.push(r.slot);
        first += r.count;
        if (r.slot < 0) return;
        // a slot lives in one band: the first row on it decides
        const band = bands.find((b) => b.bySlot.has(r.slot)) ?? bands[r.band];
        if (!band.bySlot.has(r.slot)) { band.bySlot.set(r.slot, []); band.entries.push(r.slot); }
        band.bySlot.get(r.slot)!.push(rt);
      });
      const N = first;
      const feeds = tokenFeeds(bands[1], bands[0], N);
      const x1 = ints(feeds['lora_x.1']);
      const x0 = ints(feeds['lora_x.0']);
      const stacked = [...x1, ...x0]; // the x row behind each delta row, in the graph's stacking order
      const src = ints(feeds.lora_src);
      expect(feeds.lora_src.dims).toEqual([N]);
      expect(feeds['lora_x.1'].dims[0]).toBe(bands[1].entries.length);
      expect(feeds['lora_x.0'].dims[0]).toBe(bands[0].entries.length);
      for (let t = 0; t < N; t++) {
        if (slotOfToken[t] < 0) expect(src[t]).toBe(stacked.length); // the zero row
        else expect(stacked[src[t]]).toBe(t);
      }
      // every real x index is read back by exactly one token; every other is the pad N
      const reads = new Set(src.filter((i) => i < stacked.length));
      stacked.forEach((x, i) => expect(x === N ? !reads.has(i) : reads.has(i) && src[x] === i).toBe(true));
      // an entry's tokens are its slot's tokens
      for (const [g, xs] of [[1, x1], [0, x0]] as const) {
        const { entries } = bands[g];
        const width = entries.length ? xs.length / entries.length : 0;
        entries.forEach((slot, e) => {
          for (const x of xs.slice(e * width, (e + 1) * width)) if (x !== N) expect(slotOfToken[x]).toBe(slot);
        });
      }
    }), { numRuns: 300 });
  });

  it('feeds a step without entries as all zero rows', () => {
    const empty: BandTokens = { entries: [], bySlot: new Map() };
    const feeds = tokenFeeds(empty, empty, 4);
    expect(ints(feeds.lora_src)).toEqual([0, 0, 0, 0]);
    expect(feeds['lora_x.1'].dims).toEqual([0, 1]);
  });
});
