// Checkpoint formats on disk: F32/F16/BF16, sharded with an index, external data, and refusals.
import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeSyntheticModel, writeWeights } from '../../scripts/synthetic-model.ts';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { encodeSafetensors } from '../../src/runtime/safetensors.ts';
import { f16ToF32, f32ToF16, f32ToBf16 } from '../../src/runtime/dtype.ts';
import { makeRunner, maxAbsDiff, tokens } from '../helpers/runtime.ts';

const cfgSmall = { hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 320 };

async function logitsOf(dir: string, opts: { useExternalData?: boolean } = {}): Promise<Float32Array> {
  const m = loadModel(dir);
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  const { runner, newRow } = await makeRunner(cfg, m.weights, 64, opts);
  const r = await runner.run([{ row: newRow(), tokens: tokens(10, 320, 9), allLogits: true }]);
  return r.logits;
}

const round = (w: Map<string, Float32Array>, f: (v: number) => number) => new Map([...w].map(([k, v]) => [k, v.map(f)]));

describe('checkpoint loading', () => {
  const root = mkdtempSync(join(tmpdir(), 'loraserve-models-'));
  const f32 = writeSyntheticModel(join(root, 'f32'), cfgSmall, { seed: 3 });

  it('F16 and BF16 checkpoints load, convert exactly, and agree with the F32 original within their precision', async () => {
    writeSyntheticModel(join(root, 'f16'), cfgSmall, { seed: 3, dtype: 'F16', weights: f32.weights });
    writeSyntheticModel(join(root, 'bf16'), cfgSmall, { seed: 3, dtype: 'BF16', weights: f32.weights });
    const ref = await logitsOf(join(root, 'f32'));
    const h = await logitsOf(join(root, 'f16'));
    const b = await logitsOf(join(root, 'bf16'));
    // exact decode: same logits as F32 weights pre-rounded to the format
    writeSyntheticModel(join(root, 'f16r'), cfgSmall, { weights: round(f32.weights, (v) => f16ToF32(f32ToF16(v))) });
    const bfRound = (v: number) => { const u = new Uint32Array([f32ToBf16(v) << 16]); return new Float32Array(u.buffer)[0]; };
    writeSyntheticModel(join(root, 'bf16r'), cfgSmall, { weights: round(f32.weights, bfRound) });
    expect(maxAbsDiff(h, await logitsOf(join(root, 'f16r')))).toBeLessThan(1e-5);
    expect(maxAbsDiff(b, await logitsOf(join(root, 'bf16r')))).toBeLessThan(1e-5);
    // against the F32 original: F16 (11-bit mantissa) much closer than BF16 (8-bit), both small
    const scale = Math.max(...ref.map(Math.abs));
    const dh = maxAbsDiff(h, ref) / scale;
    const db = maxAbsDiff(b, ref) / scale;
    expect(dh).toBeLessThan(5e-3);
    expect(db).toBeLessThan(4e-2);
    expect(dh).toBeLessThan(db);
    expect(loadModel(join(root, 'bf16')).weightDtype).toBe('BF16');
  });

  it('sharded checkpoints (model.safetensors.index.json) give the same logits', async () => {
    const dir = join(root, 'sharded');
    writeSyntheticModel(dir, cfgSmall, { weights: f32.weights });
    rmSync(join(dir, 'model.safetensors'));
    const names = [...f32.weights.keys()];
    const half = Math.ceil(names.length / 2);
    const parts = [names.slice(0, half), names.slice(half)];
    const weightMap: Record<string, string> = {};
    parts.forEach((part, i) => {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      writeWeights(join(dir, file), new Map(part.map((n) => [n, f32.weights.get(n)!])), f32.config, 'F32');
      for (const n of part) weightMap[n] = file;
    });
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
    expect(maxAbsDiff(await logitsOf(dir), await logitsOf(join(root, 'f32')))).toBe(0);
  });

  it('the external-data path (used above 2 GB) gives the same logits', async () => {
    expect(maxAbsDiff(await logitsOf(join(root, 'f32'), { useExternalData: true }), await logitsOf(join(root, 'f32')))).toBe(0);
  });

  it('refuses missing weights, wrong shapes and pickle-only directories, naming what is wrong', () => {
    const dir = join(root, 'broken');
    writeSyntheticModel(dir, cfgSmall, { weights: f32.weights });
    const w = new Map(f32.weights);
    w.delete('model.layers.1.mlp.up_proj.weight');
    writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(Object.fromEntries([...w].map(([k, v]) => [k, { dtype: 'F32' as const, shape: [v.length], data: v }]))));
    expect(() => loadModel(dir)).toThrow(/missing weight model\.layers\.1\.mlp\.up_proj\.weight/);
    writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors({ 'model.norm.weight': { dtype: 'F32', shape: [5], data: new Float32Array(5) } }));
    expect(() => loadModel(dir)).toThrow(/model\.norm\.weight has 5 values, expected shape \[32\]/);
    rmSync(join(dir, 'model.safetensors'));
    writeFileSync(join(dir, 'pytorch_model.bin'), 'pickle');
    expect(() => loadModel(dir)).toThrow(/pickle/);
    writeFileSync(join(dir, 'model.safetensors'), 'garbage!');
    expect(() => loadModel(dir)).toThrow(/model\.safetensors/);
  });
});
