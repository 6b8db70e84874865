// PEFT's lora_dropout in the trainer: y = x·W0ᵀ + s·(dropout(x)·Aᵀ)·Bᵀ, one mask per (layer, target).
//   - the graph: p = 0 adds nothing; p > 0 adds one mask input and one Mul per slot (LoRA path only)
//   - with a fixed mask, the graph's loss and LoRA gradients match a float64 reference that applies
//     the same mask per token (central finite differences, norm-wise relative error ≤ 1e-3)
//   - masks: kept fraction ≈ 1 − p, kept values exactly 1/(1−p) (float32), keyed by
//     (seed, step, micro-batch, slot), buffers reused
//   - evaluate() never applies dropout
//   - `loraserve train --dropout 0.1` is deterministic, and resume equals an uninterrupted run
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { hfConfig, randomWeights } from '../../scripts/synthetic-model.ts';
import { parseModelConfig } from '../../src/runtime/model-config.ts';
import { targetShape } from '../../src/runtime/model-targets.ts';
import type { Target } from '../../src/runtime/model-targets.ts';
import { Rng } from '../../src/runtime/random.ts';
import { readSafetensorsFile } from '../../src/runtime/safetensors.ts';
import { bytesToF32 } from '../../src/runtime/dtype.ts';
import { TrainSession } from '../../src/train/train-session.ts';
import { DropoutMasks, DropoutSampler, dropoutRng } from '../../src/train/dropout-masks.ts';
import type { TrainBatch } from '../../src/train/train-session.ts';
import { buildTrainGraph, dropoutMaskName } from '../../src/train/train-graph.ts';
import type { LoraSlot } from '../../src/train/train-graph.ts';
import { readMetrics } from '../../src/train/metrics-log.ts';
import { STORIES_DIR, hasStories } from '../helpers/fixtures.ts';
import { compareGradient, loraDelta, modulePath, randomArray, referenceLoss, referenceLossLora } from './train-reference.ts';
import type { RefBatch, RefLora, RefSlot } from './train-reference.ts';
import { runLoraserve } from '../helpers/cli.ts';

const batch: RefBatch = {
  B: 2,
  T: 6,
  ids: [1, 17, 42, 5, 63, 9, 1, 30, 8, 51, 0, 0],      // row 1: 4 tokens, then padding (id 0)
  labels: [17, 42, 5, 63, 9, 2, 30, 8, 51, 2, 0, 0],
  weights: [1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0],
};
const N = batch.B * batch.T;
const trainBatch: TrainBatch = {
  batchSize: batch.B, seqLen: batch.T,
  inputIds: BigInt64Array.from(batch.ids.map(BigInt)), labels: BigInt64Array.from(batch.labels.map(BigInt)), lossWeights: Float32Array.from(batch.weights),
};

const cfgJson = hfConfig({ hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 64, tie_word_embeddings: false, attention_bias: true });
const cfg = parseModelConfig(cfgJson);
const weights = randomWeights(cfgJson, 11);
// every target type, both layers, ranks 2–4 (o_proj and down_proj have other input sizes)
const slots: LoraSlot[] = ([[0, 'q_proj', 2], [0, 'v_proj', 3], [0, 'down_proj', 4], [1, 'k_proj', 3], [1, 'o_proj', 2], [1, 'gate_proj', 4], [1, 'up_proj', 2]] as [number, Target, number][])
  .map(([layer, target, rank]) => ({ layer, target, rank, scale: 8 / rank }));

function randomFactors(seed: number): Map<string, Float32Array> {
  const rng = new Rng(seed);
  const f = new Map<string, Float32Array>();
  for (const s of slots) {
    const [out, inDim] = targetShape(cfg, s.target);
    f.set(`lora_a.${s.layer}.${s.target}`, randomArray(s.rank * inDim, 1 / Math.sqrt(inDim), rng));
    f.set(`lora_b.${s.layer}.${s.target}`, randomArray(out * s.rank, 0.5 / Math.sqrt(s.rank), rng));
  }
  return f;
}
const refSlot = (s: LoraSlot): RefSlot => { const [out, inDim] = targetShape(cfg, s.target); return { ...s, out, in: inDim }; };

describe('dropout in the training graph', () => {
  it('p = 0 adds no inputs or nodes; p > 0 adds one mask input and one Mul per slot, training graph only', () => {
    const opts = { slots, maxPositions: 32 };
    const plain = buildTrainGraph(cfg, weights, opts);
    const zero = buildTrainGraph(cfg, weights, { ...opts, dropout: 0 });
    const drop = buildTrainGraph(cfg, weights, { ...opts, dropout: 0.2 });
    expect(zero.inputs).toEqual(plain.inputs);
    expect(zero.nodes.map((n) => n.op)).toEqual(plain.nodes.map((n) => n.op));
    const maskNames = slots.map((s) => dropoutMaskName(s.layer, s.target));
    expect(drop.inputs.map((i) => i.name)).toEqual([...plain.inputs.map((i) => i.name).slice(0, 3), ...slots.flatMap((s) => [`lora_dropout.${s.layer}.${s.target}`, `lora_a.${s.layer}.${s.target}`, `lora_b.${s.layer}.${s.target}`]), 'compute_gradients']);
    expect(drop.inputs.filter((i) => maskNames.includes(i.name)).map((i) => i.dims)).toEqual(slots.map((s) => ['dropout_rows', targetShape(cfg, s.target)[1]]));
    // forward: one more Mul per slot, reading the mask (the backward lives in the If)
    expect(drop.nodes.length).toBe(plain.nodes.length + slots.length);
    for (const m of maskNames) expect(drop.nodes.filter((n) => n.inputs.includes(m)).map((n) => n.op)).toEqual(['Mul']);
    // the forward-only graph never applies dropout
    expect(buildTrainGraph(cfg, weights, { ...opts, gradients: false, dropout: 0.2 }).inputs.map((i) => i.name)).toEqual(buildTrainGraph(cfg, weights, { ...opts, gradients: false }).inputs.map((i) => i.name));
  });

  it('with a fixed mask, loss and LoRA gradients match float64 finite differences of the masked reference', async () => {
    const p = 0.25;
    const factors = randomFactors(5);
    const masks = new DropoutMasks(p, slots.map((s) => ({ layer: s.layer, target: s.target, inDim: targetShape(cfg, s.target)[1] }))).draw({ seed: 3, step: 7, micro: 1 }, N);
    const fixed = new Map([...masks].map(([k, v]) => [k, v.slice()]));
    const session = await TrainSession.create(cfg, weights, { slots, maxPositions: 32, dropout: p, session: { intraOpThreads: 1 } });
    const step = await session.step(trainBatch, factors, fixed);
    const keyed = await session.step(trainBatch, factors, { seed: 3, step: 7, micro: 1 }); // the same masks, drawn by the session
    const ones = await session.step(trainBatch, factors, new Map(slots.map((s) => [dropoutMaskName(s.layer, s.target), new Float32Array(N * targetShape(cfg, s.target)[1]).fill(1)])));
    await session.release();
    expect(keyed.loss).toBe(step.loss);
    for (const [n, g] of step.grads) expect([...keyed.grads.get(n)!]).toEqual([...g]);

    const loras = (f: Map<string, ArrayLike<number>>, withMasks: boolean): RefLora[] => slots.map((s) => ({
      slot: refSlot(s), a: f.get(`lora_a.${s.layer}.${s.target}`)!, b: f.get(`lora_b.${s.layer}.${s.target}`)!,
      mask: withMasks ? fixed.get(dropoutMaskName(s.layer, s.target)) : undefined,
    }));
    // the per-token reference agrees with ReferenceLlama + ΔW when unmasked, and with the graph fed ones
    const unmasked = referenceLossLora(cfgJson, weights, loras(factors, false), batch).loss;
    const deltas = new Map(slots.map((s) => [modulePath(s.layer, s.target), loraDelta(refSlot(s), factors.get(`lora_a.${s.layer}.${s.target}`)!, factors.get(`lora_b.${s.layer}.${s.target}`)!)]));
    expect(Math.abs(unmasked - referenceLoss(cfgJson, weights, deltas, batch).loss)).toBeLessThan(1e-10);
    expect(Math.abs(ones.loss - unmasked)).toBeLessThan(1e-4 * Math.abs(unmasked));
    // masked: the graph's loss is the masked reference's, and the mask matters
    const ref = referenceLossLora(cfgJson, weights, loras(factors, true), batch).loss;
    expect(Math.abs(step.loss - ref)).toBeLessThan(1e-4 * Math.abs(ref));
    expect(Math.abs(ref - unmasked)).toBeGreaterThan(1e-3 * Math.abs(ref));

    const h = 1e-4;
    const rng = new Rng(9);
    const errors: string[] = [];
    let worst = 0;
    for (const name of [...factors.keys()]) {
      const x = Float64Array.from(factors.get(name)!);
      const g = step.grads.get(name)!;
      const picks = Array.from({ length: 5 }, () => Math.floor(rng.next() * x.length));
      const fd = picks.map((i) => {
        const at = (v: number): number => {
          const y = Float64Array.from(x);
          y[i] = v;
          const f = new Map<string, ArrayLike<number>>(factors);
          f.set(name, y);
          return referenceLossLora(cfgJson, weights, loras(f, true), batch).loss;
        };
        return (at(x[i] + h) - at(x[i] - h)) / (2 * h);
      });
      const an = picks.map((i) => g[i]);
      worst = Math.max(worst, compareGradient(name, picks, fd, an, errors));
    }
    console.log(`dropout p = ${p}: worst norm-wise relative error ${worst.toExponential(2)} over ${factors.size} factors`);
    expect(errors).toEqual([]);
  });

  it('evaluate() applies no dropout: the same loss as a session without dropout', async () => {
    const factors = randomFactors(6);
    const withDrop = await TrainSession.create(cfg, weights, { slots, maxPositions: 32, dropout: 0.5, session: { intraOpThreads: 1 } });
    const without = await TrainSession.create(cfg, weights, { slots, maxPositions: 32, session: { intraOpThreads: 1 } });
    expect(withDrop.dropout).toBe(0.5);
    expect(without.dropout).toBe(0);
    const a = await withDrop.evaluate(trainBatch, factors);
    const b = await without.evaluate(trainBatch, factors);
    const trained = await withDrop.step(trainBatch, factors, { seed: 0, step: 0, micro: 0 });
    await expect(withDrop.step(trainBatch, factors)).rejects.toThrow(/dropout key or masks/);
    const plain = await without.step(trainBatch, factors); // no key needed without dropout
    await Promise.all([withDrop.release(), without.release()]);
    expect(Math.abs(a.loss - b.loss)).toBeLessThanOrEqual(1e-6 * Math.abs(b.loss));
    expect(a.nllSum).toBeCloseTo(b.nllSum, 5);
    a.tokenLogprobs.forEach((lp, i) => expect(Math.abs(lp - b.tokenLogprobs[i])).toBeLessThan(1e-6));
    expect(Math.abs(plain.loss - b.loss)).toBeLessThanOrEqual(1e-6 * Math.abs(b.loss));
    expect(Math.abs(trained.loss - b.loss)).toBeGreaterThan(1e-4); // a training step does drop
  });
});

describe('dropout masks', () => {
  const maskSlots = [{ layer: 0, target: 'q_proj' as Target, inDim: 64 }, { layer: 3, target: 'down_proj' as Target, inDim: 172 }];

  it('kept fraction ≈ 1 − p, kept values exactly 1/(1−p) in float32, the rest 0', () => {
    // 1/512: every drop comes from a tie on the first byte (θ = 2²³: top byte 0, half the ties drop)
    for (const p of [1 / 512, 0.05, 0.1, 0.5, 0.9, 0.999]) {
      const m = new Float32Array(1_000_003);
      new DropoutSampler(p).fill(m, new Rng(42));
      const keep = Math.fround(1 / (1 - p));
      let kept = 0;
      let dropped = 0;
      for (const v of m) {
        if (v === keep) kept++;
        else if (v === 0) dropped++;
      }
      expect(kept + dropped).toBe(m.length);
      const sd = Math.sqrt(p * (1 - p) / m.length);
      expect(Math.abs(kept / m.length - (1 - p))).toBeLessThan(5 * sd);
    }
  });

  it('four entries per 32-bit draw: a byte against the top byte of θ, 24 fresh bits on a tie', () => {
    // p = 0.1: θ = ⌈0.1·2³²⌉ = 429496730 = 25·2²⁴ + 10066330
    const p = 0.1;
    const low = 429496730 - 25 * 2 ** 24;
    const draws = [0x19181a19, (low - 1) * 256, low * 256, 0x00ff1900, (low - 1) * 256 + 255, 0xffffffff];
    const fake = { nextU32: () => { const v = draws.shift(); if (v === undefined) throw new Error('too many draws'); return v >>> 0; } };
    const m = new Float32Array(7);
    new DropoutSampler(p).fill(m, fake as unknown as Rng);
    const k = Math.fround(1 / (1 - p));
    // bytes 25 (tie: low−1 < low, drop), 24 (drop), 26 (keep), 25 (tie: low, keep); then 0 (drop),
    // 255 (keep), 25 (tie: drop) from a last draw for the 3 left over; the trailing byte is unused
    expect([...m]).toEqual([0, 0, k, k, 0, k, 0]);
    expect(draws).toEqual([0xffffffff]);
    // and the same decisions as a plain per-entry version of that rule, on a real stream
    const sampler = new DropoutSampler(0.3);
    const n = 100_003;
    const fast = new Float32Array(n);
    sampler.fill(fast, new Rng(7));
    const theta = Math.ceil(0.3 * 2 ** 32);
    const rng = new Rng(7);
    let u = 0;
    for (let i = 0; i < n; i++) {
      if (i % 4 === 0) u = rng.nextU32();
      const b = (u >>> (24 - 8 * (i % 4))) & 255;
      const top = Math.floor(theta / 2 ** 24);
      const drop = b < top || (b === top && rng.nextU32() >>> 8 < theta % 2 ** 24);
      expect(fast[i] === 0).toBe(drop);
    }
  });

  it('keyed by (seed, step, micro-batch, slot): the same key gives the same mask, any other key another', () => {
    const gen = new DropoutMasks(0.1, maskSlots);
    const rows = 2 * 16;
    const snap = (key: { seed: number; step: number; micro: number }): Map<string, number[]> => new Map([...gen.draw(key, rows)].map(([k, v]) => [k, [...v]]));
    const base = snap({ seed: 1, step: 5, micro: 0 });
    expect(snap({ seed: 1, step: 5, micro: 0 })).toEqual(base);
    // a second generator (a resumed run) and another slot order give the same masks
    const again = new DropoutMasks(0.1, [...maskSlots].reverse()).draw({ seed: 1, step: 5, micro: 0 }, rows);
    for (const [k, v] of base) expect([...again.get(k)!]).toEqual(v);
    for (const key of [{ seed: 1, step: 6, micro: 0 }, { seed: 1, step: 5, micro: 1 }, { seed: 2, step: 5, micro: 0 }]) {
      const other = snap(key);
      for (const [k, v] of base) expect(other.get(k)).not.toEqual(v);
    }
    // each slot its own mask (PEFT: one nn.Dropout per module)
    const q = base.get('lora_dropout.0.q_proj')!;
    expect(base.get('lora_dropout.3.down_proj')!.slice(0, q.length)).not.toEqual(q);
    // and the slot id is (layer, target), not the position in the slot list
    expect(dropoutRng({ seed: 1, step: 5, micro: 0 }, 0, 'q_proj').nextU32()).toBe(dropoutRng({ seed: 1, step: 5, micro: 0 }, 0, 'q_proj').nextU32());
    expect(dropoutRng({ seed: 1, step: 5, micro: 0 }, 0, 'q_proj').nextU32()).not.toBe(dropoutRng({ seed: 1, step: 5, micro: 0 }, 0, 'k_proj').nextU32());
    expect(() => dropoutRng({ seed: 1, step: -1, micro: 0 }, 0, 'q_proj')).toThrow(/integer/);
  });

  it('reuses its buffers from step to step', () => {
    const gen = new DropoutMasks(0.2, maskSlots);
    const a = gen.draw({ seed: 0, step: 0, micro: 0 }, 64).get('lora_dropout.0.q_proj')!;
    const b = gen.draw({ seed: 0, step: 1, micro: 0 }, 64).get('lora_dropout.0.q_proj')!;
    expect(b).toBe(a);
    const c = gen.draw({ seed: 0, step: 2, micro: 0 }, 32).get('lora_dropout.0.q_proj')!; // a smaller batch: a view of the same buffer
    expect(c.buffer).toBe(a.buffer);
    expect(c.length).toBe(32 * 64);
  });
});

// ---- end to end: `loraserve train --dropout 0.1` ----


const cli = (args: string[]) => runLoraserve(['train', ...args]);

describe.skipIf(!hasStories)('loraserve train --dropout 0.1 (stories260K)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'loraserve-dropout-'));
  const data = join(dir, 'train.jsonl');
  const animals = ['cat', 'dog', 'bird', 'fish', 'frog', 'bear', 'duck', 'fox'];
  const colors = ['red', 'blue', 'green', 'big', 'little', 'happy'];
  writeFileSync(data, Array.from({ length: 48 }, (_, i) => JSON.stringify({ text: `Once upon a time there was a ${colors[i % 6]} ${animals[i % 8]}. It liked to play in the park with its friend the ${animals[(i * 3 + 1) % 8]}.` }) + '\n').join(''));
  const common = ['--model', STORIES_DIR, '--data', data, '--rank', '4', '--alpha', '8', '--lr', '0.01', '--seed', '5', '--steps', '6', '--batch-size', '4', '--grad-accum', '2', '--seq-len', '64', '--eval-split', '0', '--dropout', '0.1', '--threads', '1'];
  const tensors = (out: string): Map<string, Float32Array> => {
    const st = readSafetensorsFile(join(out, 'adapter_model.safetensors'));
    return new Map([...st.tensors].map(([n, t]) => [n, bytesToF32(t.bytes, t.dtype, n)]));
  };
  const maxDiff = (a: Map<string, Float32Array>, b: Map<string, Float32Array>): number => {
    let m = 0;
    for (const [n, x] of a) { const y = b.get(n)!; for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i] - y[i])); }
    return m;
  };

  it('is deterministic, resume equals an uninterrupted run, and dropout changes the result', async () => {
    const [whole, again, noDrop] = await Promise.all([
      cli([...common, '--out', join(dir, 'whole'), '--save-every', '3']),
      cli([...common, '--out', join(dir, 'again')]),
      cli([...common.slice(0, -4), '--threads', '1', '--out', join(dir, 'no-dropout')]),
    ]);
    for (const r of [whole, again, noDrop]) expect(r.code, r.stderr).toBe(0);
    const resumed = await cli([...common, '--out', join(dir, 'resumed'), '--resume', join(dir, 'whole', 'checkpoint-3')]);
    expect(resumed.code, resumed.stderr).toBe(0);

    const bytes = (d: string): Buffer => readFileSync(join(dir, d, 'adapter_model.safetensors'));
    expect(bytes('again').equals(bytes('whole'))).toBe(true);
    expect(readMetrics(join(dir, 'again', 'metrics.jsonl')).map((r) => r.loss)).toEqual(readMetrics(join(dir, 'whole', 'metrics.jsonl')).map((r) => r.loss));
    expect(maxDiff(tensors(join(dir, 'whole')), tensors(join(dir, 'resumed')))).toBeLessThanOrEqual(1e-6);
    // the resumed run's steps 4–6 logged the same losses as the uninterrupted run's
    expect(readMetrics(join(dir, 'resumed', 'metrics.jsonl')).filter((r) => r.step > 3).map((r) => r.loss))
      .toEqual(readMetrics(join(dir, 'whole', 'metrics.jsonl')).filter((r) => r.step > 3).map((r) => r.loss));
    // dropout did something, and is recorded as PEFT's lora_dropout
    expect(maxDiff(tensors(join(dir, 'whole')), tensors(join(dir, 'no-dropout')))).toBeGreaterThan(1e-4);
    expect(JSON.parse(readFileSync(join(dir, 'whole', 'adapter_config.json'), 'utf8')).lora_dropout).toBe(0.1);
    expect(JSON.parse(readFileSync(join(dir, 'no-dropout', 'adapter_config.json'), 'utf8')).lora_dropout).toBe(0);
  }, 240_000);
});
