// Folding one label value's series into another's, for prom-client counters and histograms.
//
// A Prometheus counter (and every part of a histogram: each bucket, _sum, _count) must never decrease.
// Deleting a series (`remove`) takes its history away from every sum over the label, so when a label
// value is retired (an adapter leaves the top-N), its series is added into the value that takes its
// traffic ("other") and only then removed: the sum over all label values stays exactly what it was.
//
// prom-client has no public way to add a whole series to another (a histogram takes one observation
// at a time, and `get()` is async), so this reads and writes the metric's `hashMap`: one entry per
// label set, `{labels, value}` for a counter and `{labels, bucketValues, sum, count}` for a histogram
// (prom-client 15, pinned in package.json). The shape is checked before anything is changed, and the
// metrics test reads the result back through the public registry.
import { Counter, Histogram } from 'prom-client';

type Labels = Record<string, string | number>;
interface CounterEntry { labels: Labels; value: number }
interface HistogramEntry { labels: Labels; bucketValues: Record<string, number>; sum: number; count: number }

function hashMapOf(metric: Counter<string> | Histogram<string>): Record<string, unknown> {
  const map = (metric as unknown as { hashMap?: unknown }).hashMap;
  if (typeof map !== 'object' || map === null) throw new Error(`metric-fold: ${metric.constructor.name} has no hashMap (prom-client changed?)`);
  return map as Record<string, unknown>;
}

function isCounterEntry(e: unknown): e is CounterEntry {
  return typeof e === 'object' && e !== null && typeof (e as CounterEntry).value === 'number' && typeof (e as CounterEntry).labels === 'object';
}

function isHistogramEntry(e: unknown): e is HistogramEntry {
  const h = e as HistogramEntry;
  return typeof e === 'object' && e !== null && typeof h.labels === 'object' && typeof h.bucketValues === 'object' && typeof h.sum === 'number' && typeof h.count === 'number';
}

const keyOf = (labels: Labels): string => JSON.stringify(Object.keys(labels).sort().map((k) => [k, String(labels[k])]));

function find(map: Record<string, unknown>, labels: Labels): unknown {
  const key = keyOf(labels);
  for (const e of Object.values(map)) if (typeof e === 'object' && e !== null && keyOf((e as { labels: Labels }).labels) === key) return e;
  return undefined;
}

/**
 * Moves every series whose `label` has a value that `keep` rejects into the series with `label` = `into`
 * (the other labels unchanged), adding counter values, or histogram buckets, sum and count, then removes
 * the moved series. Series already labelled `into` stay.
 */
export function foldLabel(metric: Counter<string> | Histogram<string>, label: string, keep: (value: string) => boolean, into: string): void {
  const map = hashMapOf(metric);
  const histogram = metric instanceof Histogram;
  for (const [hash, entry] of Object.entries(map)) {
    if (histogram ? !isHistogramEntry(entry) : !isCounterEntry(entry)) throw new Error(`metric-fold: unexpected ${histogram ? 'histogram' : 'counter'} entry shape (prom-client changed?)`);
    const e = entry as CounterEntry | HistogramEntry;
    const value = e.labels[label];
    if (value === undefined || String(value) === into || keep(String(value))) continue;
    const target: Labels = { ...e.labels, [label]: into };
    if (histogram) {
      const h = metric as Histogram<string>;
      if (find(map, target) === undefined) h.zero(target);
      const dst = find(map, target) as HistogramEntry;
      const src = e as HistogramEntry;
      for (const [bound, n] of Object.entries(src.bucketValues)) dst.bucketValues[bound] = (dst.bucketValues[bound] ?? 0) + n;
      dst.sum += src.sum;
      dst.count += src.count;
    } else {
      const c = metric as Counter<string>;
      c.inc(target, 0); // creates the target series if missing, adds nothing
      (find(map, target) as CounterEntry).value += (e as CounterEntry).value;
    }
    delete map[hash];
  }
}
