// The training graph (train-graph.ts) as an onnxruntime session: one step() is one forward and
// backward pass over a batch, returning the loss and the gradient of every LoRA factor. Batches
// and factors are fed as ort.Tensor views over the caller's typed arrays (no copies).
//
// Dropout (PEFT's lora_dropout p > 0): step() takes the masks, either drawn here from a key
// (DropoutKey: seed, optimizer step, micro-batch) into buffers reused from step to step, or given
// (tests). Each slot's mask [N, in] has an Rng of its own, seeded by a 64-bit hash of (seed, step,
// micro-batch, slot id = layer·7 + the target's index in TARGETS order), and is filled row-major:
// each entry independently 0 with probability p, else 1/(1−p) (torch's inverted dropout; see
// DropoutSampler for how one 32-bit draw serves four entries exactly). The mask of a
// slot therefore depends on nothing but its key, so a resumed run (same step numbers) draws the
// same masks as an uninterrupted one. evaluate() applies no dropout: it feeds a [1, in] mask of
// ones per slot, broadcast over the rows (one session serves both).
import { createSession, ort } from '../runtime/session.ts';
import type { SessionOptions } from '../runtime/session.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import type { Weights } from '../runtime/llama-graph.ts';
import { loraInputNames } from '../runtime/llama-graph.ts';
import { TARGETS, targetShape } from '../runtime/model-targets.ts';
import type { Target } from '../runtime/model-targets.ts';
import { Rng } from '../runtime/random.ts';
import { gradName } from './autodiff.ts';
import { LOSS_OUTPUTS, buildTrainGraph, dropoutMaskName, hasDropout, loraFactorNames } from './train-graph.ts';
import type { LoraSlot, TrainGraphOptions } from './train-graph.ts';

// Row-major [batchSize, seqLen] arrays; see train-graph.ts for the label and weight convention.
export interface TrainBatch {
  batchSize: number;
  seqLen: number;
  inputIds: BigInt64Array;
  labels: BigInt64Array;
  lossWeights: Float32Array;
}

export interface EvalResult {
  loss: number;
  nllSum: number;
  weightSum: number;
  tokenLogprobs: Float32Array; // [batchSize, seqLen]
}

export interface StepResult extends EvalResult {
  grads: Map<string, Float32Array>; // by factor name (lora_a.<layer>.<target>, lora_b.…)
}

// Where a step's dropout masks come from: the optimizer step (0-based) and the micro-batch within
// it (0-based, < --grad-accum), with the run's seed.
export interface DropoutKey {
  seed: number;
  step: number;
  micro: number;
}

// A step's masks: drawn from a key, or given by input name (lora_dropout.<layer>.<target>, [N, in]).
export type DropoutFeed = DropoutKey | Map<string, Float32Array>;

const MASK64 = (1n << 64n) - 1n;
const DROPOUT_DOMAIN = 0x6c6f72615f64726fn; // "lora_dro": keeps these streams apart from other Rng(seed) uses

// splitmix64's finaliser: a bijection of 64-bit values with full avalanche
function mix64(z: bigint): bigint {
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return z ^ (z >> 31n);
}

// The Rng of one slot's mask at (seed, step, micro-batch): its seed hashes the four integers in
// that order (each ≥ 0), the slot as layer·|TARGETS| + its index in TARGETS.
export function dropoutRng(key: DropoutKey, layer: number, target: Target): Rng {
  const slot = layer * TARGETS.length + TARGETS.indexOf(target);
  let h = DROPOUT_DOMAIN;
  for (const c of [key.seed, key.step, key.micro, slot]) {
    if (!Number.isSafeInteger(c) || c < 0) throw new Error(`dropout key: ${c} is not an integer ≥ 0`);
    h = mix64((h + 0x9e3779b97f4a7c15n + BigInt(c)) & MASK64);
  }
  return new Rng(h);
}

// Fills dropout masks: out[i] = 0 with probability p, else 1/(1−p) (rounded to float32), each entry
// independently, with exactly the probability of rng.next() < p, i.e. of u < θ for a uniform 32-bit
// u and θ = ⌈p·2³²⌉. One 32-bit draw serves four entries: each entry compares a byte b (high byte
// first) with θ's top byte t, so b < t drops and b > t keeps, as the full comparison would; only on
// a tie (b = t, probability 1/256) does the entry draw again and compare 24 fresh bits with θ's low
// 24. So P(drop) = t/256 + (1/256)·(θ mod 2²⁴)/2²⁴ = θ/2³², about 4.3× fewer draws than one per
// entry, and no branch but the rare tie (a 256-entry table maps bytes to values).
export class DropoutSampler {
  readonly keep: number;                 // 1/(1−p)
  private readonly top: number;          // θ >>> 24
  private readonly low: number;          // θ & 0xffffff
  private readonly table = new Float32Array(256);

  constructor(readonly p: number) {
    if (!(p >= 0 && p < 1)) throw new Error(`dropout must be in [0, 1), got ${p}`);
    const theta = Math.ceil(p * 4294967296); // < 2³² since p < 1
    this.top = Math.floor(theta / 16777216);
    this.low = theta % 16777216;
    this.keep = 1 / (1 - p);
    for (let b = 0; b < 256; b++) this.table[b] = b < this.top ? 0 : this.keep;
  }

  fill(out: Float32Array, rng: Rng): void {
    const { table, top, low, keep } = this;
    const n = out.length;
    const n4 = n - (n % 4);
    let i = 0;
    for (; i < n4; i += 4) {
      const u = rng.nextU32();
      const b0 = u >>> 24;
      const b1 = (u >>> 16) & 255;
      const b2 = (u >>> 8) & 255;
      const b3 = u & 255;
      out[i] = table[b0];
      out[i + 1] = table[b1];
      out[i + 2] = table[b2];
      out[i + 3] = table[b3];
      if (b0 === top || b1 === top || b2 === top || b3 === top) {
        if (b0 === top) out[i] = rng.nextU32() >>> 8 < low ? 0 : keep;
        if (b1 === top) out[i + 1] = rng.nextU32() >>> 8 < low ? 0 : keep;
        if (b2 === top) out[i + 2] = rng.nextU32() >>> 8 < low ? 0 : keep;
        if (b3 === top) out[i + 3] = rng.nextU32() >>> 8 < low ? 0 : keep;
      }
    }
    if (i < n) {
      // the last 1–3 entries: bytes of one more draw, as above
      const u = rng.nextU32();
      for (let j = 0; i < n; i++, j++) {
        const b = (u >>> (24 - 8 * j)) & 255;
        out[i] = b === top ? (rng.nextU32() >>> 8 < low ? 0 : keep) : table[b];
      }
    }
  }
}

// Every slot's mask for one micro-batch, in buffers reused across steps (grown only when a batch
// has more rows than any before; views are cached per row count).
export class DropoutMasks {
  private readonly bufs = new Map<string, { buf: Float32Array; view: Float32Array }>();
  private readonly sampler: DropoutSampler;

  constructor(readonly p: number, readonly slots: readonly { layer: number; target: Target; inDim: number }[]) {
    if (!(p > 0 && p < 1)) throw new Error(`dropout must be in (0, 1) to draw masks, got ${p}`);
    this.sampler = new DropoutSampler(p);
  }

  // rows = N = B·T; the result maps each slot's input name to its [rows, in] mask (valid until the next draw)
  draw(key: DropoutKey, rows: number): Map<string, Float32Array> {
    const out = new Map<string, Float32Array>();
    for (const s of this.slots) {
      const name = dropoutMaskName(s.layer, s.target);
      const n = rows * s.inDim;
      let e = this.bufs.get(name);
      if (!e || e.buf.length < n) {
        const buf = new Float32Array(n);
        e = { buf, view: buf };
        this.bufs.set(name, e);
      }
      if (e.view.length !== n) e.view = e.buf.subarray(0, n);
      this.sampler.fill(e.view, dropoutRng(key, s.layer, s.target));
      out.set(name, e.view);
    }
    return out;
  }
}

export class TrainSession {
  private constructor(
    private readonly session: ort.InferenceSession,
    readonly slots: LoraSlot[],
    private readonly shapes: Map<string, [number, number]>,
    readonly hasGradients: boolean,
    private readonly limits: { maxPositions: number; vocabSize: number },
    private readonly masks: DropoutMasks | null,      // null: the graph takes no dropout masks
    private readonly noDropout: Record<string, ort.Tensor>, // [1, in] ones per mask input, for evaluate()
  ) {}

  get dropout(): number {
    return this.masks?.p ?? 0;
  }

  static async create(cfg: ModelConfig, weights: Weights, opts: TrainGraphOptions & { session?: SessionOptions }): Promise<TrainSession> {
    const graph = buildTrainGraph(cfg, weights, opts);
    // no memory-pattern planning: ~800 MB more and a slow extra warm-up run, no faster steps (measured)
    const session = await createSession(graph, { memoryPattern: false, ...opts.session });
    const shapes = new Map<string, [number, number]>();
    for (const s of opts.slots) {
      const [out, inDim] = targetShape(cfg, s.target);
      const n = loraInputNames(s.layer, s.target);
      shapes.set(n.a, [s.rank, inDim]);
      shapes.set(n.b, [out, s.rank]);
    }
    const dropoutSlots = opts.slots.map((s) => ({ layer: s.layer, target: s.target, inDim: targetShape(cfg, s.target)[1] }));
    const masks = hasDropout(opts) ? new DropoutMasks(opts.dropout!, dropoutSlots) : null;
    const noDropout: Record<string, ort.Tensor> = {};
    if (masks) for (const s of dropoutSlots) noDropout[dropoutMaskName(s.layer, s.target)] = new ort.Tensor('float32', new Float32Array(s.inDim).fill(1), [1, s.inDim]);
    return new TrainSession(session, opts.slots, shapes, opts.gradients !== false, { maxPositions: opts.maxPositions, vocabSize: cfg.vocabSize }, masks, noDropout);
  }

  // One forward + backward pass. With dropout (p > 0) the masks are required: a key to draw them
  // from (DropoutMasks, reused buffers), or the masks themselves; without dropout `dropout` is ignored.
  async step(batch: TrainBatch, lora: Map<string, Float32Array>, dropout?: DropoutFeed): Promise<StepResult> {
    if (!this.hasGradients) throw new Error('this TrainSession was built without gradients');
    const names = loraFactorNames(this.slots);
    const feeds = this.feeds(batch, lora, true);
    if (this.masks) {
      if (dropout === undefined) throw new Error(`this TrainSession applies dropout ${this.masks.p}: step() needs a dropout key or masks`);
      const rows = batch.batchSize * batch.seqLen;
      const masks = dropout instanceof Map ? dropout : this.masks.draw(dropout, rows);
      for (const s of this.masks.slots) {
        const name = dropoutMaskName(s.layer, s.target);
        const m = masks.get(name);
        if (!m || m.length !== rows * s.inDim) throw new Error(`dropout mask ${name}: expected ${rows}×${s.inDim} values`);
        feeds[name] = new ort.Tensor('float32', m, [rows, s.inDim]);
      }
    }
    const out = await this.session.run(feeds, [...LOSS_OUTPUTS, ...names.map(gradName)]);
    const grads = new Map(names.map((n) => {
      const g = out[gradName(n)].data as Float32Array;
      const [rows, cols] = this.shapes.get(n)!;
      if (g.length !== rows * cols) throw new Error(`gradient of ${n} has ${g.length} values, expected ${rows}×${cols}`);
      return [n, g];
    }));
    return { ...lossResult(out), grads };
  }

  // The loss alone: the forward pass only (the training graph skips its backward branch), and
  // never with dropout (the masks are ones).
  async evaluate(batch: TrainBatch, lora: Map<string, Float32Array>): Promise<EvalResult> {
    return lossResult(await this.session.run({ ...this.feeds(batch, lora, false), ...this.noDropout }, [...LOSS_OUTPUTS]));
  }

  async release(): Promise<void> {
    await this.session.release();
  }

  private feeds(batch: TrainBatch, lora: Map<string, Float32Array>, gradients: boolean): Record<string, ort.Tensor> {
    const { batchSize: B, seqLen: T } = batch;
    const n = B * T;
    if (batch.inputIds.length !== n || batch.labels.length !== n || batch.lossWeights.length !== n) throw new Error(`batch arrays must hold ${B}×${T} values`);
    if (T > this.limits.maxPositions) throw new Error(`sequence length ${T} exceeds the graph's ${this.limits.maxPositions} positions`);
    // out-of-range ids would fail inside ORT with a less helpful message (labels: no -100 here)
    const V = BigInt(this.limits.vocabSize);
    for (let i = 0; i < n; i++) {
      if (batch.inputIds[i] < 0n || batch.inputIds[i] >= V || batch.labels[i] < 0n || batch.labels[i] >= V) throw new Error(`token id out of range [0, ${V}) at flat position ${i}`);
    }
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', batch.inputIds, [B, T]),
      labels: new ort.Tensor('int64', batch.labels, [B, T]),
      loss_weights: new ort.Tensor('float32', batch.lossWeights, [B, T]),
    };
    if (this.hasGradients) feeds.compute_gradients = new ort.Tensor('int64', BigInt64Array.of(gradients ? 1n : 0n), [1]);
    for (const [name, [rows, cols]] of this.shapes) {
      const data = lora.get(name);
      if (!data || data.length !== rows * cols) throw new Error(`LoRA factor ${name}: expected ${rows}×${cols} values`);
      feeds[name] = new ort.Tensor('float32', data, [rows, cols]);
    }
    return feeds;
  }
}

function lossResult(out: ort.InferenceSession.OnnxValueMapType): EvalResult {
  const scalar = (name: string): number => (out[name].data as Float32Array)[0];
  return { loss: scalar('loss'), nllSum: scalar('nll_sum'), weightSum: scalar('weight_sum'), tokenLogprobs: out.token_logprobs.data as Float32Array };
}
