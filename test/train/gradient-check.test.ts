// The training graph's gradients (ORT, float32, from the autodiff rules) against central finite
// differences of the tests' own float64 loss (ReferenceLlama + ΔW = s·B·A), for every target type,
// multi-rank and rsLoRA scales, GQA, tied and untied heads, biases, zero loss weights and padding.
//
// Error measure, per factor tensor over its sampled entries S:
//   relErr = ‖g_S − fd_S‖₂ / ‖fd_S‖₂   (norm-wise: an entry whose true gradient is tiny cannot
//   dominate, while a wrong rule, wrong transpose or wrong scale changes the whole vector)
// and every entry must also satisfy |g − fd| ≤ 1e-3·max(|fd|, ‖fd_S‖∞).
// B is random (not 0): with B = 0 every grad A is exactly 0 and would check nothing.
import { describe, expect, it } from 'vitest';
import { hfConfig, randomWeights } from '../../scripts/synthetic-model.ts';
import { parseModelConfig } from '../../src/runtime/model-config.ts';
import { TARGETS, targetShape } from '../../src/runtime/model-targets.ts';
import type { Target } from '../../src/runtime/model-targets.ts';
import { Rng } from '../../src/runtime/random.ts';
import { TrainSession } from '../../src/train/train-session.ts';
import type { LoraSlot } from '../../src/train/train-graph.ts';
import { compareGradient, loraDelta, modulePath, randomArray, referenceLoss } from './train-reference.ts';
import type { RefBatch, RefSlot } from './train-reference.ts';

const batch: RefBatch = {
  B: 2,
  T: 6,
  ids: [1, 17, 42, 5, 63, 9, 1, 30, 8, 51, 0, 0],      // row 1: 4 tokens, then padding (id 0)
  labels: [17, 42, 5, 63, 9, 2, 30, 8, 51, 2, 0, 0],
  weights: [1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0],       // prompt-like zeros, padding zeros
};

interface Case {
  name: string;
  config: Record<string, unknown>;
  slots: (cfg: ReturnType<typeof parseModelConfig>) => LoraSlot[];
  runtimeUnbroadcast?: boolean;
}

const base = { hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 64 };
const cases: Case[] = [
  {
    name: 'all seven targets in both layers, ranks 1–4, s = α/r, tied embeddings',
    config: { ...base, tie_word_embeddings: true },
    slots: () => [0, 1].flatMap((layer) => TARGETS.map((target, i) => {
      const rank = 1 + ((layer * 7 + i) % 4);
      return { layer, target, rank, scale: 4 / rank };
    })),
  },
  {
    name: 'rsLoRA s = α/√r, ranks 4 and 8, untied head, q/k/v/o biases',
    config: { ...base, tie_word_embeddings: false, attention_bias: true },
    slots: () => ([[0, 'gate_proj', 8], [0, 'v_proj', 4], [1, 'q_proj', 4], [1, 'k_proj', 8], [1, 'o_proj', 4], [1, 'down_proj', 8], [1, 'up_proj', 4]] as [number, Target, number][])
      .map(([layer, target, rank]) => ({ layer, target, rank, scale: 16 / Math.sqrt(rank) })),
  },
  {
    name: 'the generic backward (gradients reduced to operand shapes at run time), q/v/up/down',
    config: { ...base, tie_word_embeddings: true },
    slots: () => (['q_proj', 'v_proj', 'up_proj', 'down_proj'] as Target[]).map((target, i) => ({ layer: i % 2, target, rank: 3, scale: 1 })),
    runtimeUnbroadcast: true,
  },
];

describe('LoRA gradients of the training graph', () => {
  for (const c of cases) {
    it(`match float64 finite differences: ${c.name}`, async () => {
      const cfgJson = hfConfig(c.config as never);
      const cfg = parseModelConfig(cfgJson);
      const weights = randomWeights(cfgJson, 11);
      const slots = c.slots(cfg);
      const rng = new Rng(5);
      const factors = new Map<string, Float32Array>();
      const refSlots = slots.map((s): RefSlot => {
        const [out, inDim] = targetShape(cfg, s.target);
        factors.set(`lora_a.${s.layer}.${s.target}`, randomArray(s.rank * inDim, 1 / Math.sqrt(inDim), rng));
        factors.set(`lora_b.${s.layer}.${s.target}`, randomArray(out * s.rank, 0.5 / Math.sqrt(s.rank), rng));
        return { ...s, out, in: inDim };
      });

      const session = await TrainSession.create(cfg, weights, { slots, maxPositions: 32, runtimeUnbroadcast: c.runtimeUnbroadcast, session: { intraOpThreads: 1 } });
      const step = await session.step({
        batchSize: batch.B, seqLen: batch.T,
        inputIds: BigInt64Array.from(batch.ids.map(BigInt)), labels: BigInt64Array.from(batch.labels.map(BigInt)), lossWeights: Float32Array.from(batch.weights),
      }, factors);
      await session.release();

      // float64 deltas of every slot; one slot's is recomputed per perturbation
      const deltas = new Map(refSlots.map((s) => [modulePath(s.layer, s.target), loraDelta(s, factors.get(`lora_a.${s.layer}.${s.target}`)!, factors.get(`lora_b.${s.layer}.${s.target}`)!)]));
      const ref = referenceLoss(cfgJson, weights, deltas, batch);
      expect(Math.abs(step.loss - ref.loss)).toBeLessThan(1e-4 * Math.abs(ref.loss));
      expect(step.weightSum).toBe(7);
      expect(Math.abs(step.nllSum - ref.loss * 7)).toBeLessThan(1e-3);

      const h = 1e-4;
      const errors: string[] = [];
      let worst = 0;
      for (const s of refSlots) {
        const aName = `lora_a.${s.layer}.${s.target}`;
        const bName = `lora_b.${s.layer}.${s.target}`;
        for (const name of [aName, bName]) {
          const x = Float64Array.from(factors.get(name)!);
          const g = step.grads.get(name)!;
          expect(g.length).toBe(x.length);
          const picks = Array.from({ length: 5 }, () => Math.floor(rng.next() * x.length));
          const fd = picks.map((i) => {
            const at = (v: number): number => {
              const y = Float64Array.from(x);
              y[i] = v;
              const a = name === aName ? y : factors.get(aName)!;
              const bb = name === bName ? y : factors.get(bName)!;
              const d = new Map(deltas);
              d.set(modulePath(s.layer, s.target), loraDelta(s, a, bb));
              return referenceLoss(cfgJson, weights, d, batch).loss;
            };
            return (at(x[i] + h) - at(x[i] - h)) / (2 * h);
          });
          const an = picks.map((i) => g[i]);
          worst = Math.max(worst, compareGradient(name, picks, fd, an, errors));
        }
      }
      console.log(`${c.name}: worst norm-wise relative error ${worst.toExponential(2)} over ${refSlots.length * 2} factors`);
      expect(errors).toEqual([]);
    });
  }
});
