// The trainer's flags: defaults, and every refusal naming its flag and limit.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkArgsForModel, checkPaths, lrAt, parseTrainArgs } from '../../src/train/train-args.ts';
import type { ScheduleParams } from '../../src/train/train-args.ts';

const BASE = ['--model', 'm', '--data', 'd.jsonl', '--out', 'o'];
const parse = (...extra: string[]) => parseTrainArgs([...BASE, ...extra]);

describe('parseTrainArgs', () => {
  it('fills the documented defaults', () => {
    const a = parse();
    expect(a).toMatchObject({
      model: 'm', data: 'd.jsonl', out: 'o', overwrite: false, rank: 8, alpha: 16, useRslora: false,
      targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], layers: null,
      dropout: 0, init: 'kaiming', lr: 2e-4, lrSchedule: 'cosine', warmupSteps: 0, duration: { kind: 'epochs', epochs: 1 },
      batchSize: 8, gradAccum: 1, seqLen: 256, packing: false, weightDecay: 0, maxGradNorm: 1, seed: 0,
      evalData: null, evalSplit: 0.05, evalEvery: null, saveEvery: null, resume: null, threads: null,
    });
  });

  it('reads every flag', () => {
    const a = parse('--overwrite', '--rank', '4', '--alpha', '8', '--use-rslora', '--targets', 'v_proj,q_proj', '--layers', '3,0,1',
      '--dropout', '0.1', '--init', 'gaussian', '--lr', '1e-3', '--lr-schedule', 'linear', '--warmup-steps', '10', '--steps', '100',
      '--batch-size', '4', '--grad-accum', '2', '--seq-len', '128', '--packing', '--weight-decay', '0.01', '--max-grad-norm', '0',
      '--seed', '7', '--eval-data', 'e.jsonl', '--eval-every', '20', '--save-every', '50', '--resume', 'ck', '--threads', '2');
    expect(a).toMatchObject({
      overwrite: true, rank: 4, alpha: 8, useRslora: true, targets: ['q_proj', 'v_proj'], layers: [0, 1, 3], dropout: 0.1, init: 'gaussian',
      lr: 1e-3, lrSchedule: 'linear', warmupSteps: 10, duration: { kind: 'steps', steps: 100 }, batchSize: 4, gradAccum: 2, seqLen: 128,
      packing: true, weightDecay: 0.01, maxGradNorm: 0, seed: 7, evalData: 'e.jsonl', evalSplit: 0, evalEvery: 20, saveEvery: 50, resume: 'ck', threads: 2,
    });
    expect(parse('--targets', 'all-linear').targets).toHaveLength(7);
    expect(parse('--epochs', '2.5').duration).toEqual({ kind: 'epochs', epochs: 2.5 });
    expect(parse('--eval-split', '0').evalSplit).toBe(0);
  });

  const refusals: [string[], RegExp][] = [
    [['--rank', '0'], /^--rank must be an integer in \[1, 1024\], got 0$/],
    [['--rank', '2.5'], /--rank must be an integer/],
    [['--rank', 'eight'], /--rank must be an integer .* got eight/],
    [['--alpha', '0'], /--alpha must be a number > 0, got 0/],
    [['--alpha', '1e9'], /--alpha 1000000000 with --rank 8 gives a scale of .*limit is \|scale\| ≤ 1000/],
    [['--lr=-1e-4'], /^--lr must be a number > 0, got -1e-4$/],
    [['--lr', '0'], /--lr must be a number > 0/],
    [['--lr', 'NaN'], /--lr must be a number > 0/],
    [['--targets', 'q_proj,lm_head'], /--targets: "lm_head" is not a LoRA target; use a comma list of q_proj, .*all-linear/],
    [['--targets', 'q_proj,q_proj'], /--targets names q_proj twice/],
    [['--layers', '1,x'], /--layers must be a comma list of layer indices .* got "x"/],
    [['--layers=-1'], /--layers must be a comma list/],
    [['--layers', '2,2'], /--layers names layer 2 twice/],
    [['--dropout', '1'], /--dropout must be a number in \[0, 1\), got 1/],
    [['--dropout=-0.1'], /--dropout must be a number in \[0, 1\)/],
    [['--init', 'pissa'], /--init must be one of kaiming, gaussian, got pissa/],
    [['--lr-schedule', 'step'], /--lr-schedule must be one of cosine, linear, constant, got step/],
    [['--warmup-steps=-1'], /--warmup-steps must be an integer ≥ 0, got -1/],
    [['--steps', '0'], /--steps must be an integer ≥ 1, got 0/],
    [['--epochs', '0'], /--epochs must be a number in \(0, 10000\], got 0/],
    [['--steps', '10', '--epochs', '1'], /--steps and --epochs cannot both be given/],
    [['--batch-size', '0'], /--batch-size must be an integer ≥ 1, got 0/],
    [['--grad-accum', '0'], /--grad-accum must be an integer ≥ 1, got 0/],
    [['--seq-len', '1'], /--seq-len must be an integer ≥ 2, got 1/],
    [['--weight-decay=-0.5'], /--weight-decay must be a number ≥ 0, got -0.5/],
    [['--max-grad-norm=-1'], /--max-grad-norm must be a number ≥ 0 \(0 disables clipping\), got -1/],
    [['--seed=-3'], /--seed must be an integer ≥ 0, got -3/],
    [['--eval-split', '0.6'], /--eval-split must be a number in \[0, 0.5\], got 0.6/],
    [['--eval-data', 'e.jsonl', '--eval-split', '0.1'], /--eval-data and --eval-split cannot both be given/],
    [['--eval-every', '0'], /--eval-every must be an integer ≥ 1, got 0/],
    [['--save-every', '0'], /--save-every must be an integer ≥ 1, got 0/],
    [['--threads', '0'], /--threads must be an integer ≥ 1, got 0/],
    [['--bogus'], /train: .*--bogus/],
    [['--lr', '-1'], /--lr must be a number > 0, got -1/], // a negative number is the value, with or without =
    [['stray'], /train: .*stray/],
  ];
  for (const [extra, message] of refusals) {
    it(`refuses ${extra.join(' ')}`, () => {
      expect(() => parse(...extra)).toThrow(message);
    });
  }

  it('requires --model, --data and --out', () => {
    expect(() => parseTrainArgs(['--data', 'd', '--out', 'o'])).toThrow('--model is required');
    expect(() => parseTrainArgs(['--model', 'm', '--out', 'o'])).toThrow('--data is required');
    expect(() => parseTrainArgs(['--model', 'm', '--data', 'd'])).toThrow('--out is required');
  });
});

describe('checkArgsForModel', () => {
  const model = { numLayers: 5, maxPositions: 512, hiddenSize: 64 };
  it('accepts layers, seq-len and rank the model has', () => {
    expect(() => checkArgsForModel(parse('--layers', '0,4', '--seq-len', '512', '--rank', '64'), model)).not.toThrow();
  });
  it('refuses a layer the model lacks', () => {
    expect(() => checkArgsForModel(parse('--layers', '0,5'), model)).toThrow('--layers: layer 5 does not exist; the model has 5 layers (0 to 4)');
  });
  it('refuses a seq-len beyond the context', () => {
    expect(() => checkArgsForModel(parse('--seq-len', '513'), model)).toThrow("--seq-len must be ≤ the model's context of 512 tokens, got 513");
  });
  it('refuses a rank beyond the hidden size', () => {
    expect(() => checkArgsForModel(parse('--rank', '65'), model)).toThrow("--rank must be ≤ the model's hidden size 64, got 65");
  });
});

describe('checkPaths', () => {
  const dir = mkdtempSync(join(tmpdir(), 'train-args-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const model = join(dir, 'model');
  const data = join(dir, 'data.jsonl');
  mkdirSync(model);
  writeFileSync(data, '{"text":"hi"}\n');
  const args = (...extra: string[]) => parseTrainArgs(['--model', model, '--data', data, '--out', join(dir, 'out'), ...extra]);

  it('accepts existing inputs and a free --out', () => {
    expect(() => checkPaths(args())).not.toThrow();
  });
  it('refuses an existing --out unless --overwrite', () => {
    mkdirSync(join(dir, 'out'), { recursive: true });
    expect(() => checkPaths(args())).toThrow(`--out ${join(dir, 'out')} already exists; pass --overwrite to replace it`);
    expect(() => checkPaths(args('--overwrite'))).not.toThrow();
    rmSync(join(dir, 'out'), { recursive: true });
  });
  it('names a missing input by its flag', () => {
    expect(() => checkPaths(parseTrainArgs(['--model', join(dir, 'nope'), '--data', data, '--out', join(dir, 'out')]))).toThrow(/^--model .*nope is not a directory$/);
    expect(() => checkPaths(parseTrainArgs(['--model', model, '--data', join(dir, 'nope.jsonl'), '--out', join(dir, 'out')]))).toThrow(/^--data .*nope.jsonl does not exist$/);
    expect(() => checkPaths(parseTrainArgs(['--model', model, '--data', model, '--out', join(dir, 'out')]))).toThrow(/^--data .* is not a file$/);
    expect(() => checkPaths(args('--eval-data', join(dir, 'e.jsonl')))).toThrow(/^--eval-data .*e.jsonl does not exist$/);
    expect(() => checkPaths(args('--resume', join(dir, 'ck')))).toThrow(/^--resume .*ck is not a directory$/);
  });
});

describe('lrAt', () => {
  const p = (lrSchedule: ScheduleParams['lrSchedule'], warmupSteps = 0): ScheduleParams => ({ lr: 1, lrSchedule, warmupSteps, totalSteps: 100 });
  it('warms up linearly from 0', () => {
    expect(lrAt(0, p('cosine', 10))).toBe(0);
    expect(lrAt(5, p('cosine', 10))).toBeCloseTo(0.5);
    expect(lrAt(10, p('cosine', 10))).toBeCloseTo(1);
    expect(lrAt(5, p('constant', 10))).toBeCloseTo(0.5);
  });
  it('decays by cosine or linearly to 0 at totalSteps, or stays constant', () => {
    expect(lrAt(0, p('cosine'))).toBe(1);
    expect(lrAt(50, p('cosine'))).toBeCloseTo(0.5);
    expect(lrAt(100, p('cosine'))).toBeCloseTo(0);
    expect(lrAt(55, p('cosine', 10))).toBeCloseTo(0.5);
    expect(lrAt(25, p('linear'))).toBeCloseTo(0.75);
    expect(lrAt(100, p('linear'))).toBe(0);
    expect(lrAt(99, p('constant'))).toBe(1);
  });
  it('never rises after warmup and stays in [0, lr]', () => {
    for (const s of ['cosine', 'linear', 'constant'] as const) {
      let prev = Infinity;
      for (let step = 10; step <= 100; step++) {
        const lr = lrAt(step, p(s, 10));
        expect(lr).toBeLessThanOrEqual(prev + 1e-12);
        expect(lr).toBeGreaterThanOrEqual(0);
        expect(lr).toBeLessThanOrEqual(1);
        prev = lr;
      }
    }
  });
});
