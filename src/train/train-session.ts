// The training graph (train-graph.ts) as an onnxruntime session: one step() is one forward and
// backward pass over a batch, returning the loss and the gradient of every LoRA factor. Batches
// and factors are fed as ort.Tensor views over the caller's typed arrays (no copies).
//
// Dropout (PEFT's lora_dropout p > 0): step() takes the masks, either drawn here from a key
// (DropoutKey: seed, optimizer step, micro-batch; dropout-masks.ts) into buffers reused from step to
// step, or given (tests). evaluate() applies no dropout: it feeds a [1, in] mask of ones per slot,
// broadcast over the rows (one session serves both).
import { createSession, ort } from '../runtime/session.ts';
import type { SessionOptions } from '../runtime/session.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import type { Weights } from '../runtime/llama-graph.ts';
import { loraInputNames } from '../runtime/llama-graph.ts';
import { targetShape } from '../runtime/model-targets.ts';
import { DropoutMasks } from './dropout-masks.ts';
import type { DropoutFeed } from './dropout-masks.ts';
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
