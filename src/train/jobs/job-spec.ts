// A job request (already shaped by its JSON schema in the server) → the resolved job settings,
// with every rule that needs the model or the server's limits, and then → the trainer's TrainArgs.
// Defaults ("auto" and missing fields): n_epochs 3, batch_size 8, learning_rate_multiplier 1
// (learning rate BASE_LR), rank 8, alpha 16, all seven linear targets, dropout 0, seq_len 256
// (at most the model's context). Refusals are 400s naming the field.
import { join } from 'node:path';
import { invalidField } from '../../runtime/errors.ts';
import { TARGETS } from '../../runtime/model-targets.ts';
import type { Target } from '../../runtime/model-targets.ts';
import type { ModelConfig } from '../../runtime/model-config.ts';
import { scaleProblem } from '../../adapters/peft-config.ts';
import type { TrainArgs } from '../train-args.ts';
import type { Hyperparameters, LoraSettings } from './job-types.ts';

export const BASE_LR = 2e-4;
export const DEFAULTS = { n_epochs: 3, batch_size: 8, learning_rate_multiplier: 1, rank: 8, alpha: 16, dropout: 0, seq_len: 256 } as const;

type Auto<T> = T | 'auto' | null | undefined;
export interface HyperparametersIn { n_epochs?: Auto<number>; batch_size?: Auto<number>; learning_rate_multiplier?: Auto<number> }
export interface LoraIn { rank?: number | null; alpha?: number | null; targets?: string[] | 'all-linear' | null; learning_rate?: number | null; dropout?: number | null; seq_len?: number | null }

export interface JobRequest {
  model: string;
  training_file: string;
  validation_file?: string | null;
  suffix?: string | null;
  seed?: number | null;
  metadata?: Record<string, string> | null;
  hyperparameters?: HyperparametersIn | null;
  method?: { type: string; supervised?: { hyperparameters?: HyperparametersIn | null } | null } | null;
  lora?: LoraIn | null;
}

export const SUFFIX_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$';

export function resolveSpec(req: JobRequest, model: ModelConfig, maxRank: number): { hyperparameters: Hyperparameters; lora: LoraSettings } {
  if (req.method && req.method.type !== 'supervised') throw invalidField('method.type', `only "supervised" fine-tuning is supported, got ${JSON.stringify(req.method.type)}`);
  const legacy = req.hyperparameters ?? null;
  const method = req.method?.supervised?.hyperparameters ?? null;
  if (legacy && method) throw invalidField('hyperparameters', "give the hyperparameters once: in 'method.supervised.hyperparameters' (or, legacy, top-level 'hyperparameters'), not both");
  const hp = method ?? legacy ?? {};
  const pick = (k: keyof HyperparametersIn): number => {
    const v = hp[k];
    return v === undefined || v === null || v === 'auto' ? DEFAULTS[k] : v;
  };
  const hyperparameters: Hyperparameters = { n_epochs: pick('n_epochs'), batch_size: pick('batch_size'), learning_rate_multiplier: pick('learning_rate_multiplier') };
  const l = req.lora ?? {};
  const rank = l.rank ?? DEFAULTS.rank;
  if (rank > maxRank) throw invalidField('lora.rank', `'lora.rank' must be ≤ ${maxRank} (the server's --max-lora-rank), got ${rank}`);
  if (rank > model.hiddenSize) throw invalidField('lora.rank', `'lora.rank' must be ≤ the model's hidden size ${model.hiddenSize}, got ${rank}`);
  const alpha = l.alpha ?? DEFAULTS.alpha;
  const scale = scaleProblem(`'lora.alpha' ${alpha} with 'lora.rank' ${rank}`, alpha, rank, false);
  if (scale) throw invalidField('lora.alpha', scale);
  let targets: Target[];
  if (l.targets === undefined || l.targets === null || l.targets === 'all-linear') targets = [...TARGETS];
  else {
    const set = new Set<string>();
    for (const [i, t] of l.targets.entries()) {
      if (!(TARGETS as readonly string[]).includes(t)) throw invalidField(`lora.targets[${i}]`, `'lora.targets[${i}]' must be one of ${TARGETS.join(', ')}, got ${JSON.stringify(t)}`);
      if (set.has(t)) throw invalidField(`lora.targets[${i}]`, `'lora.targets' names ${t} twice`);
      set.add(t);
    }
    targets = TARGETS.filter((t) => set.has(t));
  }
  const seqLen = l.seq_len ?? Math.min(DEFAULTS.seq_len, model.maxPositions);
  if (seqLen > model.maxPositions) throw invalidField('lora.seq_len', `'lora.seq_len' must be ≤ the model's context of ${model.maxPositions} tokens, got ${seqLen}`);
  return {
    hyperparameters,
    lora: { rank, alpha, targets, learning_rate: l.learning_rate ?? BASE_LR * hyperparameters.learning_rate_multiplier, dropout: l.dropout ?? DEFAULTS.dropout, seq_len: seqLen },
  };
}

// The trainer's arguments for a job: its data files, its output under the job's directory,
// an eval pass and a checkpoint once per epoch (examples / batch size steps).
export function trainArgsFor(p: {
  modelDir: string; modelName: string; jobDir: string; trainPath: string; validationPath: string | null; examples: number;
  trainFile: string; validationFile: string | null;
  hyperparameters: Hyperparameters; lora: LoraSettings; seed: number; threads: number;
}): TrainArgs {
  const stepsPerEpoch = Math.max(1, Math.ceil(p.examples / p.hyperparameters.batch_size));
  return {
    model: p.modelDir,
    baseModelName: p.modelName,
    data: p.trainPath,
    out: join(p.jobDir, 'adapter'),
    overwrite: true,
    rank: p.lora.rank,
    alpha: p.lora.alpha,
    useRslora: false,
    targets: p.lora.targets as Target[],
    layers: null,
    dropout: p.lora.dropout,
    init: 'kaiming',
    lr: p.lora.learning_rate,
    lrSchedule: 'linear',
    warmupSteps: 0,
    duration: { kind: 'epochs', epochs: p.hyperparameters.n_epochs },
    batchSize: p.hyperparameters.batch_size,
    gradAccum: 1,
    seqLen: p.lora.seq_len,
    packing: false,
    weightDecay: 0,
    maxGradNorm: 1,
    seed: p.seed,
    evalData: p.validationPath,
    evalSplit: 0,
    evalEvery: p.validationPath ? stepsPerEpoch : null,
    saveEvery: stepsPerEpoch,
    resume: null,
    threads: p.threads,
    names: { data: `training_file ${p.trainFile}`, evalData: p.validationFile ? `validation_file ${p.validationFile}` : null, seqLen: 'lora.seq_len' },
  };
}
