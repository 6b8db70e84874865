// The trainer's command line (`npm run train -- --model DIR --data FILE --out DIR [options]`, or
// `loraserve train …`) → a typed, validated TrainArgs. Flags are kebab-case, parsed strictly (an
// unknown flag or a stray positional is an error). Every refusal names the flag and its limit, so a
// bad run stops before any model is loaded.
//
// Three checks happen in stages because they need different things:
//   parseTrainArgs(argv)           syntax and ranges: pure, needs nothing
//   checkArgsForModel(args, model) --layers, --seq-len, --rank against the model's config
//   checkPaths(args)               files exist, --out is free (or --overwrite), before training starts
// Defaults: with neither --steps nor --epochs the run is one epoch (--epochs 1); with neither
// --eval-data nor --eval-split, 5% of the data is held out (--eval-split 0.05; 0 disables eval).
import { existsSync, statSync } from 'node:fs';
import { parseFlags } from '../runtime/cli-args.ts';
import { TARGETS } from '../runtime/model-targets.ts';
import type { Target } from '../runtime/model-targets.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import { scaleProblem } from '../adapters/peft-config.ts';
import type { LoraInit } from './lora-init.ts';

export type LrSchedule = 'cosine' | 'linear' | 'constant';
// How long to train: a number of optimizer steps, or of passes over the training examples.
export type Duration = { kind: 'steps'; steps: number } | { kind: 'epochs'; epochs: number };

export interface TrainArgs {
  model: string;
  data: string;
  out: string;
  overwrite: boolean;
  rank: number;
  alpha: number;
  useRslora: boolean;
  targets: Target[];            // 'all-linear' expands to all seven, in TARGETS order
  layers: number[] | null;      // PEFT layers_to_transform (sorted, unique); null: every layer
  dropout: number;              // lora_dropout, in [0, 1)
  init: LoraInit;               // PEFT init_lora_weights: true (kaiming-uniform A) or "gaussian"
  lr: number;
  lrSchedule: LrSchedule;
  warmupSteps: number;
  duration: Duration;
  batchSize: number;            // sequences per micro-batch
  gradAccum: number;            // micro-batches per optimizer step
  seqLen: number;               // tokens per row (T)
  packing: boolean;
  weightDecay: number;
  maxGradNorm: number;          // 0: no clipping
  seed: number;
  evalData: string | null;
  evalSplit: number;            // fraction of --data held out; 0 when --eval-data is given
  evalEvery: number | null;     // steps; null: evaluate at the end only
  saveEvery: number | null;     // steps; null: no intermediate checkpoints
  resume: string | null;        // a checkpoint-<step> directory
  threads: number | null;       // onnxruntime intra-op threads; null: all cores (session.ts intraOpThreadCount)
  // how data errors name the files and the length bound, where not the paths and flags (an API job
  // names its file ids and lora.seq_len: a client never sees a server path); absent from the CLI
  names?: { data: string; evalData: string | null; seqLen: string };
  // what adapter_config.json records as base_model_name_or_path; absent: --model as given (the CLI).
  // A job records the served model's name: no server path in its files, and its adapters merge
  // with others trained on that model (merge-files.ts planInputs)
  baseModelName?: string;
}

const OPTIONS = {
  model: { type: 'string' },
  data: { type: 'string' },
  out: { type: 'string' },
  overwrite: { type: 'boolean', default: false },
  rank: { type: 'string' },
  alpha: { type: 'string' },
  'use-rslora': { type: 'boolean', default: false },
  targets: { type: 'string' },
  layers: { type: 'string' },
  dropout: { type: 'string' },
  init: { type: 'string' },
  lr: { type: 'string' },
  'lr-schedule': { type: 'string' },
  'warmup-steps': { type: 'string' },
  steps: { type: 'string' },
  epochs: { type: 'string' },
  'batch-size': { type: 'string' },
  'grad-accum': { type: 'string' },
  'seq-len': { type: 'string' },
  packing: { type: 'boolean', default: false },
  'weight-decay': { type: 'string' },
  'max-grad-norm': { type: 'string' },
  seed: { type: 'string' },
  'eval-data': { type: 'string' },
  'eval-split': { type: 'string' },
  'eval-every': { type: 'string' },
  'save-every': { type: 'string' },
  resume: { type: 'string' },
  threads: { type: 'string' },
} as const;

const MAX_RANK = 1024;

export function parseTrainArgs(argv: string[]): TrainArgs {
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseFlags({ args: argv, options: OPTIONS, strict: true, allowPositionals: false }).values;
  } catch (e) {
    throw new Error(`train: ${(e as Error).message}`);
  }
  const str = (flag: string): string | undefined => values[flag] as string | undefined;
  const required = (flag: string): string => {
    const v = str(flag);
    if (v === undefined || v === '') throw new Error(`--${flag} is required`);
    return v;
  };
  const int = (flag: string, def: number, min: number, max = Number.MAX_SAFE_INTEGER): number => {
    const v = str(flag);
    if (v === undefined) return def;
    const n = /^\s*[+-]?\d+\s*$/.test(v) ? Number(v) : NaN;
    const range = max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `in [${min}, ${max}]`;
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new Error(`--${flag} must be an integer ${range}, got ${v}`);
    return n;
  };
  const optInt = (flag: string, min: number): number | null => (str(flag) === undefined ? null : int(flag, 0, min));
  // a finite number in a range; `lo`/`hi` say whether the bounds are open
  const num = (flag: string, def: number, range: { min?: number; minOpen?: boolean; max?: number; maxOpen?: boolean }, limit: string): number => {
    const v = str(flag);
    if (v === undefined) return def;
    const n = v.trim() === '' ? NaN : Number(v);
    const bad = !Number.isFinite(n)
      || (range.min !== undefined && (range.minOpen ? n <= range.min : n < range.min))
      || (range.max !== undefined && (range.maxOpen ? n >= range.max : n > range.max));
    if (bad) throw new Error(`--${flag} must be ${limit}, got ${v}`);
    return n;
  };
  const choice = <T extends string>(flag: string, def: T, allowed: readonly T[]): T => {
    const v = str(flag);
    if (v === undefined) return def;
    if (!(allowed as readonly string[]).includes(v)) throw new Error(`--${flag} must be one of ${allowed.join(', ')}, got ${v}`);
    return v as T;
  };

  const rank = int('rank', 8, 1, MAX_RANK);
  const alpha = num('alpha', 16, { min: 0, minOpen: true }, 'a number > 0');
  const useRslora = values['use-rslora'] === true;
  const scale = scaleProblem(`--alpha ${alpha} with --rank ${rank}`, alpha, rank, useRslora);
  if (scale) throw new Error(scale);

  if (str('steps') !== undefined && str('epochs') !== undefined) throw new Error('--steps and --epochs cannot both be given: choose how long to train by one of them');
  const duration: Duration = str('steps') !== undefined
    ? { kind: 'steps', steps: int('steps', 0, 1) }
    : { kind: 'epochs', epochs: num('epochs', 1, { min: 0, minOpen: true, max: 10_000 }, 'a number in (0, 10000]') };

  const evalData = str('eval-data') ?? null;
  if (evalData !== null && str('eval-split') !== undefined) throw new Error('--eval-data and --eval-split cannot both be given: eval examples come from one of them');
  if (evalData === '') throw new Error('--eval-data must name a file');

  return {
    model: required('model'),
    data: required('data'),
    out: required('out'),
    overwrite: values.overwrite === true,
    rank,
    alpha,
    useRslora,
    targets: parseTargets(str('targets')),
    layers: parseLayers(str('layers')),
    dropout: num('dropout', 0, { min: 0, max: 1, maxOpen: true }, 'a number in [0, 1)'),
    init: choice<LoraInit>('init', 'kaiming', ['kaiming', 'gaussian']),
    lr: num('lr', 2e-4, { min: 0, minOpen: true }, 'a number > 0'),
    lrSchedule: choice<LrSchedule>('lr-schedule', 'cosine', ['cosine', 'linear', 'constant']),
    warmupSteps: int('warmup-steps', 0, 0),
    duration,
    batchSize: int('batch-size', 8, 1),
    gradAccum: int('grad-accum', 1, 1),
    seqLen: int('seq-len', 256, 2), // at least one (input, target) pair
    packing: values.packing === true,
    weightDecay: num('weight-decay', 0, { min: 0 }, 'a number ≥ 0'),
    maxGradNorm: num('max-grad-norm', 1.0, { min: 0 }, 'a number ≥ 0 (0 disables clipping)'),
    seed: int('seed', 0, 0),
    evalData,
    evalSplit: evalData !== null ? 0 : num('eval-split', 0.05, { min: 0, max: 0.5 }, 'a number in [0, 0.5]'),
    evalEvery: optInt('eval-every', 1),
    saveEvery: optInt('save-every', 1),
    resume: str('resume') ?? null,
    threads: optInt('threads', 1),
  };
}

// --targets: a comma list of projections, or all-linear (every linear layer but lm_head, as PEFT).
function parseTargets(v: string | undefined): Target[] {
  if (v === undefined || v.trim().toLowerCase() === 'all-linear') return [...TARGETS];
  const names = v.split(',').map((s) => s.trim());
  const out = new Set<Target>();
  for (const n of names) {
    if (!(TARGETS as readonly string[]).includes(n)) throw new Error(`--targets: ${JSON.stringify(n)} is not a LoRA target; use a comma list of ${TARGETS.join(', ')}, or all-linear`);
    if (out.has(n as Target)) throw new Error(`--targets names ${n} twice`);
    out.add(n as Target);
  }
  return TARGETS.filter((t) => out.has(t));
}

// --layers: a comma list of layer indices (0-based).
function parseLayers(v: string | undefined): number[] | null {
  if (v === undefined) return null;
  const out = new Set<number>();
  for (const s of v.split(',')) {
    const n = /^\s*\d+\s*$/.test(s) ? Number(s) : NaN;
    if (!Number.isSafeInteger(n)) throw new Error(`--layers must be a comma list of layer indices (integers ≥ 0), got ${JSON.stringify(s.trim())}`);
    if (out.has(n)) throw new Error(`--layers names layer ${n} twice`);
    out.add(n);
  }
  return [...out].sort((a, b) => a - b);
}

// The checks that need the model's config.json: layer indices, sequence length, rank.
export function checkArgsForModel(args: TrainArgs, model: Pick<ModelConfig, 'numLayers' | 'maxPositions' | 'hiddenSize'>): void {
  for (const l of args.layers ?? []) {
    if (l >= model.numLayers) throw new Error(`--layers: layer ${l} does not exist; the model has ${model.numLayers} layers (0 to ${model.numLayers - 1})`);
  }
  if (args.seqLen > model.maxPositions) throw new Error(`--seq-len must be ≤ the model's context of ${model.maxPositions} tokens, got ${args.seqLen}`);
  if (args.rank > model.hiddenSize) throw new Error(`--rank must be ≤ the model's hidden size ${model.hiddenSize}, got ${args.rank}`);
}

// The checks on the file system, before any training: inputs exist, --out is free unless --overwrite.
// (The output's staging directory beside --out is checked when it is created, peft-output.ts.)
export function checkPaths(args: TrainArgs): void {
  const file = (flag: string, path: string | null): void => {
    if (path === null) return;
    if (!existsSync(path)) throw new Error(`--${flag} ${path} does not exist`);
    if (!statSync(path).isFile()) throw new Error(`--${flag} ${path} is not a file`);
  };
  const dir = (flag: string, path: string | null): void => {
    if (path === null) return;
    if (!existsSync(path) || !statSync(path).isDirectory()) throw new Error(`--${flag} ${path} is not a directory`);
  };
  dir('model', args.model);
  file('data', args.data);
  file('eval-data', args.evalData);
  dir('resume', args.resume);
  if (existsSync(args.out) && !args.overwrite) throw new Error(`--out ${args.out} already exists; pass --overwrite to replace it, or choose another --out`);
}

export interface ScheduleParams {
  lr: number;
  lrSchedule: LrSchedule;
  warmupSteps: number;
  totalSteps: number;           // optimizer steps in the whole run
}

// The learning rate of optimizer step `step` (0-based), as transformers' get_*_schedule_with_warmup:
// linear warmup from 0 over warmupSteps (so step 0 has lr 0 when there is warmup), then cosine or
// linear decay that reaches 0 at step totalSteps (the step after the last), or constant.
export function lrAt(step: number, p: ScheduleParams): number {
  if (step < p.warmupSteps) return (p.lr * step) / p.warmupSteps;
  if (p.lrSchedule === 'constant') return p.lr;
  const span = Math.max(1, p.totalSteps - p.warmupSteps);
  const progress = Math.min(1, (step - p.warmupSteps) / span);
  return p.lrSchedule === 'linear' ? p.lr * (1 - progress) : p.lr * 0.5 * (1 + Math.cos(Math.PI * progress));
}
