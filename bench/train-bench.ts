// Training benchmark (issue: trainer): training tokens/s on the synthetic 110M model (LoRA rank 16
// on all seven targets of every layer, batch 8 × seq-len 256: one forward and backward pass of the
// training graph per step, the optimizer not included), next to prefill tokens/s of the inference
// graph on the same batch shape (8 rows × 256 prompt tokens in one step), in one run. The training
// part runs in a child process first, so its peak RSS is the training's own (model, session,
// activations), not the benchmark's.
//   npm run bench -- --only train [--quick]
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../src/runtime/model-loader.ts';
import { buildLlamaGraph } from '../src/runtime/llama-graph.ts';
import { createSession } from '../src/runtime/session.ts';
import { StepRunner } from '../src/runtime/step.ts';
import { KvArena } from '../src/runtime/kv-arena.ts';
import { TARGETS } from '../src/runtime/model-targets.ts';
import { TrainSession } from '../src/train/train-session.ts';
import { AdamW } from '../src/train/adamw.ts';
import { initLora } from '../src/train/lora-init.ts';
import type { LoraSlot } from '../src/train/train-graph.ts';
import { llama110mDir } from './bench-models.ts';
import { median, printTable } from './stats.ts';

const B = 8;
const T = 256;
const RANK = 16;

interface TrainChild { train_step_ms: number[]; optimizer_ms: number[]; peak_rss_mb: number; session_ms: number; lora_params: number; model_params: number }

// The batch: B rows of T tokens, every next token a target.
function batch(vocab: number): { inputIds: BigInt64Array; labels: BigInt64Array; lossWeights: Float32Array } {
  const ids = Array.from({ length: B * (T + 1) }, (_, i) => 3 + ((i * 7919) % (vocab - 3)));
  const inputIds = new BigInt64Array(B * T);
  const labels = new BigInt64Array(B * T);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      inputIds[b * T + t] = BigInt(ids[b * (T + 1) + t]);
      labels[b * T + t] = BigInt(ids[b * (T + 1) + t + 1]);
    }
  }
  return { inputIds, labels, lossWeights: new Float32Array(B * T).fill(1) };
}

async function childMain(steps: number): Promise<void> {
  const model = loadModel(llama110mDir());
  const cfg = model.config;
  const slots: LoraSlot[] = [];
  for (let layer = 0; layer < cfg.numLayers; layer++) for (const target of TARGETS) slots.push({ layer, target, rank: RANK, scale: 32 / RANK });
  const t0 = performance.now();
  const session = await TrainSession.create(cfg, model.weights, { slots, maxPositions: T });
  const sessionMs = performance.now() - t0;
  const lora = initLora(cfg, slots, 'kaiming', 1);
  const opt = new AdamW({ lr: 1e-4, weightDecay: 0 });
  const data = { batchSize: B, seqLen: T, ...batch(cfg.vocabSize) };
  const stepMs: number[] = [];
  const optMs: number[] = [];
  for (let i = 0; i < steps + 1; i++) {
    const a = performance.now();
    const r = await session.step(data, lora);
    const b = performance.now();
    opt.step(lora, r.grads);
    const c = performance.now();
    if (i > 0) { stepMs.push(b - a); optMs.push(c - b); } // the first run plans and allocates
  }
  await session.release();
  let loraParams = 0;
  for (const a of lora.values()) loraParams += a.length;
  let modelParams = 0;
  for (const w of model.weights.values()) modelParams += w.length;
  const out: TrainChild = { train_step_ms: stepMs, optimizer_ms: optMs, peak_rss_mb: process.resourceUsage().maxRSS / 1024, session_ms: sessionMs, lora_params: loraParams, model_params: modelParams };
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

function runChild(steps: number): Promise<TrainChild> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--child', String(steps)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    p.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`training child exited with ${code}`));
      resolve(JSON.parse(out.trim().split('\n').at(-1)!) as TrainChild);
    });
  });
}

async function prefillMs(reps: number): Promise<number[]> {
  const model = loadModel(llama110mDir());
  const cfg = model.config;
  // the rotary op sees all B·T tokens as one sequence: its tables need at least that many rows
  const session = await createSession(buildLlamaGraph(cfg, model.weights, { maxPositions: B * T }));
  const kv = new KvArena(cfg.numLayers, cfg.numKvHeads, cfg.headDim, T);
  kv.ensure(B);
  for (let r = 0; r < B; r++) kv.warmRow(r);
  const runner = new StepRunner(session, cfg, B * T, kv, null);
  const { inputIds } = batch(cfg.vocabSize);
  const rows = Array.from({ length: B }, (_, r) => ({ row: r, tokens: Array.from(inputIds.subarray(r * T, (r + 1) * T), Number) }));
  const times: number[] = [];
  for (let i = 0; i < reps + 1; i++) {
    for (let r = 0; r < B; r++) kv.release(r);
    const t0 = performance.now();
    await runner.run(rows);
    if (i > 0) times.push(performance.now() - t0);
  }
  await session.release();
  return times;
}

export async function trainBench(opts: { quick: boolean }): Promise<Record<string, unknown>> {
  const steps = opts.quick ? 2 : 4;
  const train = await runChild(steps);
  const prefill = await prefillMs(steps);
  const tokens = B * T;
  const trainMs = median(train.train_step_ms);
  const preMs = median(prefill);
  const result = {
    model: 'llama-110m', batch: B, seq_len: T, rank: RANK, targets: TARGETS.length,
    lora_params: train.lora_params, model_params: train.model_params, lora_share: train.lora_params / train.model_params,
    train_step_ms: train.train_step_ms, optimizer_ms: train.optimizer_ms, prefill_step_ms: prefill,
    train_tok_s: tokens / (trainMs / 1000), prefill_tok_s: tokens / (preMs / 1000),
    train_over_prefill: preMs / trainMs, optimizer_step_ms: median(train.optimizer_ms),
    peak_rss_mb: train.peak_rss_mb, session_create_ms: train.session_ms,
    target_ratio: 0.25,
  };
  printTable(`training vs prefill, llama-110m, batch ${B} × ${T} tokens, LoRA rank ${RANK} on all ${TARGETS.length} targets (median of ${steps} steps)`, [{
    train_tok_s: result.train_tok_s, prefill_tok_s: result.prefill_tok_s, train_over_prefill: result.train_over_prefill,
    train_step_ms: trainMs, prefill_step_ms: preMs, adamw_ms: result.optimizer_step_ms, peak_rss_mb: result.peak_rss_mb,
    lora_params_pct: 100 * result.lora_share,
  }]);
  return result;
}

if (process.argv[2] === '--child') await childMain(Number(process.argv[3]));
