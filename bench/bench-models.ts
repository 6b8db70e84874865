// The benchmark models: the stories260K fixture and a synthetic ~110M Llama (dim 768, 12 layers,
// 12 heads, hidden 2048, vocab 32000, tied embeddings), generated once into .tmp/bench-models.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { writeSyntheticModel } from '../scripts/synthetic-model.ts';

export const STORIES_DIR = fileURLToPath(new URL('../../shared/fixtures/stories260K', import.meta.url));

export const LLAMA_110M = {
  hidden_size: 768,
  intermediate_size: 2048,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  num_key_value_heads: 12,
  vocab_size: 32000,
  max_position_embeddings: 2048,
  tie_word_embeddings: true,
};

export function llama110mDir(): string {
  const dir = fileURLToPath(new URL('../.tmp/bench-models/llama-110m', import.meta.url));
  if (!existsSync(`${dir}/model.safetensors`)) {
    console.log(`generating the synthetic 110M model into ${dir} …`);
    writeSyntheticModel(dir, LLAMA_110M, { seed: 110 });
  }
  return dir;
}
