// `loraserve merge` (mergeCommand): adapter directories → a merged PEFT directory at --out, which
// the server's reader accepts, with the same tensors as mergeAdapters and its recipe; --out is
// never overwritten; bad flags are refused naming the flag (a process exits non-zero).
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { STORIES_DIR } from '../helpers/fixtures.ts';
import { loadModelFiles } from '../../src/runtime/model-loader.ts';
import { parseSafetensors } from '../../src/runtime/safetensors.ts';
import { decodeAdapter, readAdapterDir } from '../../src/adapters/lora-adapter.ts';
import { mergeAdapters, mergeInputFromAdapter } from '../../src/merge/index.ts';
import { mergeCommand } from '../../src/merge/merge-command.ts';
import { peftTensorName } from '../../src/adapters/lora-adapter.ts';
import type { Target } from '../../src/runtime/model-targets.ts';
import { buildAdapter, writeAdapter } from '../../scripts/make-test-adapters.ts';

const cfg = loadModelFiles(STORIES_DIR).config;
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function inputs(): { store: string; dirs: string[] } {
  const store = mkdtempSync(join(tmpdir(), 'loraserve-merge-cli-'));
  const dirs = [{ rank: 4, seed: 21, scaleB: 2 }, { rank: 8, seed: 22, scaleB: 2, alpha: 16, targets: ['q_proj', 'v_proj'] as const }].map((spec, i) => {
    const dir = join(store, `in${i}`);
    mkdirSync(dir);
    writeAdapter(dir, buildAdapter(cfg, { ...spec, targets: spec.targets ? [...spec.targets] : undefined }));
    return dir;
  });
  return { store, dirs };
}

describe('loraserve merge', () => {
  it('writes a merged adapter the server reads, equal to mergeAdapters, with its recipe; refuses an existing --out', async () => {
    const { store, dirs } = inputs();
    const out = join(store, 'merged');
    await mergeCommand(['--model', STORIES_DIR, '--inputs', dirs.join(','), '--weights', '0.7,-0.3', '--combination-type', 'dare_ties_delta', '--density', '0.6', '--svd-rank', '5', '--seed', '9', '--out', out]);
    expect(readdirSync(out).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors', 'merge_recipe.json']);
    expect(readdirSync(store).sort()).toEqual(['in0', 'in1', 'merged']); // no temporary directory left
    const files = await readAdapterDir(out);
    const decoded = decodeAdapter(files, cfg, { maxRank: 64, modelName: 'stories260K' });
    expect(decoded.problems).toEqual([]);
    expect(decoded.adapter!.maxRank).toBe(5);
    const recipe = JSON.parse(readFileSync(join(out, 'merge_recipe.json'), 'utf8'));
    expect(recipe).toMatchObject({ combination_type: 'dare_ties_delta', inputs: [{ name: 'in0', weight: 0.7 }, { name: 'in1', weight: -0.3 }], density: 0.6, svd_rank: 5, seed: 9, rank: 5 });
    expect(recipe.relative_error).toBeGreaterThan(0);

    const ins = await Promise.all(dirs.map((d) => readAdapterDir(d)));
    const expected = mergeAdapters(ins.map((f, i) => mergeInputFromAdapter(decodeAdapter(f, cfg, { maxRank: 64, modelName: 'stories260K' }).adapter!, [4, 8][i], i)), [0.7, -0.3], { combination_type: 'dare_ties_delta', density: 0.6, svd_rank: 5, seed: 9 });
    expect(recipe.relative_error).toBe(expected.maxRelError);
    const tensors = parseSafetensors(files.weights, 'out').tensors;
    for (const [key, t] of expected.targets) {
      if (t.kind !== 'factors') throw new Error('factored expected');
      const [layer, target] = key.split('.');
      expect(new Float32Array(tensors.get(peftTensorName(Number(layer), target as Target, 'lora_B'))!.bytes.slice().buffer)).toEqual(t.b);
      expect(new Float32Array(tensors.get(peftTensorName(Number(layer), target as Target, 'lora_A'))!.bytes.slice().buffer)).toEqual(t.a);
    }
    // the inputs by name in a store
    const out2 = join(store, 'merged2');
    await mergeCommand(['--model', STORIES_DIR, '--adapters', 'in0,in1', '--adapters-dir', store, '--weights', '1,1', '--combination-type', 'cat', '--out', out2]);
    expect(JSON.parse(readFileSync(join(out2, 'adapter_config.json'), 'utf8'))).toMatchObject({ r: 12, lora_alpha: 12, use_rslora: false });
    // never over an existing directory
    await expect(mergeCommand(['--model', STORIES_DIR, '--inputs', dirs.join(','), '--weights', '1,1', '--combination-type', 'cat', '--out', out])).rejects.toThrow(/--out: .*already exists/);
  });

  it('refuses bad flags naming them, and writes nothing', async () => {
    const { store, dirs } = inputs();
    const out = join(store, 'never');
    const base = ['--model', STORIES_DIR, '--inputs', dirs.join(','), '--out', out];
    const cases: [string[], RegExp][] = [
      [[...base, '--weights', '1,1', '--combination-type', 'ties_svd', '--density', '1.5'], /^--density: density must be in \(0, 1\]/],
      [[...base, '--weights', '1', '--combination-type', 'cat'], /^--weights: weights has 1 entries but adapters has 2/],
      [[...base, '--weights', '1,x', '--combination-type', 'cat'], /^--weights: must be numbers/],
      [[...base, '--weights', '1,1', '--combination-type', 'svd', '--svd-rank', '0'], /^--svd-rank: svd_rank must be an integer ≥ 1/],
      [[...base, '--weights', '1,1', '--combination-type', 'ties', '--density', '0.5'], /^--inputs: .*same r/],
      [[...base, '--weights', '1,1', '--combination-type', 'nope'], /^--combination-type: /],
      [[...base, '--weights', '1,1'], /^--combination-type: is required/],
      [['--model', STORIES_DIR, '--out', out, '--weights', '1', '--combination-type', 'cat'], /^--inputs: is required/],
      [[...base, '--weights', '1,1', '--combination-type', 'cat', '--densty', '1'], /densty/],
      [['--model', STORIES_DIR, '--inputs', `${dirs[0]},${store}/missing`, '--out', out, '--weights', '1,1', '--combination-type', 'cat'], /^--inputs: .*missing does not exist/],
    ];
    for (const [args, message] of cases) await expect(mergeCommand(args), args.join(' ')).rejects.toThrow(message);
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(store).sort()).toEqual(['in0', 'in1']);

    // as a process: exit status 1 and the flag on stderr
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
      const code = "import('./src/merge/merge-command.ts').then((m) => m.mergeCommand(process.argv.slice(1))).catch((e) => { process.stderr.write('loraserve: ' + e.message + '\\n'); process.exit(1); });";
      const child = spawn(process.execPath, ['--import', 'tsx', '-e', code, '--', ...base, '--weights', '1,1', '--combination-type', 'ties_delta', '--density', '0'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
      child.on('error', reject);
      child.on('close', (c) => resolve({ code: c, stderr }));
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^loraserve: --density: /);
  }, 30_000);
});
