// The trainer's output: a PEFT adapter the server's own reader accepts with the same numbers,
// the staging directory and --out rules, checkpoints for --resume, and the metrics log.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadModelFiles } from '../../src/runtime/model-loader.ts';
import { targetShape } from '../../src/runtime/model-targets.ts';
import { decodeAdapter, readAdapterDir } from '../../src/adapters/lora-adapter.ts';
import { parseTrainArgs } from '../../src/train/train-args.ts';
import type { TrainArgs } from '../../src/train/train-args.ts';
import { adapterConfig, adapterModules, OutputDir, stagingDirFor, writeAdapter } from '../../src/train/peft-output.ts';
import type { LoraFactors } from '../../src/train/peft-output.ts';
import { readCheckpoint, writeCheckpoint } from '../../src/train/checkpoint.ts';
import { MetricsLog, METRICS_FILE } from '../../src/train/metrics-log.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const cfg = loadModelFiles(STORIES_DIR).config;
const dir = mkdtempSync(join(tmpdir(), 'peft-output-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const argsFor = (out: string, ...extra: string[]): TrainArgs => parseTrainArgs(['--model', STORIES_DIR, '--data', join(dir, 'd.jsonl'), '--out', out, ...extra]);

// Factors with distinct, recognisable values.
function factors(args: TrainArgs, salt = 0): LoraFactors[] {
  return adapterModules(args, cfg).map(({ layer, target }, m) => {
    const [o, i] = targetShape(cfg, target);
    const a = Float32Array.from({ length: args.rank * i }, (_, k) => Math.sin(m * 1000 + k + salt));
    const b = Float32Array.from({ length: o * args.rank }, (_, k) => Math.cos(m * 1000 + k + salt) / 10);
    return { layer, target, a, b };
  });
}

describe('the adapter', () => {
  it('is accepted by the server\'s reader with the same numbers (all targets, all layers)', async () => {
    const args = argsFor(join(dir, 'unused'), '--rank', '4', '--alpha', '8');
    const d = join(dir, 'adapter-all');
    mkdirSync(d);
    const written = factors(args);
    writeAdapter(d, args, 'stories260K', written, cfg);
    const r = decodeAdapter(await readAdapterDir(d), cfg, { maxRank: 64, modelName: 'stories260K' });
    expect(r.problems).toEqual([]);
    expect(r.warnings).toEqual([]);
    const adapter = r.adapter!;
    expect(adapter.targets).toHaveLength(cfg.numLayers * 7);
    for (const [k, t] of adapter.targets.entries()) {
      expect([t.layer, t.target, t.rank, t.scale]).toEqual([written[k].layer, written[k].target, 4, 2]);
      expect(t.a).toEqual(written[k].a);
      expect(t.b).toEqual(written[k].b);
    }
  });

  it('writes layers_to_transform, rsLoRA and gaussian init; the reader agrees', async () => {
    const args = argsFor(join(dir, 'unused'), '--rank', '2', '--alpha', '4', '--use-rslora', '--targets', 'q_proj,down_proj', '--layers', '1,3', '--init', 'gaussian', '--dropout', '0.1');
    const d = join(dir, 'adapter-some');
    mkdirSync(d);
    writeAdapter(d, args, 'stories260K', factors(args), cfg);
    const config = JSON.parse(readFileSync(join(d, 'adapter_config.json'), 'utf8'));
    expect(config).toMatchObject({
      peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 2, lora_alpha: 4, use_rslora: true, target_modules: ['q_proj', 'down_proj'],
      layers_to_transform: [1, 3], lora_dropout: 0.1, bias: 'none', base_model_name_or_path: 'stories260K', init_lora_weights: 'gaussian',
    });
    const r = decodeAdapter(await readAdapterDir(d), cfg, { maxRank: 64, modelName: 'stories260K' });
    expect(r.problems).toEqual([]);
    expect(r.adapter!.targets.map((t) => `${t.layer}.${t.target}`)).toEqual(['1.q_proj', '1.down_proj', '3.q_proj', '3.down_proj']);
    expect(r.adapter!.targets[0].scale).toBeCloseTo(4 / Math.SQRT2);
    expect(adapterConfig(argsFor('x'), 'm').layers_to_transform).toBeNull();
    expect(adapterConfig(argsFor('x'), 'm').init_lora_weights).toBe(true);
  });

  it('refuses factors of the wrong shape, naming the tensor', () => {
    const args = argsFor(join(dir, 'unused'), '--targets', 'q_proj', '--layers', '0');
    const [f] = factors(args);
    expect(() => writeAdapter(dir, args, 'm', [{ ...f, a: f.a.subarray(1) }], cfg)).toThrow(/base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight: \d+ values, expected \[8, 64\]/);
  });
});

describe('the output directory', () => {
  it('stages beside --out and renames it into place at the end', () => {
    const out = join(dir, 'run1');
    const args = argsFor(out, '--targets', 'v_proj');
    const o = OutputDir.open(args);
    expect(o.staging).toBe(stagingDirFor(out));
    expect(existsSync(out)).toBe(false);
    o.finish(args, 'stories260K', factors(args), cfg);
    expect(existsSync(o.staging)).toBe(false);
    expect(readdirSync(out).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors', 'training_args.json']);
    expect(JSON.parse(readFileSync(join(out, 'training_args.json'), 'utf8'))).toEqual(JSON.parse(JSON.stringify(args)));
  });

  it('refuses an existing --out before training unless --overwrite, which replaces it at the end', () => {
    const out = join(dir, 'run2');
    mkdirSync(out);
    writeFileSync(join(out, 'old.txt'), 'old');
    expect(() => OutputDir.open(argsFor(out))).toThrow(`--out ${out} already exists; pass --overwrite to replace it`);
    const args = argsFor(out, '--overwrite', '--targets', 'v_proj');
    const o = OutputDir.open(args);
    expect(readFileSync(join(out, 'old.txt'), 'utf8')).toBe('old'); // untouched while training
    o.finish(args, 'stories260K', factors(args), cfg);
    expect(existsSync(join(out, 'old.txt'))).toBe(false);
    expect(existsSync(join(out, 'adapter_model.safetensors'))).toBe(true);
    expect(readdirSync(dir).filter((n) => n.includes('.old-'))).toEqual([]);
  });

  it('a failed run leaves no adapter at --out, and its staging directory is refused unless resumed or overwritten', () => {
    const out = join(dir, 'run3');
    const o = OutputDir.open(argsFor(out));
    mkdirSync(join(o.staging, 'checkpoint-5'));
    // the run fails here: no finish()
    expect(existsSync(out)).toBe(false);
    expect(() => OutputDir.open(argsFor(out))).toThrow(`${o.staging} holds an unfinished run of --out ${out}; resume it with --resume ${o.staging}/checkpoint-<step>`);
    expect(() => OutputDir.open(argsFor(out, '--resume', join(o.staging, 'checkpoint-5')))).not.toThrow();
    expect(existsSync(join(o.staging, 'checkpoint-5'))).toBe(true);
    OutputDir.open(argsFor(out, '--overwrite'));
    expect(existsSync(join(o.staging, 'checkpoint-5'))).toBe(false);
  });
});

describe('checkpoints', () => {
  const out = join(dir, 'ck');
  const args = argsFor(out, '--rank', '2', '--targets', 'q_proj,up_proj', '--layers', '0,2', '--seed', '3');
  const staging = OutputDir.open(args).staging;
  const lora = factors(args, 7);
  const optimizer = new Map(lora.flatMap((f, m) => [[`m${m}.exp_avg`, f.a.map((x) => x * 2)], [`m${m}.exp_avg_sq`, f.b.map((x) => x * x)]] as [string, Float32Array][]));
  const ck = writeCheckpoint(staging, { step: 40, epoch: 1, batchInEpoch: 3, optimizerStep: 40, lora, optimizer }, args, 'stories260K', cfg);

  it('round-trips step, data position, factors and optimizer state', () => {
    expect(ck).toBe(join(staging, 'checkpoint-40'));
    expect(existsSync(`${ck}.tmp`)).toBe(false);
    const back = readCheckpoint(ck, args, cfg);
    expect([back.step, back.epoch, back.batchInEpoch, back.optimizerStep]).toEqual([40, 1, 3, 40]);
    expect(back.lora).toEqual(lora);
    expect(back.optimizer).toEqual(optimizer);
  });

  it('is itself a servable adapter', async () => {
    const r = decodeAdapter(await readAdapterDir(ck), cfg, { maxRank: 64, modelName: 'stories260K' });
    expect(r.problems).toEqual([]);
  });

  it('allows a longer run with another lr, and refuses args that change the adapter or the data order', () => {
    expect(() => readCheckpoint(ck, { ...args, lr: 1e-3, duration: { kind: 'steps', steps: 500 } }, cfg)).not.toThrow();
    expect(() => readCheckpoint(ck, { ...args, rank: 4, seed: 0 }, cfg)).toThrow(`--resume ${ck} does not match this run: --rank is 4 but the checkpoint was trained with 2; --seed is 0 but the checkpoint was trained with 3`);
    expect(() => readCheckpoint(ck, { ...args, targets: ['q_proj'] }, cfg)).toThrow('--targets is ["q_proj"] but the checkpoint was trained with ["q_proj","up_proj"]');
    expect(() => readCheckpoint(ck, { ...args, data: join(dir, 'other.jsonl') }, cfg)).toThrow(/--data is .*other\.jsonl but the checkpoint was trained on/);
    expect(() => readCheckpoint(join(dir, 'nowhere'), args, cfg)).toThrow('no trainer_state.json; point --resume at a checkpoint-<step> directory');
  });
});

describe('the metrics log', () => {
  it('appends JSON lines and drops the steps after a resumed checkpoint', () => {
    const log = new MetricsLog(join(dir, METRICS_FILE));
    for (let step = 1; step <= 5; step++) log.append({ step, loss: 3 - step / 10, lr: 1e-4, grad_norm: 0.5, tokens_per_s: 1000, ...(step === 4 ? { eval_loss: 2.9 } : {}) });
    expect(log.read().map((r) => r.step)).toEqual([1, 2, 3, 4, 5]);
    expect(log.read()[3].eval_loss).toBe(2.9);
    log.truncateAfter(3);
    expect(log.read().map((r) => r.step)).toEqual([1, 2, 3]);
    writeFileSync(log.path, '{"step":1}\n{oops\n');
    expect(() => log.read()).toThrow(`${log.path}:2: not valid JSON`);
  });
});
