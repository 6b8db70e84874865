// The LoRA arena's feeds as pure functions (lora-arena.ts keeps the slots; llama-graph.ts
// loraLinear reads these inputs): which rows go to which band, each band's token index feeds, the
// feeds of a step without adapters, and moving B's columns in place when the arena's rank changes.
import { ort } from './session.ts';
import { TARGETS, targetShape } from './model-targets.ts';
import type { ModelConfig } from './model-config.ts';
import { doraColumns, doraInputName, loraInputNames } from './llama-graph.ts';

// The tokens of one step row, for the LoRA feeds: flat token indices [first, first + count).
export interface LoraTokens {
  row: number;
  first: number;
  count: number;
}

// Which rows go to band 0 (their slots' factors copied, their tokens padded only among
// themselves) rather than band 1 (every slot of the view padded to the widest slot's tokens).
// Costs in token-equivalents of the delta: each padded band-1 token, and per band-0 entry its
// tokens plus the copy of its factors (~FACTOR_COPY tokens: measured, a factor read costs ~5
// tokens' delta and a Gather's copy a few reads, more when its output pages are fresh). Tried:
// moving the 0..MAX_PICKED longest rows; ties keep rows in band 1.
const FACTOR_COPY = 20;
const MAX_PICKED = 4;

export function pickBand<T extends { r: LoraTokens; slot: number }>(rows: T[], entries: number): Set<T> {
  const longest = rows.filter((x) => x.r.count > 1).sort((a, b) => b.r.count - a.r.count).slice(0, MAX_PICKED);
  const cost = (picked: Set<T>): number => {
    const width = new Map<number, number>();
    const band0 = new Map<number, number>();
    for (const x of rows) {
      const m = picked.has(x) ? band0 : width;
      m.set(x.slot, (m.get(x.slot) ?? 0) + x.r.count);
    }
    const m1 = Math.max(1, ...width.values());
    const m0 = Math.max(0, ...band0.values());
    return entries * m1 + band0.size * (FACTOR_COPY + m0);
  };
  let best = new Set<T>();
  let bestCost = cost(best);
  for (let j = 1; j <= longest.length; j++) {
    const picked = new Set(longest.slice(0, j));
    const c = cost(picked);
    if (c < bestCost) { best = picked; bestCost = c; }
  }
  return best;
}

// B [rows, oldR] → [rows, R] in place (rows = slots · out): columns past R are dropped, new ones
// are zero. Moving down runs forward, moving up backward, so nothing is overwritten before it moves.
export function moveColumns(b: Float32Array, rows: number, oldR: number, R: number): void {
  if (R === oldR || rows === 0) return;
  if (R < oldR) {
    for (let r = 0; r < rows; r++) {
      const src = r * oldR;
      const dst = r * R;
      for (let j = 0; j < R; j++) b[dst + j] = b[src + j];
    }
  } else {
    for (let r = rows - 1; r >= 0; r--) {
      const src = r * oldR;
      const dst = r * R;
      for (let j = oldR - 1; j >= 0; j--) b[dst + j] = b[src + j];
      b.fill(0, dst + oldR, dst + R);
    }
  }
}

// The token feeds of both bands. Band g's entry e holds the flat token indices of the rows on slot
// bands[g].entries[e], padded to the band's widest entry with N (x's zero row): lora_x.g
// [E_g, m_g]. lora_src [N] gives each token the row of its delta among the bands' deltas stacked
// band 1 first, then band 0, then a zero row (llama-graph.ts loraLinear); a token in no entry gets
// the zero row.
export interface BandTokens {
  entries: number[];                  // slots, in entry order
  bySlot: Map<number, LoraTokens[]>;  // the rows on each slot
}

export function tokenFeeds(band1: BandTokens, band0: BandTokens, tokens: number): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  const widthOf = ({ entries, bySlot }: BandTokens): number =>
    Math.max(1, ...entries.map((s) => (bySlot.get(s) ?? []).reduce((n, r) => n + r.count, 0)));
  const w1 = widthOf(band1);
  const w0 = widthOf(band0);
  const zeroRow = band1.entries.length * w1 + band0.entries.length * w0;
  const src = new BigInt64Array(tokens).fill(BigInt(zeroRow));
  const fill = (g: number, { entries, bySlot }: BandTokens, width: number, offset: number): void => {
    const x = new BigInt64Array(entries.length * width).fill(BigInt(tokens));
    entries.forEach((s, e) => {
      let i = e * width;
      for (const r of bySlot.get(s) ?? []) {
        for (let t = 0; t < r.count; t++, i++) {
          x[i] = BigInt(r.first + t);
          src[r.first + t] = BigInt(offset + i);
        }
      }
    });
    feeds[`lora_x.${g}`] = new ort.Tensor('int64', x, [entries.length, width]);
  };
  fill(1, band1, w1, 0);
  fill(0, band0, w0, band1.entries.length * w1);
  feeds.lora_src = new ort.Tensor('int64', src, [tokens]);
  return feeds;
}

const EMPTY = new Map<string, Record<string, ort.Tensor>>();

// The LoRA feeds of a step without adapters: no entries, rank 0, DoRA multipliers of one, and one
// lora_src index [0] (the zero row, broadcast over every token, as lora_g_index is). Shared.
export function emptyLoraFeeds(cfg: ModelConfig): Record<string, ort.Tensor> {
  const key = `${cfg.numLayers}:${cfg.hiddenSize}:${cfg.intermediateSize}:${cfg.numHeads}:${cfg.numKvHeads}:${cfg.headDim}`;
  let feeds = EMPTY.get(key);
  if (!feeds) {
    feeds = {};
    const { width } = doraColumns(cfg);
    const ones = new ort.Tensor('float32', new Float32Array(width).fill(1), [1, width]);
    for (let l = 0; l < cfg.numLayers; l++) {
      for (const t of TARGETS) {
        const [out, inDim] = targetShape(cfg, t);
        const n = loraInputNames(l, t);
        feeds[n.a] = new ort.Tensor('float32', new Float32Array(0), [0, 0, inDim]);
        feeds[n.b] = new ort.Tensor('float32', new Float32Array(0), [0, out, 0]);
      }
      feeds[doraInputName(l)] = ones;
    }
    for (let g = 0; g < 2; g++) feeds[`lora_x.${g}`] = new ort.Tensor('int64', new BigInt64Array(0), [0, 1]);
    feeds.lora_src = new ort.Tensor('int64', new BigInt64Array(1), [1]);
    feeds.lora_pick = new ort.Tensor('int64', new BigInt64Array(0), [0]);
    feeds.lora_g_index = new ort.Tensor('int64', new BigInt64Array(1), [1]);
    EMPTY.set(key, feeds);
  }
  return feeds;
}
