// The per-adapter metrics keep the top-N adapters as their own label and fold the rest into "other".
// An adapter leaving the top-N must not take its history with it: for every adapter-labelled metric
// the sum over all label values (counter values; histogram buckets, _sum and _count) never decreases
// and always equals everything recorded so far. Read back through the public registry, as a scrape.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Metrics } from '../../src/server/metrics.ts';

type Json = Awaited<ReturnType<Metrics['registry']['getMetricsAsJSON']>>;

const HISTOGRAMS = ['loraserve_time_to_first_token_seconds', 'loraserve_inter_token_latency_seconds', 'loraserve_request_duration_seconds'];
const COUNTERS = ['loraserve_prompt_tokens_total', 'loraserve_generation_tokens_total'];

// Every total a scrape shows: per counter the sum of values; per histogram the sums of _count and _sum,
// and of each bucket per (path, le).
function totals(json: Json): Map<string, number> {
  const out = new Map<string, number>();
  const add = (k: string, v: number): void => { out.set(k, (out.get(k) ?? 0) + v); };
  for (const m of json) {
    if (!HISTOGRAMS.includes(m.name) && !COUNTERS.includes(m.name)) continue;
    add(`${m.name}`, 0);
    for (const v of m.values) {
      const name = (v as { metricName?: string }).metricName ?? m.name;
      if (name.endsWith('_bucket')) add(`${name}{path=${v.labels.path},le=${v.labels.le}}`, v.value);
      else add(name, v.value);
    }
  }
  return out;
}

function adapterLabels(json: Json): Set<string> {
  const s = new Set<string>();
  for (const m of json) if (HISTOGRAMS.includes(m.name) || COUNTERS.includes(m.name)) for (const v of m.values) s.add(String(v.labels.adapter));
  return s;
}

// Records one finished request the way generation.ts does.
function record(m: Metrics, label: string, path: string, latency: number, prompt: number, generated: number): void {
  const labels = { path, adapter: label };
  m.ttft.observe(labels, latency);
  m.itl.observe(labels, latency / 2);
  m.duration.observe(labels, latency * 3);
  m.promptTokens.inc({ adapter: label }, prompt);
  m.generationTokens.inc({ adapter: label }, generated);
}

describe('adapter metrics top-N', () => {
  it('hand case: an adapter dropping out of the top-1 moves its history into "other"', async () => {
    const m = new Metrics(1, 0, false);
    expect(m.adapterLabel('a')).toBe('a');
    record(m, 'a', 'unmerged', 0.02, 5, 7);
    expect(m.adapterLabel('b')).toBe('other'); // b: 1 request, a: 1 — a stays
    record(m, 'other', 'unmerged', 0.2, 3, 4);
    expect(m.adapterLabel('b')).toBe('b'); // b: 2 > a: 1 — a drops out
    record(m, 'b', 'merged', 0.002, 1, 1);
    const json = await m.registry.getMetricsAsJSON();
    const before = totals(json); // now: prom-client's JSON for a counter shares its live entries
    expect(adapterLabels(json)).toEqual(new Set(['other', 'b']));
    const prompt = json.find((x) => x.name === 'loraserve_prompt_tokens_total')!;
    expect(prompt.values.map((v) => [v.labels.adapter, v.value]).sort()).toEqual([['b', 1], ['other', 8]]);
    const ttft = json.find((x) => x.name === 'loraserve_time_to_first_token_seconds')!;
    const other = (suffix: string, le?: number): number | undefined => ttft.values.find((v) => (v as { metricName?: string }).metricName === `loraserve_time_to_first_token_seconds${suffix}` && v.labels.adapter === 'other' && v.labels.path === 'unmerged' && (le === undefined || v.labels.le === le))?.value;
    expect(other('_count')).toBe(2);
    expect(other('_sum')).toBeCloseTo(0.22);
    expect(other('_bucket', 0.025)).toBe(1);
    expect(other('_bucket', 0.25)).toBe(2);
    // "a" comes back: it gets its own series again, from zero, and "other" keeps what it had.
    for (let i = 0; i < 3; i++) m.adapterLabel('a');
    expect(m.adapterLabel('a')).toBe('a');
    const after = totals(await m.registry.getMetricsAsJSON());
    for (const [k, v] of before) expect(after.get(k)!, k).toBeGreaterThanOrEqual(v);
  });

  it('property: sums over label values never decrease and equal everything recorded', async () => {
    const op = fc.oneof(
      // a request starts: its label is taken now (it may finish after its adapter dropped out)
      fc.record({ kind: fc.constant('start' as const), adapter: fc.option(fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f'), { nil: null }), path: fc.constantFrom('base', 'merged', 'unmerged'), latency: fc.double({ min: 0, max: 100, noNaN: true }), prompt: fc.nat(50), generated: fc.nat(50) }),
      fc.record({ kind: fc.constant('finish' as const), which: fc.nat() }),
      fc.record({ kind: fc.constant('scrape' as const) }),
    );
    await fc.assert(fc.asyncProperty(fc.integer({ min: 0, max: 3 }), fc.array(op, { maxLength: 80 }), async (topN, ops) => {
      const m = new Metrics(topN, 0, false);
      const pending: { label: string; path: string; latency: number; prompt: number; generated: number }[] = [];
      const want = { requests: 0, prompt: 0, generated: 0, latency: 0 };
      let last = new Map<string, number>();
      const scrape = async (): Promise<void> => {
        const json = await m.registry.getMetricsAsJSON();
        const now = totals(json);
        for (const [k, v] of last) expect(now.get(k) ?? 0, k).toBeGreaterThanOrEqual(k.endsWith('_sum') ? v - 1e-9 * Math.max(1, v) : v); // _sum: float rounding
        for (const h of HISTOGRAMS) expect(now.get(`${h}_count`) ?? 0).toBe(want.requests);
        expect(now.get('loraserve_time_to_first_token_seconds_sum') ?? 0).toBeCloseTo(want.latency, 6);
        expect(now.get('loraserve_prompt_tokens_total')).toBe(want.prompt);
        expect(now.get('loraserve_generation_tokens_total')).toBe(want.generated);
        const labels = adapterLabels(json);
        expect(labels.size).toBeLessThanOrEqual(topN + 2); // the top-N, "other" and "base"
        last = now;
      };
      for (const o of ops) {
        if (o.kind === 'start') pending.push({ label: m.adapterLabel(o.adapter), ...o });
        else if (o.kind === 'finish' && pending.length) {
          const r = pending.splice(o.which % pending.length, 1)[0];
          record(m, r.label, r.path, r.latency, r.prompt, r.generated);
          want.requests++; want.prompt += r.prompt; want.generated += r.generated; want.latency += r.latency;
        } else if (o.kind === 'scrape') await scrape();
      }
      await scrape();
    }), { numRuns: 300 });
  });
});
