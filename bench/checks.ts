// A benchmark's checks: a figure measured in a run against the bound a target states. Printed and
// saved with the run, never asserted (bench/serving-suite.ts makes them, bench/report.ts writes them).
export interface Check {
  id: string;
  claim: string;           // the target, in words
  measured: number;        // the figure compared with the bound (a ratio, or ms)
  op: '>=' | '<=';
  bound: number;
  unit: string;            // '×' for ratios, 'ms'
  met: boolean | null;     // null: not measurable in this run (e.g. no /metrics)
  detail: string;          // what the figure was computed from
}

export function check(id: string, claim: string, measured: number, op: Check['op'], bound: number, unit: string, detail: string): Check {
  const met = Number.isFinite(measured) ? (op === '>=' ? measured >= bound : measured <= bound) : null;
  return { id, claim, measured, op, bound, unit, met, detail };
}

// A check's figure: 2 decimals for a ratio, 0–1 for ms; more where that would round it onto its bound.
export function checkFigure(c: Pick<Check, 'measured' | 'bound' | 'unit'>): string {
  if (!Number.isFinite(c.measured)) return 'n/a';
  let d = c.unit === 'ms' ? (c.measured >= 100 ? 0 : 1) : 2;
  while (d < 4 && c.measured !== c.bound && Number(c.measured.toFixed(d)) === c.bound) d++;
  return `${c.measured.toFixed(d)}${c.unit === 'ms' ? ' ms' : '×'}`;
}

export const checkTarget = (c: Pick<Check, 'op' | 'bound' | 'unit'>): string => `${c.op === '>=' ? '≥' : '≤'} ${c.bound}${c.unit === 'ms' ? ' ms' : '×'}`;
