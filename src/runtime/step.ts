// runStep: one session run for a batch of arena rows, each adding `tokens` after its cached
// prefix. Builds the feeds (ids, positions, mask, KV and LoRA views of rows [lo, hi)), runs the
// graph, writes the new KV rows and returns the requested logits rows. This is the only forward
// pass of the runtime. Rows in [lo, hi) that are not in the step ride along as masked dummies,
// so the arenas are always fed in place.
import { ort } from './session.ts';
import type { ModelConfig } from './model-config.ts';
import type { KvArena } from './kv-arena.ts';
import type { LoraArena } from './lora-arena.ts';

export interface StepRow {
  row: number;             // arena row (KV cache and LoRA factors)
  tokens: number[];        // new tokens (a prefill chunk, or one decode token)
  allLogits?: boolean;     // logits for every new position instead of the last one only
}

export interface StepResult {
  logits: Float32Array;    // [rows, V]: per StepRow in order, its last (or all) positions
  rowOffsets: number[];    // first logits row of each StepRow
  vocabSize: number;
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

export class StepRunner {
  private readonly staging = new Staging();
  private readonly rep: number;
  private readonly emptyPast: ort.Tensor[];

  constructor(
    private readonly session: ort.InferenceSession,
    private readonly cfg: ModelConfig,
    readonly maxPositions: number,
    readonly kv: KvArena | null = null,       // default arenas (tests, benchmarks); the scheduler passes lanes
    readonly lora: LoraArena | null = null,
  ) {
    this.rep = cfg.numHeads / cfg.numKvHeads;
    const { numKvHeads: Hkv, headDim: d } = cfg;
    this.emptyPast = [new ort.Tensor('float32', new Float32Array(0), [1, Hkv, d, 0]), new ort.Tensor('float32', new Float32Array(0), [1, Hkv, 0, d])];
  }

  async run(rows: StepRow[], opts: StepOptions = {}): Promise<StepResult> {
    const { cfg, rep } = this;
    const kv = opts.lane?.kv ?? this.kv;
    if (!kv) throw new Error('runStep: no KV arena');
    const lora = opts.lane ? opts.lane.lora : this.lora;
    const lo = Math.min(...rows.map((r) => r.row));
    const hi = Math.max(...rows.map((r) => r.row)) + 1;
    const B = hi - lo;
    const S = Math.max(...rows.map((r) => r.tokens.length));
    for (const r of rows) {
      if (r.tokens.length === 0) throw new Error('runStep: a row has no tokens');
      if ((kv.lengths[r.row] ?? 0) + r.tokens.length > this.maxPositions) throw new Error(`runStep: position ${(kv.lengths[r.row] ?? 0) + r.tokens.length} exceeds the context of ${this.maxPositions}`);
    }
    for (const r of rows) if ((kv.lengths[r.row] ?? 0) + r.tokens.length > kv.capacity) throw new Error(`runStep: row ${r.row} needs ${(kv.lengths[r.row] ?? 0) + r.tokens.length} positions; its arena holds ${kv.capacity}`);
    kv.ensure(hi);
    // past width: the arena capacity (fed in place), or 0 when no row has a past yet
    const P = rows.some((r) => kv.lengths[r.row] > 0) ? kv.capacity : 0;
    const T = P + S;

    const ids = new BigInt64Array(B * S);
    const pos = new BigInt64Array(B * S);
    const bias = this.staging.get('bias', B * rep * S * T).fill(MASKED);
    const logitRows: number[] = [];
    const rowOffsets: number[] = [];
    for (const r of rows) {
      const b = r.row - lo;
      const past = kv.lengths[r.row];
      const n = r.tokens.length;
      for (let i = 0; i < n; i++) {
        ids[b * S + i] = BigInt(r.tokens[i]);
        pos[b * S + i] = BigInt(past + i);
      }
      // query i of row b sees its own past [0, past) and the new keys [P, P + i]
      for (let g = 0; g < rep; g++) {
        for (let i = 0; i < n; i++) {
          const base = ((b * rep + g) * S + i) * T;
          bias.fill(0, base, base + past);
          bias.fill(0, base + P, base + P + i + 1);
        }
      }
      rowOffsets.push(logitRows.length);
      if (r.allLogits) for (let i = 0; i < n; i++) logitRows.push(b * S + i);
      else logitRows.push(b * S + n - 1);
    }

    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', ids, [B, S]),
      position_ids: new ort.Tensor('int64', pos, [B, S]),
      attention_bias: new ort.Tensor('float32', bias, [B, 1, rep * S, T]),
      logit_rows: new ort.Tensor('int64', BigInt64Array.from(logitRows.map(BigInt)), [logitRows.length]),
    };
    const { numKvHeads: Hkv, headDim: d } = cfg;
    const rowFloats = kv.rowFloats;
    for (let l = 0; l < cfg.numLayers; l++) {
      feeds[`past_key.${l}`] = P === 0 ? this.emptyPast[0] : new ort.Tensor('float32', kv.keysT[l].subarray(lo * rowFloats, hi * rowFloats), [B, Hkv, d, P]);
      feeds[`past_value.${l}`] = P === 0 ? this.emptyPast[1] : new ort.Tensor('float32', kv.values[l].subarray(lo * rowFloats, hi * rowFloats), [B, Hkv, P, d]);
    }
    const session = opts.session ?? this.session;
    if (!opts.session && lora) Object.assign(feeds, lora.feeds(lo, hi));

    const out = await session.run(feeds);

    for (let l = 0; l < cfg.numLayers; l++) {
      const nk = out[`new_key.${l}`].data as Float32Array;
      const nv = out[`new_value.${l}`].data as Float32Array;
      for (const r of rows) kv.write(l, r.row, nk, nv, (r.row - lo) * S, r.tokens.length);
    }
    for (const r of rows) kv.lengths[r.row] += r.tokens.length;
    return { logits: out.logits.data as Float32Array, rowOffsets, vocabSize: cfg.vocabSize };
  }
}
