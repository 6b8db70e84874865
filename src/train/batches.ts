// Examples → batches for the training graph, and the eval split.
//
// THE BATCH CONVENTION (what the training graph consumes). A batch is B rows of T positions,
// row-major ([B, T] flattened, index b*T + t):
//   inputIds[b*T + t]    the row's token t (int64), 0 where the row is padding
//   labels[b*T + t]      the row's token t+1: the token position t is trained to predict
//                        (0 at the last position and in padding, where there is no next token)
//   lossWeights[b*T + t] lossMask[t+1] of that next token: 1 if it is a target, else 0
//                        (always 0 at the last position t = T-1 and in padding)
// so the loss is Σ w·CE(logits[b,t], labels[b,t]) / Σ w, where Σ w is the batch's `targets`.
// With --grad-accum, weight each micro-batch by its targets (Σ over micro-batches of Σ w·CE,
// divided by Σ targets) so the step's loss is the mean over all its target tokens.
// Padding is at the end of each row; inputs are causal, so padding never reaches a real token.
//
// Rows: without packing, one example per row and T = the longest row in the batch (≤ --seq-len), so
// short data does not pay for --seq-len. With packing, whole examples are laid end to end into rows
// of T = --seq-len (greedy, in shuffled order, never split: a split example would lose the target
// at the cut), so every target token of every example is kept. Packed examples see each other in
// attention and their positions run on across the row, as with transformers' packing without
// position resets; the token after an example's end is the next example's BOS, whose weight is 0
// (lossMask[0] is always 0), so nothing is trained across a boundary.
//
// Order: each epoch shuffles the training examples with Rng(seed, epoch) (Fisher–Yates), so a run
// is reproducible and a resumed run finds its place from (epoch, batch index) alone. The last batch
// of an epoch may have fewer rows.
import { Rng } from '../runtime/random.ts';
import type { Example } from './examples.ts';
import type { Duration } from './train-args.ts';

export interface Batch {
  inputIds: BigInt64Array;   // [B*T]
  labels: BigInt64Array;     // [B*T]
  lossWeights: Float32Array; // [B*T]
  B: number;
  T: number;
  tokens: number;            // real (non-padding) input tokens: for tokens/s
  targets: number;           // Σ lossWeights: the loss's denominator
}

export interface BatchOptions {
  batchSize: number;
  seqLen: number;
  packing: boolean;
  seed: number;
}

// A seeded permutation of the items (Fisher–Yates); the same (seed, stream) gives the same order.
export function shuffled<T>(items: readonly T[], seed: number, stream: number): T[] {
  const rng = new Rng(BigInt(seed) * 0x10001n + BigInt(stream + 1)); // stream -1 is the eval split
  const out = items.slice();
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

// Whole examples laid end to end into rows of at most seqLen tokens, in order, a new row whenever
// the next example does not fit. Every example must be ≤ seqLen (dataset.ts checks).
export function packRows(examples: readonly Example[], seqLen: number): Example[] {
  const rows: Example[] = [];
  let cur: Example = { ids: [], lossMask: [] };
  for (const ex of examples) {
    if (ex.ids.length > seqLen) throw new Error(`an example of ${ex.ids.length} tokens does not fit in --seq-len ${seqLen}`);
    if (cur.ids.length + ex.ids.length > seqLen) {
      rows.push(cur);
      cur = { ids: [], lossMask: [] };
    }
    cur.ids.push(...ex.ids);
    cur.lossMask.push(...ex.lossMask);
  }
  if (cur.ids.length) rows.push(cur);
  return rows;
}

// Rows → one batch of T positions (T ≥ every row's length), with the convention above.
export function makeBatch(rows: readonly Example[], T: number): Batch {
  const B = rows.length;
  const inputIds = new BigInt64Array(B * T);
  const labels = new BigInt64Array(B * T);
  const lossWeights = new Float32Array(B * T);
  let tokens = 0;
  let targets = 0;
  rows.forEach((row, b) => {
    const n = row.ids.length;
    if (n > T) throw new Error(`a row of ${n} tokens does not fit in a batch of T = ${T}`);
    tokens += n;
    for (let t = 0; t < n; t++) {
      inputIds[b * T + t] = BigInt(row.ids[t]);
      if (t + 1 < n) {
        labels[b * T + t] = BigInt(row.ids[t + 1]);
        lossWeights[b * T + t] = row.lossMask[t + 1];
        targets += row.lossMask[t + 1];
      }
    }
  });
  return { inputIds, labels, lossWeights, B, T, tokens, targets };
}

// The rows of one epoch, in order: shuffled examples, packed when asked.
export function epochRows(examples: readonly Example[], opts: BatchOptions, epoch: number): Example[] {
  const order = shuffled(examples, opts.seed, epoch);
  return opts.packing ? packRows(order, opts.seqLen) : order;
}

// The batches of one epoch (lazily: a batch's arrays are made when it is reached).
export function* epochBatches(examples: readonly Example[], opts: BatchOptions, epoch: number, fromBatch = 0): Generator<Batch> {
  const rows = epochRows(examples, opts, epoch);
  for (let i = fromBatch * opts.batchSize; i < rows.length; i += opts.batchSize) {
    const chunk = rows.slice(i, i + opts.batchSize);
    yield makeBatch(chunk, opts.packing ? opts.seqLen : Math.max(...chunk.map((r) => r.ids.length)));
  }
}

export function batchesInEpoch(examples: readonly Example[], opts: BatchOptions, epoch: number): number {
  return Math.ceil(epochRows(examples, opts, epoch).length / opts.batchSize);
}

// Batches of eval examples, in file order (no shuffle, no packing: each example's loss stands alone).
export function* evalBatches(examples: readonly Example[], batchSize: number): Generator<Batch> {
  for (let i = 0; i < examples.length; i += batchSize) {
    const chunk = examples.slice(i, i + batchSize);
    yield makeBatch(chunk, Math.max(...chunk.map((r) => r.ids.length)));
  }
}

// Holds out round(fraction × n) examples for eval (at least 1 when fraction > 0, and never all of
// them), chosen by a seeded shuffle; both parts keep file order.
export function splitEval<T>(examples: readonly T[], fraction: number, seed: number): { train: T[]; eval: T[] } {
  if (fraction <= 0 || examples.length < 2) return { train: examples.slice(), eval: [] };
  const n = Math.min(examples.length - 1, Math.max(1, Math.round(fraction * examples.length)));
  const held = new Set(shuffled(examples.map((_, i) => i), seed, -1).slice(0, n));
  return { train: examples.filter((_, i) => !held.has(i)), eval: examples.filter((_, i) => held.has(i)) };
}

// Optimizer steps in the whole run: --steps as given, or for --epochs each epoch's batches over
// --grad-accum (a fractional last epoch takes that fraction of its steps, at least one).
export function totalSteps(examples: readonly Example[], opts: BatchOptions, duration: Duration, gradAccum: number): number {
  if (duration.kind === 'steps') return duration.steps;
  const perEpoch = (e: number): number => Math.ceil(batchesInEpoch(examples, opts, e) / gradAccum);
  let steps = 0;
  const whole = Math.floor(duration.epochs);
  for (let e = 0; e < whole; e++) steps += perEpoch(e);
  const frac = duration.epochs - whole;
  if (frac > 0) steps += Math.max(1, Math.round(frac * perEpoch(whole)));
  return steps;
}
