// The trained adapter on disk, in PEFT's format, so the server (and PEFT) load it as is:
//   adapter_config.json        LoraConfig fields (shared/reference/formats-and-apis.md §1.2)
//   adapter_model.safetensors  F32 base_model.model.model.layers.N.<self_attn|mlp>.<proj>.lora_A.weight [r, in]
//                              and ….lora_B.weight [out, r]
//   training_args.json         the TrainArgs of the run
//
// The output directory is built in a staging directory beside --out (`<out>.partial`) and renamed
// to --out only when the run ends well, so a failed run never leaves a half adapter at --out. The
// staging directory also holds the run's checkpoints and metrics while it trains, so a failed run
// can be resumed from `<out>.partial/checkpoint-<step>`; a successful one keeps them under --out.
// Whether --out (and a stale staging directory) may be replaced is decided by OutputDir.open,
// before training starts.
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { encodeSafetensors, writeFileAtomic } from '../runtime/safetensors.ts';
import type { TensorToWrite } from '../runtime/safetensors.ts';
import { targetShape } from '../runtime/model-targets.ts';
import type { Target } from '../runtime/model-targets.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import { CONFIG_FILE, WEIGHTS_FILE, peftTensorName } from '../adapters/lora-adapter.ts';
import type { TrainArgs } from './train-args.ts';

export const TRAINING_ARGS_FILE = 'training_args.json';

// One targeted module's factors, in PEFT's layout.
export interface LoraFactors {
  layer: number;
  target: Target;
  a: Float32Array; // lora_A [r, in]
  b: Float32Array; // lora_B [out, r]
}

// adapter_config.json as PEFT writes it (sorted keys); target_modules is the explicit list (PEFT
// saves "all-linear" expanded too).
export function adapterConfig(args: TrainArgs, baseModel: string): Record<string, unknown> {
  return {
    base_model_name_or_path: baseModel,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: args.init === 'gaussian' ? 'gaussian' : true,
    layers_pattern: null,
    layers_to_transform: args.layers,
    lora_alpha: args.alpha,
    lora_dropout: args.dropout,
    modules_to_save: null,
    peft_type: 'LORA',
    r: args.rank,
    target_modules: args.targets,
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: args.useRslora,
  };
}

// The modules an adapter with these args has, in layer then TARGETS order.
export function adapterModules(args: Pick<TrainArgs, 'targets' | 'layers'>, cfg: Pick<ModelConfig, 'numLayers'>): { layer: number; target: Target }[] {
  const layers = args.layers ?? Array.from({ length: cfg.numLayers }, (_, i) => i);
  return layers.flatMap((layer) => args.targets.map((target) => ({ layer, target })));
}

// The factors → safetensors tensors, each checked against the model's shapes.
export function adapterTensors(factors: readonly LoraFactors[], rank: number, cfg: ModelConfig): Record<string, TensorToWrite> {
  const out: Record<string, TensorToWrite> = {};
  for (const f of factors) {
    const [o, i] = targetShape(cfg, f.target);
    if (f.a.length !== rank * i) throw new Error(`${peftTensorName(f.layer, f.target, 'lora_A')}: ${f.a.length} values, expected [${rank}, ${i}]`);
    if (f.b.length !== o * rank) throw new Error(`${peftTensorName(f.layer, f.target, 'lora_B')}: ${f.b.length} values, expected [${o}, ${rank}]`);
    out[peftTensorName(f.layer, f.target, 'lora_A')] = { dtype: 'F32', shape: [rank, i], data: f.a };
    out[peftTensorName(f.layer, f.target, 'lora_B')] = { dtype: 'F32', shape: [o, rank], data: f.b };
  }
  return out;
}

// adapter_config.json + adapter_model.safetensors into a directory (which must exist).
export function writeAdapter(dir: string, args: TrainArgs, baseModel: string, factors: readonly LoraFactors[], cfg: ModelConfig): void {
  writeFileAtomic(join(dir, WEIGHTS_FILE), encodeSafetensors(adapterTensors(factors, args.rank, cfg)));
  writeFileAtomic(join(dir, CONFIG_FILE), new TextEncoder().encode(`${JSON.stringify(adapterConfig(args, baseModel), null, 2)}\n`));
}

export function stagingDirFor(out: string): string {
  return `${resolve(out)}.partial`;
}

// The run's output: a staging directory beside --out, renamed to --out by finish().
export class OutputDir {
  private constructor(readonly out: string, readonly staging: string, private readonly overwrite: boolean) {}

  // Before training: refuses an existing --out without --overwrite, and a stale staging directory
  // (an unfinished run's checkpoints) unless the run resumes from inside it or --overwrite discards it.
  static open(args: Pick<TrainArgs, 'out' | 'overwrite' | 'resume'>): OutputDir {
    const out = resolve(args.out);
    const staging = stagingDirFor(out);
    if (existsSync(out) && !args.overwrite) throw new Error(`--out ${args.out} already exists; pass --overwrite to replace it, or choose another --out`);
    const resumingHere = args.resume !== null && dirname(resolve(args.resume)) === staging;
    if (existsSync(staging) && !resumingHere) {
      if (!args.overwrite) throw new Error(`${staging} holds an unfinished run of --out ${args.out}; resume it with --resume ${staging}/checkpoint-<step>, or pass --overwrite to discard it`);
      rmSync(staging, { recursive: true, force: true });
    }
    mkdirSync(staging, { recursive: true });
    return new OutputDir(out, staging, args.overwrite);
  }

  path(name: string): string {
    return join(this.staging, name);
  }

  writeTrainingArgs(args: TrainArgs): void {
    writeFileSync(this.path(TRAINING_ARGS_FILE), `${JSON.stringify(args, null, 2)}\n`);
  }

  // The final adapter, then the rename to --out. An --out that exists (allowed by --overwrite) is
  // moved aside first and removed after, so --out is always either the old or the new adapter.
  finish(args: TrainArgs, baseModel: string, factors: readonly LoraFactors[], cfg: ModelConfig): string {
    writeAdapter(this.staging, args, baseModel, factors, cfg);
    this.writeTrainingArgs(args);
    let old: string | null = null;
    if (existsSync(this.out)) {
      if (!this.overwrite) throw new Error(`--out ${this.out} appeared while training; the adapter is left in ${this.staging}`);
      old = join(dirname(this.out), `.${basename(this.out)}.old-${process.pid}`);
      renameSync(this.out, old);
    }
    renameSync(this.staging, this.out);
    if (old) rmSync(old, { recursive: true, force: true });
    return this.out;
  }
}
