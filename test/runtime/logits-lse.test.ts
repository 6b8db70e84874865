// The graph's logits_lse output (llama-graph.ts logSumExpRows): log Σ exp of each logits row, which
// a token's logprob subtracts. Computed in float32 by onnxruntime instead of in float64 by JS
// (sampler.ts logSumExp), so it is checked against that float64 reference.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { GraphBuilder } from '../../src/runtime/graph/ir.ts';
import { buildServedGraph, logSumExpRows } from '../../src/runtime/llama-graph.ts';
import { createSession, ort } from '../../src/runtime/session.ts';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { StepRunner } from '../../src/runtime/step.ts';
import { KvArena } from '../../src/runtime/kv-arena.ts';
import { logSumExp } from '../../src/runtime/sampler.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

describe('logits_lse', () => {
  it('equals the float64 log Σ exp of each row within 1e-5 (rows of up to 40000 values, property)', async () => {
    const b = new GraphBuilder('lse');
    b.input('x', 'float32', ['rows', 'vocab']);
    b.output(logSumExpRows(b, 'x', 'lse'), 'float32', ['rows']);
    const session = await createSession(b.build(), { intraOpThreads: 1 });
    await fc.assert(fc.asyncProperty(
      fc.integer({ min: 0, max: 4 }), fc.integer({ min: 1, max: 40_000 }), fc.double({ min: 0.01, max: 40, noNaN: true }), fc.integer(),
      async (rows, vocab, spread, seed) => {
        let s = seed >>> 0;
        const x = Float32Array.from({ length: rows * vocab }, () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return (s / 2 ** 32 - 0.5) * 2 * spread; });
        const out = (await session.run({ x: new ort.Tensor('float32', x, [rows, vocab]) })).lse.data as Float32Array;
        expect(out.length).toBe(rows);
        for (let r = 0; r < rows; r++) {
          const want = logSumExp(x.subarray(r * vocab, (r + 1) * vocab));
          expect(Math.abs(out[r] - want)).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(want)));
        }
      },
    ), { seed: 3, numRuns: 40 });
  });

  it('the served step returns one per logits row, prompt rows and decode rows alike', async () => {
    const model = loadModel(STORIES_DIR);
    const cfg = model.config;
    const session = await createSession(buildServedGraph(cfg, model.weights, { maxPositions: 256 }), { intraOpThreads: 1 });
    const kv = new KvArena(cfg.numLayers, cfg.numKvHeads, cfg.headDim, 128);
    kv.ensure(2);
    const runner = new StepRunner(session, cfg, 256, kv);
    await runner.run([{ row: 1, tokens: [1, 400, 20] }]);
    const r = await runner.runGroups([{ rows: [{ row: 0, tokens: [1, 72, 9, 300], allLogits: true }], kv, lora: null }, { rows: [{ row: 1, tokens: [33] }], kv, lora: null }]);
    const V = cfg.vocabSize;
    expect(r.lse?.length).toBe(5);
    for (let i = 0; i < 5; i++) expect(Math.abs(r.lse![i] - logSumExp(r.logits.subarray(i * V, (i + 1) * V)))).toBeLessThan(1e-5);
  });
});
