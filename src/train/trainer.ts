// The training run: arguments → a PEFT adapter directory. Reads top to bottom:
//   1. check      paths, the model, the data (every refusal before anything is written)
//   2. open       the output's staging directory (peft-output.ts), and a checkpoint to resume from
//   3. build      the training graph (forward + backward, train-graph.ts) as one onnxruntime session
//   4. loop       per optimizer step: --grad-accum micro-batches through the session, their
//                 gradients summed by target count, clipped by global norm, one AdamW update;
//                 metrics, progress, eval and checkpoints on their cadence
//   5. finish     the adapter, training args, metrics and loss curve renamed into --out
// Determinism: batches come from (seed, epoch, batch index), dropout masks (--dropout > 0) from
// (seed, optimizer step, micro-batch, slot) (train-session.ts), and the optimizer runs in float64
// over float32 state, so the same seed, data and thread count give the same losses and weights, and
// a resumed run continues exactly where its checkpoint stood (it needs no saved RNG state).
// Eval runs the training session too (its backward half wasted): one resident copy of W0 matters
// more than eval speed, which is a small share of a run.
// Eval never applies dropout (TrainSession.evaluate feeds masks of ones).
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { loadModel } from '../runtime/model-loader.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import { loraInputNames } from '../runtime/llama-graph.ts';
import { loraScale } from '../adapters/peft-config.ts';
import { AdamW, clipGradNorm, globalNorm } from './adamw.ts';
import type { AdamWState } from './adamw.ts';
import { epochBatches, evalBatches, totalSteps } from './batches.ts';
import type { Batch, BatchOptions } from './batches.ts';
import { readCheckpoint, writeCheckpoint } from './checkpoint.ts';
import type { CheckpointState } from './checkpoint.ts';
import { loadTrainEval } from './dataset.ts';
import { ExampleEncoder } from './examples.ts';
import type { Example } from './examples.ts';
import { initLora } from './lora-init.ts';
import { writeLossChart } from './loss-chart.ts';
import { METRICS_FILE, MetricsLog } from './metrics-log.ts';
import type { MetricsRecord } from './metrics-log.ts';
import { OutputDir, adapterModules } from './peft-output.ts';
import type { LoraFactors } from './peft-output.ts';
import { createProgress } from './progress.ts';
import type { ProgressOptions } from './progress.ts';
import { checkArgsForModel, checkPaths, lrAt } from './train-args.ts';
import type { TrainArgs } from './train-args.ts';
import type { LoraSlot } from './train-graph.ts';
import { TrainSession } from './train-session.ts';
import type { TrainBatch } from './train-session.ts';
import type { Spinning } from '../runtime/session.ts';

export interface TrainReport {
  out: string;
  steps: number;                 // optimizer steps in the run (a resumed run counts from 0)
  trainLoss: number | null;      // the last step's
  evalLossBase: number | null;   // held-out loss before the first step (B = 0: the base model)
  evalLossFinal: number | null;  // held-out loss of the adapter written
  trainTokensPerS: number;       // input tokens through forward + backward per second
  peakRssBytes: number;
  seconds: number;
}

export interface TrainOptions {
  stream?: ProgressOptions['stream'];  // progress and messages (default stdout)
  // Hooks for a run driven by a server (src/train/jobs): every metrics record as it is written, each
  // checkpoint once renamed into place, and a wait before each optimizer step that may pause the run
  // (a long serving queue) or throw to stop it (a cancel); a throw ends the run like any failure.
  onMetrics?: (record: MetricsRecord, totalSteps: number, tokens: number) => void; // tokens: the step's input tokens
  onCheckpoint?: (step: number, dir: string) => void;
  beforeStep?: (step: number) => Promise<void> | void;
  // The intra-op pool's spinning (session.ts). A job inside the server turns it off: its pool would
  // otherwise spin through each long training run on the cores the serving steps need.
  spinning?: Spinning;
}

export async function train(args: TrainArgs, opts: TrainOptions = {}): Promise<TrainReport> {
  const t0 = performance.now();
  // 1. check
  checkPaths(args);
  const model = loadModel(args.model);
  const cfg = model.config;
  checkArgsForModel(args, cfg);
  const { train: trainSet, eval: evalSet } = loadTrainEval(args, ExampleEncoder.forModel(model));
  if (trainSet.length === 0) throw new Error(`--data ${args.data}: no training examples are left after the eval split`);
  const slots = loraSlots(args, cfg);
  const resumed = args.resume !== null ? readCheckpoint(args.resume, args, cfg) : null;

  // 2. open
  const out = OutputDir.open(args);
  try {
    const report = await run(args, cfg, model.weights, slots, trainSet, evalSet, resumed, out, opts);
    return { ...report, seconds: (performance.now() - t0) / 1000 };
  } catch (err) {
    // keep the staging directory only when it holds checkpoints to resume from
    const hasCheckpoint = existsSync(out.staging) && readdirSync(out.staging).some((f) => f.startsWith('checkpoint-') && !f.endsWith('.tmp'));
    if (!hasCheckpoint) rmSync(out.staging, { recursive: true, force: true });
    throw err;
  }
}

// The LoRA pairs this run trains: one per (layer, target), each with the run's rank and scale.
export function loraSlots(args: Pick<TrainArgs, 'targets' | 'layers' | 'rank' | 'alpha' | 'useRslora'>, cfg: ModelConfig): LoraSlot[] {
  const scale = loraScale(args.alpha, args.rank, args.useRslora);
  return adapterModules(args, cfg).map(({ layer, target }) => ({ layer, target, rank: args.rank, scale }));
}

async function run(
  args: TrainArgs, cfg: ModelConfig, weights: Map<string, Float32Array>, slots: LoraSlot[],
  trainSet: Example[], evalSet: Example[], resumed: CheckpointState | null, out: OutputDir, opts: TrainOptions,
): Promise<Omit<TrainReport, 'seconds'>> {
  // 3. build
  const session = await TrainSession.create(cfg, weights, { slots, maxPositions: args.seqLen, dropout: args.dropout, session: { intraOpThreads: args.threads ?? 0, spinning: opts.spinning } });
  try {
    const lora = resumed ? factorMap(resumed.lora) : initLora(cfg, slots, args.init, args.seed);
    const opt = new AdamW({ lr: args.lr, weightDecay: args.weightDecay });
    if (resumed) opt.importState(optimizerFromFlat(resumed.optimizer, resumed.optimizerStep));
    const batchOpts: BatchOptions = { batchSize: args.batchSize, seqLen: args.seqLen, packing: args.packing, seed: args.seed };
    const total = totalSteps(trainSet, batchOpts, args.duration, args.gradAccum);
    const data = new BatchStream(trainSet, batchOpts, resumed?.epoch ?? 0, resumed?.batchInEpoch ?? 0);
    const metrics = new MetricsLog(out.path(METRICS_FILE));
    if (resumed && existsSync(metrics.path)) metrics.truncateAfter(resumed.step);
    out.writeTrainingArgs(args);

    const evaluate = async (): Promise<number | null> => {
      if (evalSet.length === 0) return null;
      let nll = 0;
      let w = 0;
      for (const b of evalBatches(evalSet, args.batchSize)) {
        const r = await session.evaluate(trainBatch(b), lora);
        nll += r.nllSum;
        w += r.weightSum;
      }
      return w > 0 ? nll / w : null;
    };
    const progress = createProgress({ total, startStep: resumed?.step ?? 0, stream: opts.stream });
    const evalLossBase = resumed ? null : await evaluate();
    if (evalLossBase !== null) {
      progress.log(`eval loss before training (the base model): ${evalLossBase.toFixed(4)}`);
      // step 0: no training loss yet (written as null), the base model's eval loss
      const record: MetricsRecord = { step: 0, loss: NaN, lr: 0, grad_norm: 0, tokens_per_s: 0, eval_loss: evalLossBase };
      metrics.append(record);
      opts.onMetrics?.(record, total, 0);
    }

    // 4. loop
    const names = [...lora.keys()];
    const grads = new Map(names.map((n) => [n, new Float32Array(lora.get(n)!.length)]));
    let step = resumed?.step ?? 0;
    let trainLoss: number | null = null;
    let evalLoss: number | null = evalLossBase;
    let tokensSeen = 0;
    let trainMs = 0;
    while (step < total) {
      await opts.beforeStep?.(step);
      const tStep = performance.now();
      for (const g of grads.values()) g.fill(0);
      let targets = 0;
      let nll = 0;
      let tokens = 0;
      for (let k = 0; k < args.gradAccum; k++) {
        const b = data.next();
        // dropout masks keyed by this optimizer step (0-based) and micro-batch: the same on resume
        const r = await session.step(trainBatch(b), lora, { seed: args.seed, step, micro: k });
        // the session's gradients are of its mean loss; weighted by target count, the sum over
        // micro-batches is the gradient of the mean over all the step's targets
        for (const [n, g] of r.grads) {
          const acc = grads.get(n)!;
          for (let i = 0; i < g.length; i++) acc[i] += g[i] * r.weightSum;
        }
        targets += r.weightSum;
        nll += r.nllSum;
        tokens += b.tokens;
      }
      if (targets > 0) for (const g of grads.values()) for (let i = 0; i < g.length; i++) g[i] /= targets;
      const gradNorm = args.maxGradNorm > 0 ? clipGradNorm(grads.values(), args.maxGradNorm) : globalNorm(grads.values());
      opt.lr = lrAt(step, { lr: args.lr, lrSchedule: args.lrSchedule, warmupSteps: args.warmupSteps, totalSteps: total });
      opt.step(lora, grads);
      step++;
      const ms = performance.now() - tStep;
      trainMs += ms;
      tokensSeen += tokens;
      trainLoss = targets > 0 ? nll / targets : null;
      const evalNow = (args.evalEvery !== null && step % args.evalEvery === 0) || step === total;
      if (evalNow) evalLoss = await evaluate();
      const tokensPerS = tokens / (ms / 1000);
      const record: MetricsRecord = { step, loss: trainLoss ?? NaN, lr: opt.lr, grad_norm: gradNorm, tokens_per_s: tokensPerS, ...(evalNow && evalLoss !== null ? { eval_loss: evalLoss } : {}) };
      metrics.append(record);
      opts.onMetrics?.(record, total, tokens);
      progress.update({ step, loss: trainLoss ?? NaN, lr: opt.lr, tokensPerS, ...(evalNow && evalLoss !== null ? { evalLoss } : {}) });
      if (args.saveEvery !== null && step % args.saveEvery === 0 && step < total) {
        const ckpt = writeCheckpoint(out.staging, {
          step, epoch: data.epoch, batchInEpoch: data.batchInEpoch, optimizerStep: opt.stepCount,
          lora: factorList(lora, slots), optimizer: optimizerToFlat(opt.exportState()),
        }, args, args.baseModelName ?? args.model, cfg);
        opts.onCheckpoint?.(step, ckpt);
      }
    }
    progress.stop();

    // 5. finish
    const records = metrics.read();
    await writeLossChart(records, out.path('loss'), `LoRA r=${args.rank} α=${args.alpha} on ${args.data}`);
    const dir = out.finish(args, args.baseModelName ?? args.model, factorList(lora, slots), cfg);
    const peakRssBytes = process.resourceUsage().maxRSS * 1024;
    return { out: dir, steps: step, trainLoss, evalLossBase, evalLossFinal: evalLoss, trainTokensPerS: trainMs > 0 ? tokensSeen / (trainMs / 1000) : 0, peakRssBytes };
  } finally {
    await session.release();
  }
}

// Batches in order across epochs; (epoch, batchInEpoch) is always the next batch's place.
class BatchStream {
  private iter: Generator<Batch> | null = null;

  constructor(private readonly examples: Example[], private readonly opts: BatchOptions, public epoch: number, public batchInEpoch: number) {}

  next(): Batch {
    for (;;) {
      this.iter ??= epochBatches(this.examples, this.opts, this.epoch, this.batchInEpoch);
      const r = this.iter.next();
      if (!r.done) {
        this.batchInEpoch++;
        return r.value;
      }
      this.epoch++;
      this.batchInEpoch = 0;
      this.iter = null;
    }
  }
}

const trainBatch = (b: Batch): TrainBatch => ({ batchSize: b.B, seqLen: b.T, inputIds: b.inputIds, labels: b.labels, lossWeights: b.lossWeights });

// Factors by graph input name (lora_a.<layer>.<target>, lora_b.…) ↔ PEFT's per-module pairs.
function factorMap(list: readonly LoraFactors[]): Map<string, Float32Array> {
  const m = new Map<string, Float32Array>();
  for (const f of list) {
    const n = loraInputNames(f.layer, f.target);
    m.set(n.a, f.a.slice());
    m.set(n.b, f.b.slice());
  }
  return m;
}

function factorList(m: Map<string, Float32Array>, slots: readonly LoraSlot[]): LoraFactors[] {
  return slots.map((s) => {
    const n = loraInputNames(s.layer, s.target);
    return { layer: s.layer, target: s.target, a: m.get(n.a)!, b: m.get(n.b)! };
  });
}

// AdamW's moments as flat named tensors (checkpoint.ts): "<factor>.exp_avg", "<factor>.exp_avg_sq".
function optimizerToFlat(s: AdamWState): Map<string, Float32Array> {
  const flat = new Map<string, Float32Array>();
  for (const [n, a] of s.m) flat.set(`${n}.exp_avg`, a);
  for (const [n, a] of s.v) flat.set(`${n}.exp_avg_sq`, a);
  return flat;
}

function optimizerFromFlat(flat: Map<string, Float32Array>, step: number): AdamWState {
  const m = new Map<string, Float32Array>();
  const v = new Map<string, Float32Array>();
  for (const [k, a] of flat) {
    if (k.endsWith('.exp_avg_sq')) v.set(k.slice(0, -'.exp_avg_sq'.length), a);
    else if (k.endsWith('.exp_avg')) m.set(k.slice(0, -'.exp_avg'.length), a);
    else throw new Error(`optimizer state: unexpected tensor ${k}`);
  }
  return { step, m, v };
}
