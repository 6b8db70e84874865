import { describe, expect, it } from 'vitest';
import { parseModelConfig } from '../../src/runtime/model-config.ts';
import { ropeInverseFrequencies } from '../../src/runtime/rope.ts';

const base = { architectures: ['LlamaForCausalLM'], hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 8, vocab_size: 100 };

describe('config.json', () => {
  it('reads the fields, with GQA, head_dim and eos lists', () => {
    const c = parseModelConfig({ ...base, num_key_value_heads: 2, head_dim: 16, rms_norm_eps: 1e-6, rope_theta: 5e5, tie_word_embeddings: true }, { eos_token_id: [2, 7] });
    expect(c).toMatchObject({ numKvHeads: 2, headDim: 16, rmsNormEps: 1e-6, ropeTheta: 5e5, tieWordEmbeddings: true, eosTokenIds: [2, 7] });
  });

  it('accepts rope_parameters (transformers v5) and the legacy "type" key', () => {
    expect(parseModelConfig({ ...base, rope_parameters: { rope_type: 'linear', factor: 2, rope_theta: 1e6 } })).toMatchObject({ ropeTheta: 1e6, ropeScaling: { type: 'linear', factor: 2 } });
    expect(parseModelConfig({ ...base, rope_scaling: { type: 'linear', factor: 4 } }).ropeScaling).toEqual({ type: 'linear', factor: 4 });
  });

  it('Qwen2 adds q/k/v biases; Mistral loads', () => {
    expect(parseModelConfig({ ...base, architectures: ['Qwen2ForCausalLM'] })).toMatchObject({ architecture: 'qwen2', attentionBias: true, oProjBias: false });
    expect(parseModelConfig({ ...base, architectures: ['MistralForCausalLM'], sliding_window: null }).architecture).toBe('mistral');
  });

  const refusals: [string, Record<string, unknown>, string][] = [
    ['an unsupported architecture', { ...base, architectures: ['GPT2LMHeadModel'] }, 'architectures'],
    ['a missing hidden_size', { ...base, hidden_size: undefined }, 'hidden_size'],
    ['heads not divisible by kv heads', { ...base, num_key_value_heads: 3 }, 'num_key_value_heads'],
    ['a non-silu activation', { ...base, hidden_act: 'gelu' }, 'hidden_act'],
    ['dynamic rope scaling', { ...base, rope_scaling: { rope_type: 'dynamic', factor: 2 } }, 'rope_scaling.rope_type'],
    ['yarn in rope_parameters', { ...base, rope_parameters: { rope_type: 'yarn', factor: 2 } }, 'rope_parameters.rope_type'],
    ['a linear scaling without factor', { ...base, rope_scaling: { rope_type: 'linear' } }, 'rope_scaling.factor'],
    ['sliding-window attention', { ...base, architectures: ['MistralForCausalLM'], max_position_embeddings: 8192, sliding_window: 4096 }, 'sliding_window'],
    ['logit soft-capping', { ...base, final_logit_softcapping: 30 }, 'final_logit_softcapping'],
  ];
  it.each(refusals)('refuses %s, naming the field', (_n, cfg, field) => {
    try {
      parseModelConfig(cfg);
      expect.unreachable();
    } catch (e) {
      expect((e as { param: string }).param).toBe(field);
      expect((e as Error).message).toContain(field.split('.').at(-1)!);
    }
  });
});

describe('RoPE frequencies', () => {
  it('llama3 scaling matches the reference vector (head_dim 128, theta 5e5, factor 8)', () => {
    const inv = ropeInverseFrequencies(128, 500000, { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 });
    const expected: [number, number][] = [[0, 1.0], [20, 0.016560440080994446], [30, 0.0013718935677611381], [40, 3.428102195952591e-05], [63, 3.068925988914511e-07]];
    for (const [j, v] of expected) expect(Math.abs(inv[j] - v) / v).toBeLessThan(1e-9);
  });

  it('linear scaling divides every frequency by the factor', () => {
    const a = ropeInverseFrequencies(16, 10000, { type: 'default' });
    const b = ropeInverseFrequencies(16, 10000, { type: 'linear', factor: 4 });
    a.forEach((v, i) => expect(b[i]).toBeCloseTo(v / 4, 15));
  });
});
