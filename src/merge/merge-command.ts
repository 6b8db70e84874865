// `loraserve merge`: merge PEFT adapter directories into a new one, with the same math and writer
// as POST /v1/adapters/merge (merge-files.ts), in this process.
//   loraserve merge --model DIR --out DIR
//                   (--inputs DIR1,DIR2,… | --adapters NAME1,NAME2,… --adapters-dir STORE)
//                   --weights W1,W2,… --combination-type TYPE [--density D]
//                   [--majority-sign-method total|frequency] [--svd-rank R] [--svd-clamp Q] [--seed S]
// --model validates the inputs against the model they are for (shapes, layers). --out must not
// exist: the result (adapter_config.json, adapter_model.safetensors, merge_recipe.json) is written
// to a temporary directory beside it, then renamed to --out. A directory in the server's store
// named NAME is served as NAME after the next start (or POST /v1/load_lora_adapter).
// Errors name the flag (the caller prints them and exits 1).
import { parseFlags } from '../runtime/cli-args.ts';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { LoraserveError } from '../runtime/errors.ts';
import { writeFileAtomic } from '../runtime/safetensors.ts';
import { loadModelFiles } from '../runtime/model-loader.ts';
import { adapterVersion, readAdapterDir, CONFIG_FILE, WEIGHTS_FILE } from '../adapters/lora-adapter.ts';
import { RECIPE_FILE } from '../adapters/registry.ts';
import { mergeFiles, parseMergeRequest } from './merge-files.ts';
import type { MergedFiles, MergeInputFiles } from './merge-files.ts';

const FLAG_OF: Record<string, string> = {
  name: 'out', adapters: 'inputs', weights: 'weights', combination_type: 'combination-type', density: 'density',
  majority_sign_method: 'majority-sign-method', svd_rank: 'svd-rank', svd_clamp: 'svd-clamp', seed: 'seed', output: 'output',
};

const flagError = (flag: string, message: string) => new LoraserveError('invalid_request', `--${flag}: ${message}`, { param: flag });

export async function mergeCommand(argv: string[]): Promise<void> {
  let values: Record<string, string | undefined>;
  try {
    ({ values } = parseFlags({
      args: argv,
      options: {
        model: { type: 'string' }, out: { type: 'string' }, inputs: { type: 'string' }, adapters: { type: 'string' }, 'adapters-dir': { type: 'string' },
        weights: { type: 'string' }, 'combination-type': { type: 'string' }, density: { type: 'string' }, 'majority-sign-method': { type: 'string' },
        'svd-rank': { type: 'string' }, 'svd-clamp': { type: 'string' }, seed: { type: 'string' },
      },
      strict: true,
      allowPositionals: false,
    }) as { values: Record<string, string | undefined> });
  } catch (e) {
    throw new LoraserveError('invalid_request', `${(e as Error).message}; see \`loraserve merge\` in the README`);
  }
  const required = (flag: string): string => {
    const v = values[flag];
    if (v === undefined || v === '') throw flagError(flag, 'is required');
    return v;
  };
  const num = (flag: string): number | null => {
    const v = values[flag];
    if (v === undefined) return null;
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n)) throw flagError(flag, `must be a number, got ${JSON.stringify(v)}`);
    return n;
  };
  const list = (flag: string): string[] => required(flag).split(',').map((s) => s.trim());

  const modelDir = required('model');
  const out = resolve(required('out'));
  if (existsSync(out)) throw flagError('out', `${out} already exists; choose a new directory`);
  if (!existsSync(dirname(out))) throw flagError('out', `the parent directory ${dirname(out)} does not exist`);
  let dirs: string[];
  let inputFlag: string;
  if (values.inputs !== undefined) {
    if (values.adapters !== undefined || values['adapters-dir'] !== undefined) throw flagError('inputs', 'give either --inputs DIR1,DIR2 or --adapters NAME1,NAME2 with --adapters-dir, not both');
    inputFlag = 'inputs';
    dirs = list('inputs').map((d) => resolve(d));
  } else if (values.adapters !== undefined) {
    inputFlag = 'adapters';
    const store = resolve(required('adapters-dir'));
    dirs = list('adapters').map((n) => join(store, n));
  } else {
    throw flagError('inputs', 'is required: the adapter directories to merge (or --adapters NAME1,NAME2 --adapters-dir STORE)');
  }
  const weights = list('weights').map((w) => {
    const n = Number(w);
    if (w === '' || !Number.isFinite(n)) throw flagError('weights', `must be numbers separated by commas, got ${JSON.stringify(values.weights)}`);
    return n;
  });

  const flagged = <T>(fn: () => T): T => {
    try {
      return fn();
    } catch (e) {
      if (e instanceof LoraserveError && e.param && e.param in FLAG_OF) {
        const flag = e.param === 'adapters' ? inputFlag : FLAG_OF[e.param];
        throw new LoraserveError(e.code, `--${flag}: ${e.message}`, { param: flag, problems: e.problems });
      }
      throw e;
    }
  };
  const request = flagged(() => parseMergeRequest({
    name: basename(out),
    adapters: dirs.map((d) => d),
    weights,
    combination_type: required('combination-type'),
    density: num('density'),
    majority_sign_method: values['majority-sign-method'],
    svd_rank: num('svd-rank'),
    svd_clamp: num('svd-clamp'),
    seed: num('seed'),
  }));

  const model = loadModelFiles(modelDir);
  const inputs: MergeInputFiles[] = [];
  for (const d of dirs) {
    if (!existsSync(d)) throw flagError(inputFlag, `${d} does not exist`);
    const files = await readAdapterDir(d);
    inputs.push({ name: basename(d), version: adapterVersion(files), files });
  }
  const merged = flagged(() => mergeFiles(inputs, request, model.config, { maxRank: Number.MAX_SAFE_INTEGER, modelName: model.name }));
  writeMergedDir(out, merged);
  const r = merged.recipe;
  process.stdout.write(`merged ${inputs.length} adapter(s) with ${r.combination_applied} into ${out}: rank ${r.rank}${r.relative_error !== null ? `, relative error ${r.relative_error.toPrecision(4)}` : ''}\n`);
}

// The merged adapter's directory, atomically: written (fsynced) into a temporary directory beside
// `out`, then renamed to it; `out` must not exist.
export function writeMergedDir(out: string, merged: MergedFiles): void {
  const tmp = join(dirname(out), `.${basename(out)}.partial-${randomBytes(4).toString('hex')}`);
  mkdirSync(tmp);
  try {
    writeFileAtomic(join(tmp, CONFIG_FILE), merged.files.config);
    writeFileAtomic(join(tmp, WEIGHTS_FILE), merged.files.weights);
    writeFileAtomic(join(tmp, RECIPE_FILE), new TextEncoder().encode(`${JSON.stringify(merged.recipe, null, 2)}\n`));
    if (existsSync(out)) throw flagError('out', `${out} appeared while merging; the result is not written`);
    renameSync(tmp, out);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}
