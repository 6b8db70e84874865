// runStep: one session run over two groups of arena rows (llama-graph.ts): group 0 for prompt
// chunks, group 1 for decode tokens, so a prefill chunk rides in the decode step's pass over the
// weights. Per group it builds the feeds (ids, positions, mask, KV views of rows [lo, hi) of the
// group's lane), runs the graph, writes the new KV rows and returns the requested logits rows. This
// is the only forward pass of the runtime. Rows in [lo, hi) that are not in the step ride along as
// masked dummies, so the KV arenas are always fed in place. The LoRA feeds are built once per step
// for both groups (lora-arena.ts): each row's flat token indices go to its adapter slot's entry, so
// the factors of an adapter are read once per band however many rows use it.
import { ort } from './session.ts';
import type { ModelConfig } from './model-config.ts';
import type { KvArena } from './kv-arena.ts';
import { emptyLoraFeeds } from './lora-feeds.ts';
import type { LoraTokens } from './lora-feeds.ts';
import type { LoraArena } from './lora-arena.ts';

export interface StepRow {
  row: number;             // arena row (KV cache and LoRA factors)
  tokens: number[];        // new tokens (a prefill chunk, or one decode token)
  allLogits?: boolean;     // logits for every new position instead of the last one only
  hidden?: boolean;        // the final hidden states of every new position too (embeddings)
}

export interface StepGroup {
  rows: StepRow[];
  kv: KvArena;
  lora: LoraArena | null;
}

export interface StepResult {
  logits: Float32Array;    // [rows, V]: group 0's rows then group 1's, each its last (or all) positions
  lse: Float32Array | null; // [rows]: log Σ exp of each logits row (null: a graph without that output)
  rowOffsets: number[];    // first logits row of each StepRow, in the same order
  vocabSize: number;
  hidden: Float32Array;    // [H, D]: the hidden states of the rows that asked (StepRow.hidden), in order
  hiddenOffsets: number[]; // first hidden row of each StepRow (-1: it did not ask)
  hiddenSize: number;      // D
}

export interface StepOptions {
  session?: ort.InferenceSession;                   // a merged-weights session instead of the main one
  lane?: { kv: KvArena; lora: LoraArena | null };  // the arenas of the rows (default: the runner's own)
}

const MASKED = -1e9;

// Reused staging buffers: fresh pages are expensive (onnxruntime-node notes §0), so grow, never shrink.
class Staging {
  private bufs = new Map<string, Float32Array>();
  get(key: string, size: number): Float32Array {
    let b = this.bufs.get(key);
    if (!b || b.length < size) {
      b = new Float32Array(Math.max(size, Math.ceil((b?.length ?? 0) * 1.5)));
      this.bufs.set(key, b);
    }
    return b.subarray(0, size);
  }
}

interface GroupLayout { lo: number; B: number; S: number; offset: number }

export class StepRunner {
  private readonly staging = new Staging();
  private readonly rep: number;
  private readonly loraInputs = new WeakMap<ort.InferenceSession, boolean>();
  private readonly hiddenInputs = new WeakMap<ort.InferenceSession, boolean>();

  constructor(
    private readonly session: ort.InferenceSession,
    private readonly cfg: ModelConfig,
    readonly maxPositions: number,
    readonly kv: KvArena | null = null,       // default arenas (tests, benchmarks); the scheduler passes lanes
    readonly lora: LoraArena | null = null,
  ) {
    this.rep = cfg.numHeads / cfg.numKvHeads;
  }

  // One group of rows (tests, benchmarks).
  run(rows: StepRow[], opts: StepOptions = {}): Promise<StepResult> {
    const kv = opts.lane?.kv ?? this.kv;
    if (!kv) throw new Error('runStep: no KV arena');
    return this.runGroups([{ rows, kv, lora: opts.lane ? opts.lane.lora : this.lora }, null], opts.session);
  }

  async runGroups(groups: [StepGroup | null, StepGroup | null], mergedSession?: ort.InferenceSession): Promise<StepResult> {
    const session = mergedSession ?? this.session;
    let withLora = this.loraInputs.get(session);
    if (withLora === undefined) this.loraInputs.set(session, (withLora = session.inputNames.includes('lora_pick')));
    const feeds: Record<string, ort.Tensor> = {};
    const layouts: (GroupLayout | null)[] = [];
    const logitRows: number[] = [];
    const rowOffsets: number[] = [];
    const hiddenRows: number[] = [];
    const hiddenOffsets: number[] = [];
    let offset = 0;
    groups.forEach((group, g) => {
      const layout = group && group.rows.length ? this.groupFeeds(g, group, offset, feeds, logitRows, rowOffsets, hiddenRows, hiddenOffsets) : null;
      if (!layout) this.emptyGroupFeeds(g, feeds);
      layouts.push(layout);
      offset += layout ? layout.B * layout.S : 0;
    });
    if (withLora) Object.assign(feeds, this.loraFeeds(groups, layouts, offset));
    feeds.group_sizes = new ort.Tensor('int64', BigInt64Array.from(layouts.map((l) => BigInt(l ? l.B * l.S : 0))), [layouts.length]);
    feeds.logit_rows = new ort.Tensor('int64', BigInt64Array.from(logitRows.map(BigInt)), [logitRows.length]);
    if (this.hiddenInput(session)) feeds.hidden_rows = new ort.Tensor('int64', BigInt64Array.from(hiddenRows.map(BigInt)), [hiddenRows.length]);
    else if (hiddenRows.length) throw new Error('runStep: this session has no hidden-state output');

    const out = await session.run(feeds);

    groups.forEach((group, g) => {
      const layout = layouts[g];
      if (!group || !layout) return;
      for (let l = 0; l < this.cfg.numLayers; l++) {
        const nk = out[`new_key.${l}`].data as Float32Array;
        const nv = out[`new_value.${l}`].data as Float32Array;
        for (const r of group.rows) group.kv.write(l, r.row, nk, nv, layout.offset + (r.row - layout.lo) * layout.S, r.tokens.length);
      }
      for (const r of group.rows) group.kv.lengths[r.row] += r.tokens.length;
    });
    return { logits: out.logits.data as Float32Array, lse: (out.logits_lse?.data as Float32Array | undefined) ?? null, rowOffsets, vocabSize: this.cfg.vocabSize, hidden: (out.hidden?.data as Float32Array | undefined) ?? new Float32Array(0), hiddenOffsets, hiddenSize: this.cfg.hiddenSize };
  }

  // Whether a session's graph has the hidden-state output (graphs built before it had none).
  private hiddenInput(session: ort.InferenceSession): boolean {
    let has = this.hiddenInputs.get(session);
    if (has === undefined) this.hiddenInputs.set(session, (has = session.inputNames.includes('hidden_rows')));
    return has;
  }

  // Both groups' rows share one LoRA arena (the scheduler's, or the runner's own): each row's
  // tokens go to its adapter slot's entry (lora-arena.ts); rows without an arena have no adapter.
  private loraFeeds(groups: [StepGroup | null, StepGroup | null], layouts: (GroupLayout | null)[], tokens: number): Record<string, ort.Tensor> {
    let arena: LoraArena | null = null;
    const rows: LoraTokens[] = [];
    for (let g = 0; g < groups.length; g++) {
      const group = groups[g];
      const layout = layouts[g];
      if (!group?.lora || !layout) continue;
      if (arena && arena !== group.lora) throw new Error('runStep: the two groups of a step must share one LoRA arena');
      arena = group.lora;
      for (const r of group.rows) rows.push({ row: r.row, first: layout.offset + (r.row - layout.lo) * layout.S, count: r.tokens.length });
    }
    return arena ? arena.feeds(rows, tokens) : emptyLoraFeeds(this.cfg);
  }

  private groupFeeds(g: number, group: StepGroup, offset: number, feeds: Record<string, ort.Tensor>, logitRows: number[], rowOffsets: number[], hiddenRows: number[], hiddenOffsets: number[]): GroupLayout {
    const { cfg, rep } = this;
    const { kv, rows } = group;
    const lo = Math.min(...rows.map((r) => r.row));
    const hi = Math.max(...rows.map((r) => r.row)) + 1;
    const B = hi - lo;
    const S = Math.max(...rows.map((r) => r.tokens.length));
    for (const r of rows) {
      const need = (kv.lengths[r.row] ?? 0) + r.tokens.length;
      if (r.tokens.length === 0) throw new Error('runStep: a row has no tokens');
      if (need > this.maxPositions) throw new Error(`runStep: position ${need} exceeds the context of ${this.maxPositions}`);
      if (need > kv.capacity) throw new Error(`runStep: row ${r.row} needs ${need} positions; its arena holds ${kv.capacity}`);
    }
    kv.ensure(hi);
    // past width: the arena capacity (fed in place), or 0 when no row has a past yet
    const P = rows.some((r) => kv.lengths[r.row] > 0) ? kv.capacity : 0;
    const T = P + S;

    const ids = new BigInt64Array(B * S);
    const pos = new BigInt64Array(B * S);
    const bias = this.staging.get(`bias.${g}`, B * rep * S * T).fill(MASKED);
    for (const r of rows) {
      const b = r.row - lo;
      const past = kv.lengths[r.row];
      const n = r.tokens.length;
      for (let i = 0; i < n; i++) {
        ids[b * S + i] = BigInt(r.tokens[i]);
        pos[b * S + i] = BigInt(past + i);
      }
      // query i of row b sees its own past [0, past) and the new keys [P, P + i]
      for (let h = 0; h < rep; h++) {
        for (let i = 0; i < n; i++) {
          const base = ((b * rep + h) * S + i) * T;
          bias.fill(0, base, base + past);
          bias.fill(0, base + P, base + P + i + 1);
        }
      }
      rowOffsets.push(logitRows.length);
      if (r.allLogits) for (let i = 0; i < n; i++) logitRows.push(offset + b * S + i);
      else logitRows.push(offset + b * S + n - 1);
      hiddenOffsets.push(r.hidden ? hiddenRows.length : -1);
      if (r.hidden) for (let i = 0; i < n; i++) hiddenRows.push(offset + b * S + i);
    }
    feeds[`input_ids.${g}`] = new ort.Tensor('int64', ids, [B, S]);
    feeds[`position_ids.${g}`] = new ort.Tensor('int64', pos, [B, S]);
    feeds[`attention_bias.${g}`] = new ort.Tensor('float32', bias, [B, 1, rep * S, T]);
    const { numKvHeads: Hkv, headDim: d } = cfg;
    const rowFloats = kv.rowFloats;
    // rows [lo, hi) of the arena, in place: keys and values share the layout [B, Hkv, P, d]
    const past = (a: Float32Array): ort.Tensor => new ort.Tensor('float32', P === 0 ? new Float32Array(0) : a.subarray(lo * rowFloats, hi * rowFloats), [B, Hkv, P, d]);
    for (let l = 0; l < cfg.numLayers; l++) {
      feeds[`past_key.${g}.${l}`] = past(kv.keys[l]);
      feeds[`past_value.${g}.${l}`] = past(kv.values[l]);
    }
    return { lo, B, S, offset };
  }

  // A group with no rows: [0, 1] tokens, no past.
  private emptyGroupFeeds(g: number, feeds: Record<string, ort.Tensor>): void {
    const { numKvHeads: Hkv, headDim: d } = this.cfg;
    feeds[`input_ids.${g}`] = new ort.Tensor('int64', new BigInt64Array(0), [0, 1]);
    feeds[`position_ids.${g}`] = new ort.Tensor('int64', new BigInt64Array(0), [0, 1]);
    feeds[`attention_bias.${g}`] = new ort.Tensor('float32', new Float32Array(0), [0, 1, this.rep, 1]);
    for (let l = 0; l < this.cfg.numLayers; l++) {
      feeds[`past_key.${g}.${l}`] = new ort.Tensor('float32', new Float32Array(0), [0, Hkv, 0, d]);
      feeds[`past_value.${g}.${l}`] = new ort.Tensor('float32', new Float32Array(0), [0, Hkv, 0, d]);
    }
  }
}
