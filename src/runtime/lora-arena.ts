// LoRA factors of every running sequence, one row per sequence (the row of its KV cache), so that
// a step over rows [lo, hi) feeds views of these arrays: sequences with different adapters, ranks
// or none share one batched step (S-LoRA/Punica), with no session per adapter and no graph rebuild.
// The factors keep PEFT's layout (the graph multiplies by their transposes, llama-graph.ts), so an
// adapter is never transposed on its way in:
//   a[l,t]: [rows, R, in]    A                       (zero rows from the adapter's rank to R)
//   b[l,t]: [rows, out, R]   s·B                     (zero columns from the rank to R)
//   g[l,t]: [rows, 1, out]   DoRA multiplier m/‖W0+ΔW‖ (ones for plain LoRA)
// R is the largest rank among the rows; a step with no adapter feeds R = 0.
import { ort } from './session.ts';
import { TARGETS, targetShape } from './model-targets.ts';
import type { Target } from './model-targets.ts';
import type { ModelConfig } from './model-config.ts';

export interface PreparedTarget {
  layer: number;
  target: Target;
  rank: number;
  a: Float32Array;        // [rank, in]  A, as in the file
  b: Float32Array;        // [out, rank] s·B (the scale folded in)
  g: Float32Array | null; // [out] DoRA multiplier
}

export interface PreparedAdapter {
  version: string;
  rank: number;           // max over targets
  useDora: boolean;
  targets: PreparedTarget[];
  bytes: number;
}

export function loraInputNames(group: number, l: number, t: Target): { a: string; b: string; g: string } {
  return { a: `lora_a.${group}.${l}.${t}`, b: `lora_b.${group}.${l}.${t}`, g: `lora_g.${group}.${l}.${t}` };
}

const EMPTY = new Map<string, Record<string, ort.Tensor>>();

// Rank-0 factors for a group without adapters: the delta costs nothing.
export function emptyLoraFeeds(cfg: ModelConfig, group: number): Record<string, ort.Tensor> {
  const key = `${group}:${cfg.numLayers}:${cfg.hiddenSize}:${cfg.intermediateSize}:${cfg.numHeads}:${cfg.numKvHeads}:${cfg.headDim}`;
  let feeds = EMPTY.get(key);
  if (!feeds) {
    feeds = {};
    const one = new ort.Tensor('float32', Float32Array.of(1), [1, 1, 1]);
    for (let l = 0; l < cfg.numLayers; l++) for (const t of TARGETS) {
      const [out, inDim] = targetShape(cfg, t);
      const n = loraInputNames(group, l, t);
      feeds[n.a] = new ort.Tensor('float32', new Float32Array(0), [1, 0, inDim]);
      feeds[n.b] = new ort.Tensor('float32', new Float32Array(0), [1, out, 0]);
      feeds[n.g] = one;
    }
    EMPTY.set(key, feeds);
  }
  return feeds;
}

export class LoraArena {
  private rows = 0;
  private minRows = 0;
  private R = 0;
  private a: Float32Array[] = [];
  private b: Float32Array[] = [];
  private g: Float32Array[] = [];
  private rowAdapter: (PreparedAdapter | null)[] = [];
  private readonly dims: { layer: number; target: Target; out: number; inDim: number }[] = [];

  constructor(readonly cfg: ModelConfig) {
    for (let l = 0; l < cfg.numLayers; l++) for (const t of TARGETS) {
      const [out, inDim] = targetShape(cfg, t);
      this.dims.push({ layer: l, target: t, out, inDim });
    }
  }

  get bytes(): number {
    return [...this.a, ...this.b, ...this.g].reduce((s, a) => s + a.byteLength, 0);
  }

  // Rows for the whole batch up front, so setting a row never reallocates (see lanes.ts).
  reserveRows(rows: number): void {
    if (this.R > 0) this.ensure(rows, this.R);
    else this.minRows = Math.max(this.minRows, rows);
  }

  adapterAt(row: number): PreparedAdapter | null {
    return this.rowAdapter[row] ?? null;
  }

  // Put `adapter` (or none) into `row`: a copy of its factors, zero-padded to the arena's rank.
  setRow(row: number, adapter: PreparedAdapter | null): void {
    while (this.rowAdapter.length <= row) this.rowAdapter.push(null);
    const prev = this.rowAdapter[row];
    this.rowAdapter[row] = adapter;
    if (!adapter && !prev) return;
    this.ensure(Math.max(row + 1, this.rows, this.minRows), Math.max(this.R, adapter?.rank ?? 0));
    const R = this.R;
    this.dims.forEach(({ out, inDim }, k) => {
      this.a[k].fill(0, row * R * inDim, (row + 1) * R * inDim);
      this.b[k].fill(0, row * out * R, (row + 1) * out * R);
      this.g[k].fill(1, row * out, (row + 1) * out);
    });
    if (!adapter) return;
    for (const t of adapter.targets) {
      const k = t.layer * TARGETS.length + TARGETS.indexOf(t.target);
      const { out, inDim } = this.dims[k];
      this.a[k].set(t.a, row * R * inDim); // rows k ≥ t.rank stay zero
      const b = this.b[k];
      if (t.rank === R) b.set(t.b, row * out * R);
      else for (let o = 0; o < out; o++) b.set(t.b.subarray(o * t.rank, (o + 1) * t.rank), (row * out + o) * R);
      if (t.g) this.g[k].set(t.g, row * out);
    }
  }

  private ensure(rows: number, R: number): void {
    if (rows <= this.rows && R <= this.R) return;
    const newRows = rows > this.rows ? Math.max(rows, Math.ceil(this.rows * 1.5)) : this.rows;
    const oldR = this.R;
    this.dims.forEach(({ out, inDim }, k) => {
      const a = new Float32Array(newRows * R * inDim);
      const b = new Float32Array(newRows * out * R);
      const g = new Float32Array(newRows * out).fill(1);
      for (let r = 0; r < this.rows; r++) {
        a.set(this.a[k].subarray(r * oldR * inDim, (r + 1) * oldR * inDim), r * R * inDim);
        for (let o = 0; o < out; o++) b.set(this.b[k].subarray((r * out + o) * oldR, (r * out + o + 1) * oldR), (r * out + o) * R);
        g.set(this.g[k].subarray(r * out, (r + 1) * out), r * out);
      }
      this.a[k] = a;
      this.b[k] = b;
      this.g[k] = g;
    });
    this.rows = newRows;
    this.R = R;
  }

  // Feeds for step group `group` over rows [lo, hi).
  feeds(lo: number, hi: number, group: number): Record<string, ort.Tensor> {
    let any = false;
    let dora = false;
    for (let r = lo; r < hi; r++) {
      const a = this.rowAdapter[r];
      if (a) { any = true; dora ||= a.useDora; }
    }
    if (!any) return emptyLoraFeeds(this.cfg, group);
    this.ensure(hi, this.R); // rows past the last adapter row may not be allocated yet
    const feeds: Record<string, ort.Tensor> = {};
    const one = new ort.Tensor('float32', Float32Array.of(1), [1, 1, 1]);
    const n = hi - lo;
    const R = this.R;
    this.dims.forEach(({ layer, target, out, inDim }, k) => {
      const names = loraInputNames(group, layer, target);
      feeds[names.a] = new ort.Tensor('float32', this.a[k].subarray(lo * R * inDim, hi * R * inDim), [n, R, inDim]);
      feeds[names.b] = new ort.Tensor('float32', this.b[k].subarray(lo * out * R, hi * out * R), [n, out, R]);
      feeds[names.g] = dora ? new ort.Tensor('float32', this.g[k].subarray(lo * out, hi * out), [n, 1, out]) : one;
    });
    return feeds;
  }
}
