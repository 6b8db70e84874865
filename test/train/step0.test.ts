// At step 0 (fresh init, B = 0) the training graph is the base model: its token log-probs equal the
// served graph's (StepRunner over llama-graph.ts) and the float64 reference's, for both inits, on a
// synthetic GQA model and on the real stories260K. Also: the forward-only session and the training
// session's evaluate() (backward skipped) agree with its step(), grad A is exactly 0 (B = 0) and grad B is not, and the init is deterministic
// and PEFT-shaped.
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { hfConfig, randomWeights } from '../../scripts/synthetic-model.ts';
import { parseModelConfig } from '../../src/runtime/model-config.ts';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { TARGETS, targetShape } from '../../src/runtime/model-targets.ts';
import { TrainSession } from '../../src/train/train-session.ts';
import type { TrainBatch } from '../../src/train/train-session.ts';
import { initLora } from '../../src/train/lora-init.ts';
import type { LoraSlot } from '../../src/train/train-graph.ts';
import { makeRunner, tokens } from '../helpers/runtime.ts';
import { STORIES_DIR, hasStories } from '../helpers/fixtures.ts';
import { referenceLoss } from './train-reference.ts';

function batchOf(rows: number[][], T: number, vocab: number): TrainBatch & { ids: number[]; labelList: number[]; weights: number[] } {
  const ids: number[] = [];
  const labelList: number[] = [];
  const weights: number[] = [];
  for (const row of rows) {
    for (let t = 0; t < T; t++) {
      ids.push(t < row.length ? row[t] : 0);                         // pad with 0 at the end
      labelList.push(t + 1 < row.length ? row[t + 1] : (t * 7) % vocab); // any valid id where w = 0
      weights.push(t + 1 < row.length ? 1 : 0);
    }
  }
  return {
    batchSize: rows.length, seqLen: T, ids, labelList, weights,
    inputIds: BigInt64Array.from(ids.map(BigInt)), labels: BigInt64Array.from(labelList.map(BigInt)), lossWeights: Float32Array.from(weights),
  };
}

async function servedLogprobs(cfgJson: Record<string, unknown>, weights: Map<string, Float32Array>, row: number[], vocab: number): Promise<number[]> {
  const { runner, newRow } = await makeRunner(cfgJson, weights, 64);
  const r = await runner.run([{ row: newRow(), tokens: row, allLogits: true }]);
  return row.slice(1).map((next, t) => {
    const z = r.logits.subarray(t * vocab, (t + 1) * vocab);
    let max = -Infinity;
    for (const v of z) max = Math.max(max, v);
    let sum = 0;
    for (const v of z) sum += Math.exp(v - max);
    return z[next] - max - Math.log(sum);
  });
}

const models: [string, () => { cfgJson: Record<string, unknown>; weights: Map<string, Float32Array> } | null][] = [
  ['synthetic GQA 4/2, tied', () => {
    const cfgJson = hfConfig({ hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 64, tie_word_embeddings: true });
    return { cfgJson, weights: randomWeights(cfgJson, 21) };
  }],
  ['stories260K', () => (hasStories ? { cfgJson: JSON.parse(readFileSync(join(STORIES_DIR, 'config.json'), 'utf8')), weights: loadModel(STORIES_DIR).weights } : null)],
];

describe.each(models)('step 0 equals the base model: %s', (_name, load) => {
  for (const init of ['kaiming', 'gaussian'] as const) {
    it(`${init} init`, async () => {
      const m = load();
      if (!m) return; // fixture absent
      const cfg = parseModelConfig(m.cfgJson);
      const V = cfg.vocabSize;
      const slots: LoraSlot[] = Array.from({ length: cfg.numLayers }, (_, layer) => TARGETS.map((target) => ({ layer, target, rank: 4 + layer, scale: 2 }))).flat();
      const lora = initLora(cfg, slots, init, 1234);
      const rows = [tokens(10, V, 3), tokens(7, V, 4)];
      const batch = batchOf(rows, 10, V);

      const session = await TrainSession.create(cfg, m.weights, { slots, maxPositions: 64, session: { intraOpThreads: 1 } });
      const step = await session.step(batch, lora);
      const evalOnly = await TrainSession.create(cfg, m.weights, { slots, maxPositions: 64, gradients: false, session: { intraOpThreads: 1 } });
      const ev = await evalOnly.evaluate(batch, lora);
      const evSame = await session.evaluate(batch, lora); // the training session, backward skipped
      await Promise.all([session.release(), evalOnly.release()]);

      // served graph, row by row (it never sees padding)
      for (let r = 0; r < rows.length; r++) {
        const served = await servedLogprobs(m.cfgJson, m.weights, rows[r], V);
        served.forEach((lp, t) => expect(Math.abs(step.tokenLogprobs[r * 10 + t] - lp)).toBeLessThan(2e-5));
      }
      // float64 reference, including the padded positions' log-probs
      const ref = referenceLoss(m.cfgJson, m.weights, new Map(), { B: 2, T: 10, ids: batch.ids, labels: batch.labelList, weights: batch.weights });
      ref.logprobs.forEach((lp, i) => expect(Math.abs(step.tokenLogprobs[i] - lp)).toBeLessThan(1e-4));
      expect(Math.abs(step.loss - ref.loss)).toBeLessThan(1e-5 * Math.abs(ref.loss) + 1e-6);
      expect(step.weightSum).toBe(9 + 6);
      expect(Math.abs(step.nllSum / step.weightSum - step.loss)).toBeLessThan(1e-6 * step.loss);
      // the forward-only graph is the same forward
      expect(Math.abs(ev.loss - step.loss)).toBeLessThan(1e-6 * step.loss);
      ev.tokenLogprobs.forEach((lp, i) => expect(Math.abs(lp - step.tokenLogprobs[i])).toBeLessThan(1e-6));
      expect(Math.abs(evSame.loss - step.loss)).toBeLessThan(1e-6 * step.loss);
      expect(evSame.nllSum).toBe(step.nllSum);

      // B = 0: no gradient reaches A; B's gradient is s·(dL/dy)ᵀ·(x·Aᵀ), not zero
      for (const s of slots) {
        expect(step.grads.get(`lora_a.${s.layer}.${s.target}`)!.every((g) => g === 0)).toBe(true);
        expect(step.grads.get(`lora_b.${s.layer}.${s.target}`)!.some((g) => g !== 0)).toBe(true);
      }
    });
  }
});

describe('LoRA init', () => {
  const cfg = parseModelConfig(hfConfig({ hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 64 }));
  const slots: LoraSlot[] = [{ layer: 1, target: 'down_proj', rank: 8, scale: 1 }, { layer: 0, target: 'q_proj', rank: 16, scale: 1 }];

  it('is deterministic by seed and independent of the slots order; B = 0', () => {
    const a = initLora(cfg, slots, 'kaiming', 7);
    const b = initLora(cfg, [...slots].reverse(), 'kaiming', 7);
    for (const [k, v] of a) expect([...b.get(k)!]).toEqual([...v]);
    expect([...initLora(cfg, slots, 'kaiming', 8).get('lora_a.0.q_proj')!]).not.toEqual([...a.get('lora_a.0.q_proj')!]);
    expect(a.get('lora_b.1.down_proj')!.length).toBe(targetShape(cfg, 'down_proj')[0] * 8);
    expect(a.get('lora_b.1.down_proj')!.every((v) => v === 0)).toBe(true);
  });

  it('kaiming: U(−1/√in, 1/√in); gaussian: N(0, (1/r)²), as PEFT', () => {
    const k = initLora(cfg, slots, 'kaiming', 1).get('lora_a.1.down_proj')!; // [8, 96]
    const bound = 1 / Math.sqrt(96);
    expect(Math.max(...k.map(Math.abs))).toBeLessThanOrEqual(bound);
    const variance = (x: Float32Array) => x.reduce((s, v) => s + v * v, 0) / x.length;
    expect(variance(k)).toBeCloseTo(bound * bound / 3, 3);                 // uniform: b²/3
    const g = initLora(cfg, slots, 'gaussian', 1).get('lora_a.0.q_proj')!; // [16, 64], std 1/16
    expect(Math.sqrt(variance(g)) * 16).toBeGreaterThan(0.93);
    expect(Math.sqrt(variance(g)) * 16).toBeLessThan(1.07);
  });
});
