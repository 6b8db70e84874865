// The loss chart: vega-lite → vega SVG → resvg PNG, with its labels drawn.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { lossChartSvg, lossPoints, svgToPng, writeLossChart } from '../../src/train/loss-chart.ts';
import type { MetricsRecord } from '../../src/train/metrics-log.ts';

const dir = mkdtempSync(join(tmpdir(), 'loss-chart-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const records: MetricsRecord[] = Array.from({ length: 20 }, (_, i) => ({
  step: i + 1, loss: 3 * Math.exp(-i / 8) + 0.5, lr: 1e-4, grad_norm: 1, tokens_per_s: 100, ...(i % 5 === 4 ? { eval_loss: 3 * Math.exp(-i / 8) + 0.7 } : {}),
}));

describe('loss chart', () => {
  it('takes train and eval points from the metrics', () => {
    const pts = lossPoints(records);
    expect(pts.filter((p) => p.series === 'train')).toHaveLength(20);
    expect(pts.filter((p) => p.series === 'eval').map((p) => p.step)).toEqual([5, 10, 15, 20]);
  });

  it('writes an SVG with its title and axis labels, and a PNG', async () => {
    const { svg, png } = await writeLossChart(records, join(dir, 'loss'), 'pirate adapter');
    const text = readFileSync(svg, 'utf8');
    expect(text.startsWith('<svg')).toBe(true);
    for (const label of ['pirate adapter', '>step<', '>loss<', '>train<', '>eval<']) expect(text).toContain(label);
    const bytes = readFileSync(png);
    expect([...bytes.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    expect(bytes.readUInt32BE(16)).toBeGreaterThan(600); // IHDR width, rendered at 2×
  });

  // resvg draws text only with a font it finds; this image has DejaVu Sans (loss-chart.ts header)
  it.skipIf(!existsSync('/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf'))('draws the labels into the PNG', async () => {
    const svg = await lossChartSvg(lossPoints(records), 'title');
    const withoutText = svg.replace(/<text[^>]*>[^<]*<\/text>/g, '');
    expect(withoutText).not.toBe(svg);
    expect(Buffer.from(svgToPng(withoutText)).equals(Buffer.from(svgToPng(svg)))).toBe(false);
  });
});
