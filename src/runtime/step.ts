// runStep: one session run for a batch of sequences, each adding `tokens` after its cached prefix.
// Builds the feeds (ids, positions, mask, past KV), runs the graph, appends the new KV rows and
// returns the requested logits rows. This is the only forward pass of the runtime.
import { ort } from './session.ts';
import type { ModelConfig } from './model-config.ts';
import type { SequenceKv } from './kv-cache.ts';

export interface StepRow {
  kv: SequenceKv;
  tokens: number[];        // new tokens (a prefill chunk, or one decode token)
  allLogits?: boolean;     // logits for every new position instead of the last one only
}

export interface StepResult {
  logits: Float32Array;    // [rows, V], rows in order: per StepRow, its last (or all) positions
  rowOffsets: number[];    // first logits row of each StepRow
  vocabSize: number;
}

export type ExtraFeeds = (B: number, S: number) => Record<string, ort.Tensor>;

const MASKED = -1e9;

// Reused staging buffers: fresh pages are expensive in this VM (notes §0), so grow, never shrink.
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

  constructor(private readonly session: ort.InferenceSession, private readonly cfg: ModelConfig, private readonly maxPositions: number) {
    this.rep = cfg.numHeads / cfg.numKvHeads;
  }

  async run(rows: StepRow[], extraFeeds?: ExtraFeeds): Promise<StepResult> {
    const B = rows.length;
    const S = Math.max(...rows.map((r) => r.tokens.length));
    // past width: batch 1 feeds the cache in place at its full capacity; batches copy the prefixes
    // (an empty cache is fed as width 0)
    const P = B === 1 && rows[0].kv.length > 0 ? rows[0].kv.capacity : Math.max(...rows.map((r) => r.kv.length));
    const T = P + S;
    const { rep, cfg } = this;
    for (const r of rows) {
      if (r.tokens.length === 0) throw new Error('runStep: a row has no tokens');
      if (r.kv.length + r.tokens.length > this.maxPositions) throw new Error(`runStep: position ${r.kv.length + r.tokens.length} exceeds the context of ${this.maxPositions}`);
    }

    const ids = new BigInt64Array(B * S);
    const pos = new BigInt64Array(B * S);
    const bias = this.staging.get('bias', B * rep * S * T).fill(MASKED);
    const logitRows: number[] = [];
    const rowOffsets: number[] = [];
    rows.forEach((r, b) => {
      const past = r.kv.length;
      const n = r.tokens.length;
      for (let i = 0; i < n; i++) {
        ids[b * S + i] = BigInt(r.tokens[i]);
        pos[b * S + i] = BigInt(past + i);
      }
      // query i of row b sees its own past [0, past) and new keys [P, P+i]
      for (let g = 0; g < rep; g++) {
        for (let i = 0; i < S; i++) {
          const base = ((b * rep + g) * S + i) * T;
          if (i >= n) { bias[base] = 0; continue; } // padding query: attend to slot 0 only, output unused
          bias.fill(0, base, base + past);
          bias.fill(0, base + P, base + P + i + 1);
        }
      }
      rowOffsets.push(logitRows.length);
      if (r.allLogits) for (let i = 0; i < n; i++) logitRows.push(b * S + i);
      else logitRows.push(b * S + n - 1);
    });

    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', ids, [B, S]),
      position_ids: new ort.Tensor('int64', pos, [B, S]),
      attention_bias: new ort.Tensor('float32', bias, [B, 1, rep * S, T]),
      logit_rows: new ort.Tensor('int64', BigInt64Array.from(logitRows.map(BigInt)), [logitRows.length]),
      ...extraFeeds?.(B, S),
    };
    for (let l = 0; l < cfg.numLayers; l++) Object.assign(feeds, this.pastFeeds(rows, l, P));

    const out = await this.session.run(feeds);

    for (const r of rows) r.kv.reserve(r.tokens.length);
    for (let l = 0; l < cfg.numLayers; l++) {
      const nk = out[`new_key.${l}`].data as Float32Array;
      const nv = out[`new_value.${l}`].data as Float32Array;
      rows.forEach((r, b) => r.kv.write(l, nk, nv, b * S, r.tokens.length));
    }
    for (const r of rows) r.kv.length += r.tokens.length;
    return { logits: out.logits.data as Float32Array, rowOffsets, vocabSize: cfg.vocabSize };
  }

  // past_key [B,Hkv,d,P], past_value [B,Hkv,P,d]: batch 1 feeds the cache arrays themselves
  // (zero-copy); larger batches copy each sequence's valid prefix into reused staging buffers.
  private pastFeeds(rows: StepRow[], layer: number, P: number): Record<string, ort.Tensor> {
    const { numKvHeads: Hkv, headDim: d } = this.cfg;
    const B = rows.length;
    let keysT: Float32Array;
    let values: Float32Array;
    if (B === 1 && P === rows[0].kv.capacity) {
      keysT = rows[0].kv.keysT[layer];
      values = rows[0].kv.values[layer];
    } else {
      const size = Hkv * d * P;
      keysT = this.staging.get(`k.${layer}`, B * size);
      values = this.staging.get(`v.${layer}`, B * size);
      rows.forEach((r, b) => r.kv.copyPrefixTo(layer, keysT, values, b * size, P));
    }
    return {
      [`past_key.${layer}`]: new ort.Tensor('float32', keysT, [B, Hkv, d, P]),
      [`past_value.${layer}`]: new ort.Tensor('float32', values, [B, Hkv, P, d]),
    };
  }
}
