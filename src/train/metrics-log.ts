// The run's metrics as JSON lines (metrics.jsonl in the output directory), one record per logged
// step, appended as they come so a crashed run keeps its history; loss-chart.ts reads it back.
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';

export const METRICS_FILE = 'metrics.jsonl';

export interface MetricsRecord {
  step: number;
  loss: number;          // mean train loss over the step's target tokens
  lr: number;
  grad_norm: number;     // before clipping
  tokens_per_s: number;
  eval_loss?: number;    // on the steps that evaluated
}

export class MetricsLog {
  constructor(readonly path: string) {}

  append(record: MetricsRecord): void {
    appendFileSync(this.path, `${JSON.stringify(record)}\n`);
  }

  read(): MetricsRecord[] {
    return readMetrics(this.path);
  }

  // A resumed run drops the records after its checkpoint's step: those steps are trained again.
  truncateAfter(step: number): void {
    const kept = this.read().filter((r) => r.step <= step);
    writeFileSync(this.path, kept.map((r) => `${JSON.stringify(r)}\n`).join(''));
  }
}

export function readMetrics(path: string): MetricsRecord[] {
  if (!existsSync(path)) return [];
  const out: MetricsRecord[] = [];
  readFileSync(path, 'utf8').split('\n').forEach((l, i) => {
    if (l.trim() === '') return;
    try {
      out.push(JSON.parse(l) as MetricsRecord);
    } catch (e) {
      throw new Error(`${path}:${i + 1}: not valid JSON (${(e as Error).message})`);
    }
  });
  return out;
}
