// Negative numbers as flag values: `--flag -1` means `--flag=-1` in every command's parser
// (src/runtime/cli-args.ts), where node:util parseArgs alone refuses it as an ambiguous value.
import { describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { joinNegativeValues, parseFlags } from '../src/runtime/cli-args.ts';
import { loadConfig } from '../src/server/config.ts';
import { parseTrainArgs } from '../src/train/train-args.ts';
import { parseExportArgs } from '../src/merge/export-command.ts';
import { mergeCommand } from '../src/merge/merge-command.ts';
import { STORIES_DIR } from './helpers/fixtures.ts';

const OPTIONS = { seed: { type: 'string' }, weights: { type: 'string', short: 'w' }, stop: { type: 'string', multiple: true }, flag: { type: 'boolean' } } as const;

describe('parseFlags', () => {
  it.each([
    [['--seed', '-1'], { seed: '-1' }],
    [['--seed', '-0.5'], { seed: '-0.5' }],
    [['--seed', '-.5'], { seed: '-.5' }],
    [['--seed', '-2e-3'], { seed: '-2e-3' }],
    [['--seed=-1'], { seed: '-1' }],
    [['--weights', '-1,0.5'], { weights: '-1,0.5' }],
    [['-w', '-1'], { weights: '-1' }],
    [['--stop', '-1', '--stop', '-2'], { stop: ['-1', '-2'] }],
    [['--seed', '3', '--flag'], { seed: '3', flag: true }],
  ])('%j → %j', (args, values) => {
    expect({ ...parseFlags({ args, options: OPTIONS, strict: true }).values }).toEqual(values);
  });

  it('anything else that starts with a dash is still a flag: unknown ones are refused, a missing value is ambiguous', () => {
    expect(() => parseFlags({ args: ['--seed', '-x'], options: OPTIONS, strict: true })).toThrow(/ambiguous/);
    expect(() => parseFlags({ args: ['--seed', '--flag'], options: OPTIONS, strict: true })).toThrow(/ambiguous/);
    expect(() => parseFlags({ args: ['--nope', '-1'], options: OPTIONS, strict: true })).toThrow(/Unknown option '--nope'/);
    expect(() => parseFlags({ args: ['--flag', '-1'], options: OPTIONS, strict: true })).toThrow(/Unknown option '-1'/); // a boolean takes no value
    expect(joinNegativeValues(['--', '--seed', '-1'], OPTIONS)).toEqual(['--', '--seed', '-1']);
    expect(joinNegativeValues(['--seed', '-1,x'], OPTIONS)).toEqual(['--seed', '-1,x']);
  });
});

describe('every command takes a negative number after its flag', () => {
  it('serve: the value reaches the range check, which names the flag', () => {
    expect(() => loadConfig(['--model', STORIES_DIR, '--lora-arena-mb', '-1'], {})).toThrow(/--lora-arena-mb must be an integer in \[1, /);
    expect(() => loadConfig(['--model', STORIES_DIR, '--port', '-5'], {})).toThrow(/--port must be an integer in \[0, 65535\], got "-5"/);
  });

  it('train', () => {
    const base = ['--model', 'm', '--data', 'd', '--out', 'o'];
    expect(() => parseTrainArgs([...base, '--seed', '-1'])).toThrow('--seed must be an integer ≥ 0, got -1');
    expect(() => parseTrainArgs([...base, '--alpha', '-16'])).toThrow('--alpha must be a number > 0, got -16');
    expect(parseTrainArgs([...base, '--seed', '7']).seed).toBe(7);
  });

  it('export', () => {
    const out = join(mkdtempSync(join(tmpdir(), 'loraserve-args-')), 'out');
    expect(() => parseExportArgs(['--model', STORIES_DIR, '--adapter', STORIES_DIR, '--out', out, '--shard-mb', '-5'])).toThrow(/--shard-mb must be a positive number of megabytes.*got "-5"/);
  });

  it('merge: negative weights (task arithmetic) and a negative --svd-rank reach the merge\'s own checks', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'loraserve-args-'));
    const args = ['--model', STORIES_DIR, '--out', join(dir, 'merged'), '--inputs', `${join(dir, 'a')},${join(dir, 'b')}`, '--combination-type', 'svd'];
    await expect(mergeCommand([...args, '--weights', '-1,0.5', '--svd-rank', '-2'])).rejects.toThrow('--svd-rank: svd_rank must be an integer ≥ 1, got -2');
    await expect(mergeCommand([...args, '--weights', '-1,0.5'])).rejects.toThrow(/--inputs: .*does not exist/);
  });
});
