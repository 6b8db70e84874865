// Generates models/default deterministically: a small Llama with real shapes (GQA, SwiGLU, RoPE),
// BF16 weights drawn from a fixed seed, and a byte-level BPE tokenizer trained here on a fixed
// synthetic corpus. Its text is gibberish until the trained default model replaces it.
//   npm run make-default-model [-- --out DIR]
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { syntheticCorpus, trainByteLevelBpe, writeSyntheticModel } from './synthetic-model.ts';

export const DEFAULT_MODEL_CONFIG = {
  hidden_size: 128,
  intermediate_size: 344,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 1024,
  max_position_embeddings: 2048,
  tie_word_embeddings: false,
};

const { values } = parseArgs({ options: { out: { type: 'string', default: fileURLToPath(new URL('../models/default', import.meta.url)) } } });
const tokenizer = trainByteLevelBpe(syntheticCorpus(2024, 3000), DEFAULT_MODEL_CONFIG.vocab_size);
writeSyntheticModel(values.out!, DEFAULT_MODEL_CONFIG, { seed: 2024, dtype: 'BF16', tokenizer });
console.log(`wrote ${values.out}`);
