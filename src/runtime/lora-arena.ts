// LoRA factors of the adapters in use, one copy per adapter SLOT (S-LoRA/vLLM adapter slots): every
// row (a running sequence, lanes.ts) refers to the slot of its adapter version, so rows on the same
// adapter share one copy, and a slot is freed when its last row lets go. A step feeds views of the
// slots it uses, [lo, hi), in place (llama-graph.ts loraLinear): sequences with different adapters,
// ranks or none share one batched step, with no session per adapter and no graph rebuild.
// The factors keep PEFT's layout (the graph multiplies by their transposes), so an adapter is never
// transposed on its way in; per target k:
//   a[k]: [slots, R, in]    A                       (zero rows from the adapter's rank to R)
//   b[k]: [slots, out, R]   s·B                     (zero columns from the rank to R)
//   g[l]: [1 + slots, Σout] DoRA multipliers m/‖W0+ΔW‖ of layer l's targets side by side (row 0 and
//                           plain-LoRA slots: ones); kept only while a DoRA adapter is resident
// Memory follows use: R is the largest rank resident NOW and `slots` the highest slot in use + 1,
// so when a high-rank adapter leaves, the arrays are re-laid out in place at the smaller rank and
// shrunk (steps then cost what the ranks in use cost). Each array is a resizable ArrayBuffer: growing
// copies nothing, shrinking gives the pages back, and a re-layout moves data within pages already
// touched (fresh pages cost ~3 ms/MB on this VM). One freed slot's worth stays committed as a spare,
// so an adapter that replaces the last one does not fault its memory in again. A step whose
// adapters all have a lower rank than the arena's (a rank-64 adapter resident for another lane's
// sequence) is fed narrow copies of its slots at its own rank, kept while the slots do not change.
// `bytes` is what is committed; `maxBytes` bounds it (canHold() says whether an adapter would fit).
// Measured on this VM (110M model, rank 16: 11.2 MB a slot): a new slot ~40 ms (fresh pages), a row
// joining a resident slot ~0; a rank-64 adapter arriving beside 8 rank-16 slots re-lays them out
// at rank 64, ~1 s (400 MB, mostly fresh pages: a budget bounds this), leaving ~0.1 s.
import { ort } from './session.ts';
import { TARGETS, targetShape } from './model-targets.ts';
import type { Target } from './model-targets.ts';
import type { ModelConfig } from './model-config.ts';
import { doraColumns, doraInputName, loraInputNames } from './llama-graph.ts';
import { emptyLoraFeeds, moveColumns, pickBand, tokenFeeds } from './lora-feeds.ts';
import type { LoraTokens } from './lora-feeds.ts';

export interface PreparedTarget {
  layer: number;
  target: Target;
  rank: number;
  a: Float32Array;        // [rank, in]  A, as in the file
  b: Float32Array;        // [out, rank] s·B (the scale folded in)
  g: Float32Array | null; // [out] DoRA multiplier
  delta?: Float32Array;   // [out, in] a merged-only adapter's ΔW (rank 0, a and b empty): merged path only
}

export interface PreparedAdapter {
  version: string;
  rank: number;           // max over targets
  useDora: boolean;
  targets: PreparedTarget[];
  bytes: number;
}

// An adapter kept as merged weights only (ΔW per target, no factors): it never enters the arena, and
// its rows step only on its merged session (scheduler.ts).
export function isMergedOnly(adapter: { targets: readonly { delta?: Float32Array }[] }): boolean {
  return adapter.targets.some((t) => t.delta !== undefined);
}

export interface LoraArenaOptions {
  maxBytes?: number;      // bound on the committed bytes (default: none)
}

interface ResizableArrayBuffer extends ArrayBuffer {
  resize(byteLength: number): void;
}
// Resizable ArrayBuffers are in Node ≥ 20; this TypeScript lib (ES2022) does not declare them.
const Resizable = ArrayBuffer as unknown as new (length: number, opts: { maxByteLength: number }) => ResizableArrayBuffer;
const MAX_BUFFER_BYTES = 2 ** 32; // V8's limit for one resizable buffer here

// One resizable float array; the buffer is reserved (address space only) on first use.
class Region {
  private buf: ResizableArrayBuffer | null = null;
  data = new Float32Array(0);

  constructor(private readonly maxFloats: number) {}

  resize(floats: number): void {
    if (floats === this.data.length) return;
    if (floats > this.maxFloats) throw new Error(`LoRA arena: ${floats * 4} bytes exceed one buffer's ${this.maxFloats * 4}`);
    if (!this.buf) this.buf = new Resizable(0, { maxByteLength: this.maxFloats * 4 });
    this.buf.resize(floats * 4);
    this.data = new Float32Array(this.buf, 0, floats);
  }
}

// The rank a spare slot's pages are kept at when no higher rank stays resident (a common rank).
const SPARE_RANK = 16;

interface Slot {
  adapter: PreparedAdapter;
  refs: number;           // rows that use it
}

interface Dims { layer: number; target: Target; out: number; inDim: number }

export class LoraArena {
  readonly maxBytes: number;
  private readonly dims: Dims[] = [];
  private readonly a: Region[];
  private readonly b: Region[];
  private readonly g: Region[];         // per layer, only while a DoRA slot is resident
  private readonly doraWidth: number;
  private readonly doraOffset: Map<Target, number>;
  private readonly floatsPerRank: number; // Σ (in + out) over targets: one slot's floats per unit of rank
  private slots: (Slot | null)[] = [];
  private readonly byVersion = new Map<string, number>();
  private rowSlot: number[] = [];
  private R = 0;                        // rank the arrays are laid out at
  private cap = 0;                      // slots laid out
  private dora = false;                 // g regions hold [1 + cap, Σout]
  private epoch = 0;                    // bumps on every re-layout or slot write, for cached feeds
  private cached: { key: string; feeds: Record<string, ort.Tensor> } | null = null;
  private narrow: Narrow[] = [];        // copies of slot ranges at a smaller rank, most recent first

  constructor(readonly cfg: ModelConfig, opts: LoraArenaOptions = {}) {
    this.maxBytes = opts.maxBytes ?? Infinity;
    for (let l = 0; l < cfg.numLayers; l++) for (const t of TARGETS) {
      const [out, inDim] = targetShape(cfg, t);
      this.dims.push({ layer: l, target: t, out, inDim });
    }
    this.floatsPerRank = this.dims.reduce((s, d) => s + d.inDim + d.out, 0);
    const { offsets, width } = doraColumns(cfg);
    this.doraWidth = width;
    this.doraOffset = offsets;
    // reserve address space for what each array can hold within the budget (the factors' arrays
    // share it in proportion to their widths; a DoRA table is at most the whole budget)
    const cap = (share: number) => Math.floor(Math.min(MAX_BUFFER_BYTES, Number.isFinite(this.maxBytes) ? this.maxBytes * share + 4096 : MAX_BUFFER_BYTES) / 4);
    this.a = this.dims.map((d) => new Region(cap(d.inDim / this.floatsPerRank)));
    this.b = this.dims.map((d) => new Region(cap(d.out / this.floatsPerRank)));
    this.g = Array.from({ length: cfg.numLayers }, () => new Region(cap(1)));
  }

  // Committed bytes of every array, narrow copies included.
  get bytes(): number {
    return [...this.a, ...this.b, ...this.g].reduce((s, r) => s + r.data.byteLength, 0) + this.narrow.reduce((s, e) => s + narrowBytes(e), 0);
  }

  get rank(): number { return this.R; }
  get slotsInUse(): number { return this.slots.filter((s) => s !== null).length; }

  // Kept for callers that sized rows up front; rows cost nothing until they hold an adapter.
  reserveRows(rows: number): void {
    while (this.rowSlot.length < rows) this.rowSlot.push(-1);
  }

  adapterAt(row: number): PreparedAdapter | null {
    const s = this.rowSlot[row] ?? -1;
    return s >= 0 ? this.slots[s]!.adapter : null;
  }

  slotOf(row: number): number {
    return this.rowSlot[row] ?? -1;
  }

  // Whether setting a row to `adapter` keeps the arena within maxBytes (a resident version is shared).
  canHold(adapter: PreparedAdapter): boolean {
    if (this.byVersion.has(adapter.version)) return true;
    const slot = this.freeSlot();
    return this.neededBytes(Math.max(this.usedCap(), slot + 1), Math.max(this.residentRank(), adapter.rank), this.residentDora() || adapter.useDora) <= this.maxBytes;
  }

  // Put `adapter` (or none) into `row`: the row shares the slot of its version, writing the factors
  // only when the version is not resident yet. Throws when a new slot would exceed maxBytes.
  setRow(row: number, adapter: PreparedAdapter | null): void {
    while (this.rowSlot.length <= row) this.rowSlot.push(-1);
    const prev = this.rowSlot[row];
    if (prev >= 0 && adapter && this.slots[prev]!.adapter.version === adapter.version) return;
    if (adapter && !this.canHold(adapter)) {
      throw new Error(`LoRA arena: adapter ${adapter.version} (rank ${adapter.rank}) does not fit in ${this.maxBytes} bytes (${this.bytes} in use)`);
    }
    // release first, so that a row swapping adapters can reuse its own slot's place
    this.rowSlot[row] = -1;
    if (prev >= 0) this.release(prev);
    if (adapter) this.rowSlot[row] = this.acquire(adapter);
  }

  private acquire(adapter: PreparedAdapter): number {
    const known = this.byVersion.get(adapter.version);
    if (known !== undefined) {
      this.slots[known]!.refs++;
      return known;
    }
    const slot = this.freeSlot();
    // narrow copies give way to slots (canHold counts slots only)
    const need = this.neededBytes(Math.max(this.cap, slot + 1), Math.max(this.R, adapter.rank), this.dora || adapter.useDora);
    if (need + this.narrow.reduce((n, e) => n + narrowBytes(e), 0) > this.maxBytes) this.narrow = [];
    while (this.slots.length <= slot) this.slots.push(null);
    this.slots[slot] = { adapter, refs: 1 };
    this.byVersion.set(adapter.version, slot);
    this.layout(Math.max(this.cap, slot + 1), Math.max(this.R, adapter.rank), this.dora || adapter.useDora);
    this.write(slot, adapter);
    return slot;
  }

  private release(slot: number): void {
    const s = this.slots[slot]!;
    if (--s.refs > 0) return;
    this.slots[slot] = null;
    this.byVersion.delete(s.adapter.version);
    while (this.slots.length && this.slots[this.slots.length - 1] === null) this.slots.pop();
    // one freed slot's worth of pages stays committed (the spare), the rest is given back; the spare
    // is at most a slot at the rank still resident (or SPARE_RANK when none is higher), so after a
    // high-rank adapter leaves the arena follows the ranks in use, not the highest seen
    const spare = Math.min(s.adapter.rank, Math.max(this.residentRank(), SPARE_RANK)) * this.floatsPerRank * 4;
    this.layout(this.usedCap(), this.residentRank(), this.residentDora(), spare);
  }

  private freeSlot(): number {
    const i = this.slots.indexOf(null);
    return i === -1 ? this.slots.length : i;
  }

  private usedCap(): number { return this.slots.length; }
  private residentRank(): number { return this.slots.reduce((m, s) => Math.max(m, s?.adapter.rank ?? 0), 0); }
  private residentDora(): boolean { return this.slots.some((s) => s?.adapter.useDora); }

  private neededBytes(cap: number, R: number, dora: boolean): number {
    return 4 * (cap * R * this.floatsPerRank + (dora ? (1 + cap) * this.doraWidth * this.cfg.numLayers : 0));
  }

  // Re-lays the arrays out for `cap` slots at rank `R`, in place: moving up (a higher rank) runs from
  // the last slot down, moving down from the first slot up, so no value is overwritten before it
  // moves. Padding (ranks below R) stays zero. `spareBytes` of pages may stay committed past the end.
  private layout(cap: number, R: number, dora: boolean, spareBytes = 0): void {
    if (cap === this.cap && R === this.R && dora === this.dora && spareBytes === 0) return;
    const oldR = this.R;
    const moved = Math.min(cap, this.cap);
    const spareShare = (perRank: number) => Math.floor((spareBytes / 4) * (perRank / this.floatsPerRank));
    // floats to keep committed: what the layout needs, plus this array's share of the spare
    const keep = (region: Region, need: number, perRank: number) => Math.max(need, Math.min(region.data.length, need + spareShare(perRank)));
    this.dims.forEach(({ out, inDim }, k) => {
      const a = this.a[k];
      const b = this.b[k];
      a.resize(Math.max(a.data.length, cap * R * inDim));
      b.resize(Math.max(b.data.length, cap * out * R));
      if (R > oldR) {
        for (let s = moved - 1; s >= 0; s--) {
          a.data.copyWithin(s * R * inDim, s * oldR * inDim, (s + 1) * oldR * inDim);
          a.data.fill(0, (s * R + oldR) * inDim, (s + 1) * R * inDim);
        }
      } else if (R < oldR) {
        for (let s = 0; s < moved; s++) a.data.copyWithin(s * R * inDim, s * oldR * inDim, (s * oldR + R) * inDim);
      }
      moveColumns(b.data, moved * out, oldR, R);
      a.resize(keep(a, cap * R * inDim, inDim));
      b.resize(keep(b, cap * out * R, out));
    });
    const gRows = dora ? 1 + cap : 0;
    const oldRows = this.dora ? 1 + this.cap : 0;
    for (const g of this.g) {
      g.resize(Math.max(g.data.length, gRows * this.doraWidth));
      if (gRows > oldRows) g.data.fill(1, oldRows * this.doraWidth, gRows * this.doraWidth); // row 0, new slots: ones
      g.resize(gRows * this.doraWidth);
    }
    // rows past the old layout (a new slot) hold stale values from before a shrink: cleared on write()
    if (R !== this.R || cap < this.cap) this.narrow = [];
    this.cap = cap;
    this.R = R;
    this.dora = dora;
    this.epoch++;
  }

  // Copies an adapter's factors into its slot: A rows [0, rank) and B columns [0, rank) of each
  // target it has, zeros elsewhere; its DoRA multipliers (or ones) into its g rows.
  private write(slot: number, adapter: PreparedAdapter): void {
    const R = this.R;
    this.dims.forEach(({ out, inDim }, k) => {
      this.a[k].data.fill(0, slot * R * inDim, (slot + 1) * R * inDim);
      this.b[k].data.fill(0, slot * out * R, (slot + 1) * out * R);
    });
    if (this.dora) for (const g of this.g) g.data.fill(1, (1 + slot) * this.doraWidth, (2 + slot) * this.doraWidth);
    for (const t of adapter.targets) {
      const k = t.layer * TARGETS.length + TARGETS.indexOf(t.target);
      const { out, inDim } = this.dims[k];
      this.a[k].data.set(t.a, slot * R * inDim);
      const b = this.b[k].data;
      if (t.rank === R) b.set(t.b, slot * out * R);
      else for (let o = 0; o < out; o++) b.set(t.b.subarray(o * t.rank, (o + 1) * t.rank), (slot * out + o) * R);
      if (t.g && this.dora) this.g[t.layer].data.set(t.g, (1 + slot) * this.doraWidth + this.doraOffset.get(t.target)!);
    }
    this.epoch++;
  }

  // The LoRA feeds of one step (llama-graph.ts loraLinear): `rows` are the step's rows (both
  // groups) with their flat token indices; `tokens` is the step's N. Rows without an adapter are in
  // no entry. Band 1 has one entry per slot of [lo, hi), fed in place; rows whose tokens would pad
  // every other entry to their width (a prompt chunk among decode tokens) go to band 0 (pickBand).
  feeds(rows: LoraTokens[], tokens: number): Record<string, ort.Tensor> {
    const withSlot = rows.map((r) => ({ r, slot: this.rowSlot[r.row] ?? -1 })).filter((x) => x.slot >= 0);
    if (withSlot.length === 0) return emptyLoraFeeds(this.cfg);
    const lo = Math.min(...withSlot.map((x) => x.slot));
    const hi = Math.max(...withSlot.map((x) => x.slot)) + 1;
    const picked = pickBand(withSlot, hi - lo);
    const bands = [new Map<number, LoraTokens[]>(), new Map<number, LoraTokens[]>()];
    for (const x of withSlot) {
      const bySlot = bands[picked.has(x) ? 0 : 1];
      let list = bySlot.get(x.slot);
      if (!list) bySlot.set(x.slot, (list = []));
      list.push(x.r);
    }
    const dora = withSlot.some((x) => this.slots[x.slot]!.adapter.useDora);
    const rank = Math.max(...withSlot.map((x) => this.slots[x.slot]!.adapter.rank));
    const feeds = { ...this.viewFeeds(lo, hi, rank, dora) };
    const inPlace = Array.from({ length: hi - lo }, (_, e) => lo + e);
    const chosen = [...bands[0].keys()].sort((x, y) => x - y);
    Object.assign(feeds, tokenFeeds({ entries: inPlace, bySlot: bands[1] }, { entries: chosen, bySlot: bands[0] }, tokens));
    feeds.lora_pick = new ort.Tensor('int64', BigInt64Array.from(chosen, (s) => BigInt(s - lo)), [chosen.length]);
    if (dora) {
      const index = new BigInt64Array(tokens);
      for (const { r, slot } of withSlot) index.fill(BigInt(1 + slot), r.first, r.first + r.count);
      feeds.lora_g_index = new ort.Tensor('int64', index, [tokens]);
    }
    return feeds;
  }

  // The factor views of slots [lo, hi) at rank r (and the DoRA tables), reused while nothing
  // changes: the arena in place when r is its rank, else narrow copies (narrowCopy).
  private viewFeeds(lo: number, hi: number, r: number, dora: boolean): Record<string, ort.Tensor> {
    const key = `${lo}:${hi}:${r}:${dora}:${this.epoch}`;
    if (this.cached?.key === key) return this.cached.feeds;
    const narrow = r < this.R ? this.narrowCopy(lo, hi, r) : null;
    const R = narrow ? r : this.R;
    const n = hi - lo;
    const feeds: Record<string, ort.Tensor> = {};
    this.dims.forEach(({ layer, target, out, inDim }, k) => {
      const names = loraInputNames(layer, target);
      const a = narrow ? narrow.a[k].subarray(0, n * R * inDim) : this.a[k].data.subarray(lo * R * inDim, hi * R * inDim);
      const b = narrow ? narrow.b[k].subarray(0, n * out * R) : this.b[k].data.subarray(lo * out * R, hi * out * R);
      feeds[names.a] = new ort.Tensor('float32', a, [n, R, inDim]);
      feeds[names.b] = new ort.Tensor('float32', b, [n, out, R]);
    });
    const ones = emptyLoraFeeds(this.cfg);
    for (let l = 0; l < this.cfg.numLayers; l++) {
      const name = doraInputName(l);
      feeds[name] = dora ? new ort.Tensor('float32', this.g[l].data, [1 + this.cap, this.doraWidth]) : ones[name];
    }
    if (!dora) feeds.lora_g_index = ones.lora_g_index;
    this.cached = { key, feeds };
    return feeds;
  }

  // Slots [lo, hi) copied at rank r < R, so that a step whose adapters are all of lower rank than
  // one resident elsewhere reads what its own ranks need (a rank-4 step beside a resident rank-64
  // adapter: ~6-13% slower on the padded views, 110M model). Kept for the last NARROW_KEEP keys
  // (lanes step in turn) until the slots change; buffers are reused, so a steady state copies
  // nothing; dropped on a re-layout. Not made when it would take the arena past maxBytes.
  private narrowCopy(lo: number, hi: number, r: number): Narrow | null {
    const key = `${lo}:${hi}:${r}:${this.epoch}`;
    const hit = this.narrow.findIndex((e) => e.key === key);
    if (hit >= 0) {
      const [entry] = this.narrow.splice(hit, 1);
      this.narrow.unshift(entry);
      return entry;
    }
    const n = hi - lo;
    const fits = (e: Narrow | undefined) => e !== undefined && this.dims.every((d, k) => e.a[k].length >= n * r * d.inDim && e.b[k].length >= n * d.out * r);
    const recycled = this.narrow.length >= NARROW_KEEP ? this.narrow.pop() : undefined;
    let entry: Narrow;
    if (recycled && fits(recycled)) entry = { ...recycled, key };
    else {
      const freed = recycled ? narrowBytes(recycled) : 0;
      if (this.bytes - freed + 4 * n * r * this.floatsPerRank > this.maxBytes) {
        if (recycled) this.narrow.push(recycled);
        return null;
      }
      entry = { key, a: this.dims.map((d) => new Float32Array(n * r * d.inDim)), b: this.dims.map((d) => new Float32Array(n * d.out * r)) };
    }
    const R = this.R;
    this.dims.forEach(({ out, inDim }, k) => {
      const a = this.a[k].data;
      const b = this.b[k].data;
      const na = entry.a[k];
      const nb = entry.b[k];
      for (let e = 0; e < n; e++) {
        const s = lo + e;
        na.set(a.subarray(s * R * inDim, (s * R + r) * inDim), e * r * inDim); // A's first r rows
        for (let o = 0; o < out; o++) {
          const src = (s * out + o) * R;
          const dst = (e * out + o) * r;
          for (let j = 0; j < r; j++) nb[dst + j] = b[src + j];                 // B's first r columns
        }
      }
    });
    this.narrow.unshift(entry);
    return entry;
  }
}

// A narrow copy (LoraArena.narrowCopy): per target, A [n, r, in] and B [n, out, r] from index 0.
interface Narrow { key: string; a: Float32Array[]; b: Float32Array[] }
const NARROW_KEEP = 2;
const narrowBytes = (e: Narrow): number => [...e.a, ...e.b].reduce((s, x) => s + x.byteLength, 0);
