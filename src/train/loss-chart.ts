// The loss curve at the end of a run (train and eval loss against step), as loss.svg and loss.png
// in the output directory: a Vega-Lite spec, compiled by vega-lite, rendered headless to SVG by
// vega's View.toSVG(), then rasterized by @resvg/resvg-js (no browser, no canvas, no native build).
//
// Fonts: the SVG names the font family; resvg draws text only with fonts it can find. We let it
// load the system's fonts and default to DejaVu Sans (what Debian/Ubuntu images carry in
// /usr/share/fonts/truetype/dejavu); where no font exists the PNG still renders, without its
// labels, and the SVG (which a browser renders with its own fonts) is unaffected.
import { writeFileSync } from 'node:fs';
import { Resvg } from '@resvg/resvg-js';
import * as vega from 'vega';
import { compile } from 'vega-lite';
import type { TopLevelSpec } from 'vega-lite';
import type { MetricsRecord } from './metrics-log.ts';

const FONT = 'DejaVu Sans';

export interface LossPoint {
  step: number;
  loss: number;
  series: 'train' | 'eval';
}

export function lossPoints(records: readonly MetricsRecord[]): LossPoint[] {
  const out: LossPoint[] = [];
  for (const r of records) {
    if (Number.isFinite(r.loss)) out.push({ step: r.step, loss: r.loss, series: 'train' });
    if (r.eval_loss !== undefined && Number.isFinite(r.eval_loss)) out.push({ step: r.step, loss: r.eval_loss, series: 'eval' });
  }
  return out;
}

export function lossChartSpec(points: readonly LossPoint[], title: string): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    width: 640,
    height: 360,
    background: 'white',
    config: { font: FONT },
    data: { values: points.map((p) => ({ ...p })) },
    mark: { type: 'line', point: { size: 24 } },
    encoding: {
      x: { field: 'step', type: 'quantitative', title: 'step' },
      y: { field: 'loss', type: 'quantitative', title: 'loss', scale: { zero: false } },
      color: { field: 'series', type: 'nominal', title: null, scale: { domain: ['train', 'eval'] } },
    },
  };
}

export async function lossChartSvg(points: readonly LossPoint[], title = 'loss'): Promise<string> {
  const view = new vega.View(vega.parse(compile(lossChartSpec(points, title)).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

export function svgToPng(svg: string): Uint8Array {
  const resvg = new Resvg(svg, { font: { loadSystemFonts: true, defaultFontFamily: FONT, sansSerifFamily: FONT }, fitTo: { mode: 'zoom', value: 2 } });
  return resvg.render().asPng();
}

// Writes `<base>.svg` and `<base>.png` (e.g. base = <out>/loss).
export async function writeLossChart(records: readonly MetricsRecord[], base: string, title = 'loss'): Promise<{ svg: string; png: string }> {
  const svg = await lossChartSvg(lossPoints(records), title);
  writeFileSync(`${base}.svg`, svg);
  writeFileSync(`${base}.png`, svgToPng(svg));
  return { svg: `${base}.svg`, png: `${base}.png` };
}
