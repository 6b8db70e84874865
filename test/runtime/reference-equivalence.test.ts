// The ONNX graph against an independent float64 forward pass (test/reference), on random tiny
// configs: logits within 1e-4 at prefill and at every decode step, alone and in ragged batches.
import { describe, expect, it } from 'vitest';
import { hfConfig, randomWeights } from '../../scripts/synthetic-model.ts';
import { ReferenceLlama } from '../reference/llama-reference.ts';
import { makeRunner, maxAbsDiff, tokens } from '../helpers/runtime.ts';

const TOL = 1e-4;
const base = { hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, vocab_size: 97, max_position_embeddings: 256 };
const CASES: [string, Record<string, unknown>][] = [
  ['GQA, tied embeddings', { ...base, num_attention_heads: 4, num_key_value_heads: 2, tie_word_embeddings: true }],
  ['MQA, untied embeddings', { ...base, num_attention_heads: 4, num_key_value_heads: 1 }],
  ['explicit head_dim ≠ hidden/heads', { ...base, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16 }],
  ['llama3 rope scaling', { ...base, num_attention_heads: 2, num_key_value_heads: 2, head_dim: 32, rope_theta: 500000, rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 } }],
  ['Qwen2: q/k/v biases', { ...base, architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', num_attention_heads: 4, num_key_value_heads: 2 }],
  ['Llama attention_bias (q/k/v/o biases)', { ...base, num_attention_heads: 4, num_key_value_heads: 2, attention_bias: true }],
  ['theta 1e6, eps 1e-6, linear scaling (rope_parameters spelling)', { ...base, num_attention_heads: 4, num_key_value_heads: 4, rms_norm_eps: 1e-6, rope_parameters: { rope_type: 'linear', factor: 2, rope_theta: 1e6 } }],
];

describe.each(CASES)('graph vs float64 reference: %s', (_name, c) => {
  const cfg = hfConfig(c as never);
  const weights = randomWeights(cfg, 42);

  it('prefill (every position) and each decode step agree within 1e-4', async () => {
    const { runner, newRow } = await makeRunner(cfg, weights);
    const ref = new ReferenceLlama(cfg, weights);
    const prompt = tokens(9, 97, 1);
    const row = newRow();
    const r = await runner.run([{ row, tokens: prompt, allLogits: true }]);
    const expected = ref.forward(prompt);
    for (let i = 0; i < prompt.length; i++) expect(maxAbsDiff(r.logits.subarray(i * 97, (i + 1) * 97), expected[i])).toBeLessThan(TOL);
    for (const t of tokens(12, 97, 2)) {
      const step = await runner.run([{ row, tokens: [t] }]);
      expect(maxAbsDiff(step.logits, ref.forward([t])[0])).toBeLessThan(TOL);
    }
    expect(runner.kv!.lengths[row]).toBe(21);
  });

  it('a fused step (a prompt chunk in group 0, decode tokens in group 1) matches each sequence alone', async () => {
    const { runner, newRow } = await makeRunner(cfg, weights);
    const kv = runner.kv!;
    const [a, b, c] = [newRow(), newRow(), newRow()];
    const refs = [a, b, c].map(() => new ReferenceLlama(cfg, weights));
    const pb = tokens(6, 97, 7);
    const pc = tokens(3, 97, 8);
    await runner.run([{ row: b, tokens: pb }, { row: c, tokens: pc }]);
    refs[1].forward(pb);
    refs[2].forward(pc);
    const pa = tokens(10, 97, 9);
    for (const [chunk, dec] of [[pa.slice(0, 4), [11, 12]], [pa.slice(4), [13, 14]]] as const) {
      const r = await runner.runGroups([{ rows: [{ row: a, tokens: [...chunk], allLogits: true }], kv, lora: null }, { rows: [{ row: b, tokens: [dec[0]] }, { row: c, tokens: [dec[1]] }], kv, lora: null }]);
      const expA = refs[0].forward([...chunk]);
      expA.forEach((e, j) => expect(maxAbsDiff(r.logits.subarray(j * 97, (j + 1) * 97), e)).toBeLessThan(TOL));
      const off = r.rowOffsets[1];
      expect(maxAbsDiff(r.logits.subarray(off * 97, (off + 1) * 97), refs[1].forward([dec[0]])[0])).toBeLessThan(TOL);
      expect(maxAbsDiff(r.logits.subarray((off + 1) * 97, (off + 2) * 97), refs[2].forward([dec[1]])[0])).toBeLessThan(TOL);
    }
    expect([kv.lengths[a], kv.lengths[b], kv.lengths[c]]).toEqual([10, 8, 5]);
  });

  it('a ragged batch (different prompt lengths, chunked prefill, batched decode) matches each sequence alone', async () => {
    const { runner, newRow } = await makeRunner(cfg, weights);
    const prompts = [tokens(5, 97, 3), tokens(11, 97, 4), tokens(2, 97, 5)];
    const refs = prompts.map(() => new ReferenceLlama(cfg, weights));
    const rowsOf = prompts.map(() => newRow());
    // first chunk: up to 4 tokens of each prompt together
    const first = await runner.run(prompts.map((p, i) => ({ row: rowsOf[i], tokens: p.slice(0, 4), allLogits: true })));
    prompts.forEach((p, i) => {
      const exp = refs[i].forward(p.slice(0, 4));
      exp.forEach((e, j) => expect(maxAbsDiff(first.logits.subarray((first.rowOffsets[i] + j) * 97, (first.rowOffsets[i] + j + 1) * 97), e)).toBeLessThan(TOL));
    });
    // rest of the prompts (row 2 is done; it decodes in the same batch)
    const second = await runner.run([{ row: rowsOf[0], tokens: prompts[0].slice(4) }, { row: rowsOf[1], tokens: prompts[1].slice(4) }, { row: rowsOf[2], tokens: [7] }]);
    const exp2 = [refs[0].forward(prompts[0].slice(4)).at(-1)!, refs[1].forward(prompts[1].slice(4)).at(-1)!, refs[2].forward([7])[0]];
    exp2.forEach((e, i) => expect(maxAbsDiff(second.logits.subarray(i * 97, (i + 1) * 97), e)).toBeLessThan(TOL));
    for (let s = 0; s < 6; s++) {
      const toks = [s + 3, s + 10, s + 20];
      const r = await runner.run(rowsOf.map((row, i) => ({ row, tokens: [toks[i]] })));
      toks.forEach((t, i) => expect(maxAbsDiff(r.logits.subarray(i * 97, (i + 1) * 97), refs[i].forward([t])[0])).toBeLessThan(TOL));
    }
  });
});
