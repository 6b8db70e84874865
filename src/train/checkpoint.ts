// Checkpoints (`checkpoint-<step>/` in the output's staging directory) and reading one back for
// --resume. A checkpoint is itself a servable PEFT adapter plus what a resumed run needs:
//   adapter_config.json, adapter_model.safetensors   the LoRA factors at that step (peft-output.ts)
//   optimizer.safetensors                            optimizer state: F32 tensors named by the
//                                                    optimizer (e.g. "<lora tensor>.exp_avg"), flat
//   trainer_state.json                               { format, step, epoch, batch_in_epoch,
//                                                      optimizer_step, args }
// The data order needs no saved RNG state: batches.ts shuffles each epoch by (seed, epoch), so
// (epoch, batch_in_epoch) is the place in the data. Randomness inside a step (dropout) should
// likewise be drawn from Rng(seed, step), so the step number is all a resumed run needs.
// A checkpoint is written as `checkpoint-<step>.tmp` and renamed, so a crash never leaves half of one.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { encodeSafetensors, readSafetensorsFile, writeFileAtomic } from '../runtime/safetensors.ts';
import type { TensorToWrite } from '../runtime/safetensors.ts';
import { bytesToF32 } from '../runtime/dtype.ts';
import { targetShape } from '../runtime/model-targets.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import { WEIGHTS_FILE, peftTensorName } from '../adapters/lora-adapter.ts';
import { adapterModules, writeAdapter } from './peft-output.ts';
import type { LoraFactors } from './peft-output.ts';
import type { TrainArgs } from './train-args.ts';

export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const TRAINER_STATE_FILE = 'trainer_state.json';
const FORMAT = 1;

export interface CheckpointState {
  step: number;              // optimizer steps done
  epoch: number;             // the epoch the next batch comes from
  batchInEpoch: number;      // the next batch's index in that epoch
  optimizerStep: number;     // the optimizer's own step count (AdamW bias correction)
  lora: LoraFactors[];
  optimizer: Map<string, Float32Array>;
}

// Args that must equal the checkpoint's for a resumed run to continue the same training: the
// adapter's shape and the data order. The rest (lr, duration, eval and save cadence, threads, out)
// may change, e.g. to train longer.
const MUST_MATCH = ['rank', 'alpha', 'useRslora', 'targets', 'layers', 'seqLen', 'batchSize', 'gradAccum', 'packing', 'seed', 'evalSplit'] as const;
const FLAG: Record<(typeof MUST_MATCH)[number], string> = {
  rank: '--rank', alpha: '--alpha', useRslora: '--use-rslora', targets: '--targets', layers: '--layers', seqLen: '--seq-len',
  batchSize: '--batch-size', gradAccum: '--grad-accum', packing: '--packing', seed: '--seed', evalSplit: '--eval-split',
};

export function checkpointDir(staging: string, step: number): string {
  return join(staging, `checkpoint-${step}`);
}

export function writeCheckpoint(staging: string, state: CheckpointState, args: TrainArgs, baseModel: string, cfg: ModelConfig): string {
  const dir = checkpointDir(staging, state.step);
  const tmp = `${dir}.tmp`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  writeAdapter(tmp, args, baseModel, state.lora, cfg);
  const opt: Record<string, TensorToWrite> = {};
  for (const [name, data] of state.optimizer) opt[name] = { dtype: 'F32', shape: [data.length], data };
  writeFileAtomic(join(tmp, OPTIMIZER_FILE), encodeSafetensors(opt));
  const trainerState = { format: FORMAT, step: state.step, epoch: state.epoch, batch_in_epoch: state.batchInEpoch, optimizer_step: state.optimizerStep, args };
  writeFileAtomic(join(tmp, TRAINER_STATE_FILE), new TextEncoder().encode(`${JSON.stringify(trainerState, null, 2)}\n`));
  rmSync(dir, { recursive: true, force: true });
  renameSync(tmp, dir);
  return dir;
}

// A checkpoint for --resume, checked against this run's args and model: every mismatch is listed.
export function readCheckpoint(dir: string, args: TrainArgs, cfg: ModelConfig): CheckpointState {
  const at = `--resume ${dir}`;
  const statePath = join(dir, TRAINER_STATE_FILE);
  if (!existsSync(statePath)) throw new Error(`${at}: no ${TRAINER_STATE_FILE}; point --resume at a checkpoint-<step> directory`);
  let raw: { format?: unknown; step?: unknown; epoch?: unknown; batch_in_epoch?: unknown; optimizer_step?: unknown; args?: Partial<TrainArgs> };
  try {
    raw = JSON.parse(readFileSync(statePath, 'utf8'));
  } catch (e) {
    throw new Error(`${at}: ${TRAINER_STATE_FILE} is not valid JSON (${(e as Error).message})`);
  }
  if (raw.format !== FORMAT) throw new Error(`${at}: ${TRAINER_STATE_FILE} has format ${JSON.stringify(raw.format)}, expected ${FORMAT}`);
  const count = (v: unknown, name: string): number => {
    if (!Number.isSafeInteger(v) || (v as number) < 0) throw new Error(`${at}: ${TRAINER_STATE_FILE} "${name}" must be an integer ≥ 0`);
    return v as number;
  };
  const saved = raw.args ?? {};
  const problems: string[] = [];
  for (const k of MUST_MATCH) {
    if (JSON.stringify(saved[k]) !== JSON.stringify(args[k])) problems.push(`${FLAG[k]} is ${JSON.stringify(args[k])} but the checkpoint was trained with ${JSON.stringify(saved[k])}`);
  }
  if (saved.data !== undefined && resolve(saved.data) !== resolve(args.data)) problems.push(`--data is ${args.data} but the checkpoint was trained on ${saved.data}`);
  if (problems.length) throw new Error(`${at} does not match this run: ${problems.join('; ')}`);

  const weights = readSafetensorsFile(join(dir, WEIGHTS_FILE)).tensors;
  const lora: LoraFactors[] = [];
  for (const { layer, target } of adapterModules(args, cfg)) {
    const [o, i] = targetShape(cfg, target);
    const get = (part: 'lora_A' | 'lora_B', shape: number[]): Float32Array => {
      const name = peftTensorName(layer, target, part);
      const t = weights.get(name);
      if (!t) throw new Error(`${at}: ${WEIGHTS_FILE} has no ${name}`);
      if (t.dtype !== 'F32' || JSON.stringify(t.shape) !== JSON.stringify(shape)) throw new Error(`${at}: ${name} is ${t.dtype} [${t.shape}], expected F32 [${shape}]`);
      return bytesToF32(t.bytes, t.dtype, name);
    };
    lora.push({ layer, target, a: get('lora_A', [args.rank, i]), b: get('lora_B', [o, args.rank]) });
  }
  if (weights.size !== lora.length * 2) throw new Error(`${at}: ${WEIGHTS_FILE} holds ${weights.size} tensors, expected ${lora.length * 2} for --targets and --layers`);
  const optimizer = new Map<string, Float32Array>();
  for (const [name, t] of readSafetensorsFile(join(dir, OPTIMIZER_FILE)).tensors) {
    if (t.dtype !== 'F32') throw new Error(`${at}: ${OPTIMIZER_FILE} tensor ${name} is ${t.dtype}, expected F32`);
    optimizer.set(name, bytesToF32(t.bytes, t.dtype, name));
  }
  return {
    step: count(raw.step, 'step'),
    epoch: count(raw.epoch, 'epoch'),
    batchInEpoch: count(raw.batch_in_epoch, 'batch_in_epoch'),
    optimizerStep: count(raw.optimizer_step, 'optimizer_step'),
    lora,
    optimizer,
  };
}
