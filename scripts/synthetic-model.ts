// Deterministic synthetic Llama checkpoints in Hugging Face format: config.json, generation_config.json,
// model.safetensors (F32/F16/BF16), tokenizer.json (byte-level BPE trained here) and tokenizer_config.json.
// Used for the default model, the benchmark models and test models.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Rng } from '../src/runtime/random.ts';
import { encodeSafetensors } from '../src/runtime/safetensors.ts';
import type { TensorToWrite } from '../src/runtime/safetensors.ts';
import { f32ToDtypeBytes } from '../src/runtime/dtype.ts';
import { expectedWeights } from '../src/runtime/model-loader.ts';
import { parseModelConfig } from '../src/runtime/model-config.ts';

export interface SyntheticConfig {
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  vocab_size: number;
  head_dim?: number;
  max_position_embeddings?: number;
  rms_norm_eps?: number;
  rope_theta?: number;
  rope_scaling?: Record<string, unknown> | null;
  tie_word_embeddings?: boolean;
  [k: string]: unknown;
}

export function hfConfig(c: SyntheticConfig): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_act: 'silu',
    max_position_embeddings: 2048,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: 'float32',
    ...c,
  };
}

// Random weights: N(0, std) for matrices (std = 1/sqrt(in)), norms around 1.
export function randomWeights(cfg: Record<string, any>, seed: number, opts: { std?: number } = {}): Map<string, Float32Array> {
  const rng = new Rng(seed);
  const normal = (): number => {
    const u = Math.max(rng.next(), 1e-12);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng.next());
  };
  const D = cfg.hidden_size;
  const H = cfg.num_attention_heads;
  const Hkv = cfg.num_key_value_heads ?? H;
  const d = cfg.head_dim ?? D / H;
  const F = cfg.intermediate_size;
  const w = new Map<string, Float32Array>();
  const mat = (name: string, out: number, inDim: number, scale = 1): void => {
    const a = new Float32Array(out * inDim);
    const std = (opts.std ?? 1) * scale / Math.sqrt(inDim);
    for (let i = 0; i < a.length; i++) a[i] = normal() * std;
    w.set(name, a);
  };
  const norm = (name: string): void => {
    const a = new Float32Array(D);
    for (let i = 0; i < D; i++) a[i] = 1 + 0.1 * normal();
    w.set(name, a);
  };
  mat('model.embed_tokens.weight', cfg.vocab_size, D, Math.sqrt(D));
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    norm(`${p}.input_layernorm.weight`);
    norm(`${p}.post_attention_layernorm.weight`);
    mat(`${p}.self_attn.q_proj.weight`, H * d, D);
    mat(`${p}.self_attn.k_proj.weight`, Hkv * d, D);
    mat(`${p}.self_attn.v_proj.weight`, Hkv * d, D);
    mat(`${p}.self_attn.o_proj.weight`, D, H * d);
    mat(`${p}.mlp.gate_proj.weight`, F, D);
    mat(`${p}.mlp.up_proj.weight`, F, D);
    mat(`${p}.mlp.down_proj.weight`, D, F);
  }
  norm('model.norm.weight');
  if (!cfg.tie_word_embeddings) mat('lm_head.weight', cfg.vocab_size, D);
  // Qwen2 (and Llama with attention_bias) carry q/k/v biases; Llama's attention_bias also o_proj's
  const qwen = Array.isArray(cfg.architectures) && cfg.architectures[0] === 'Qwen2ForCausalLM';
  if (qwen || cfg.attention_bias === true) {
    const vec = (name: string, n: number): void => { w.set(name, Float32Array.from({ length: n }, () => 0.1 * normal())); };
    for (let l = 0; l < cfg.num_hidden_layers; l++) {
      vec(`model.layers.${l}.self_attn.q_proj.bias`, H * d);
      vec(`model.layers.${l}.self_attn.k_proj.bias`, Hkv * d);
      vec(`model.layers.${l}.self_attn.v_proj.bias`, Hkv * d);
      if (!qwen) vec(`model.layers.${l}.self_attn.o_proj.bias`, D);
    }
  }
  return w;
}

export function writeWeights(path: string, weights: Map<string, Float32Array>, cfg: Record<string, any>, dtype: 'F32' | 'F16' | 'BF16'): void {
  const shapes = expectedWeights(parseModelConfig(cfg));
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, data] of weights) {
    const shape = shapes.get(name);
    if (!shape) throw new Error(`writeWeights: ${name} is not a weight of this config`);
    tensors[name] = { dtype, shape, data: f32ToDtypeBytes(data, dtype) };
  }
  writeFileSync(path, encodeSafetensors(tensors));
}

// A byte-level BPE tokenizer (GPT-2 style) with <unk>, <s>, </s>, trained on `corpus` until
// `vocabSize` entries. Deterministic: ties between pairs break by the pair's text.
export function trainByteLevelBpe(corpus: string, vocabSize: number): Record<string, unknown> {
  const byteToChar = gpt2ByteMap();
  const special = ['<unk>', '<s>', '</s>'];
  const vocab = new Map<string, number>();
  special.forEach((s) => vocab.set(s, vocab.size));
  for (let b = 0; b < 256; b++) vocab.set(byteToChar[b], vocab.size);
  const words = new Map<string, number>();
  for (const m of corpus.matchAll(/ ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+/gu)) words.set(m[0], (words.get(m[0]) ?? 0) + 1);
  let splits = [...words.entries()].map(([w, count]) => ({ parts: [...new TextEncoder().encode(w)].map((b) => byteToChar[b]), count }));
  const merges: string[][] = [];
  while (vocab.size < vocabSize) {
    const pairs = new Map<string, number>();
    for (const { parts, count } of splits) for (let i = 0; i + 1 < parts.length; i++) {
      const k = `${parts[i]}\u0000${parts[i + 1]}`;
      pairs.set(k, (pairs.get(k) ?? 0) + count);
    }
    let best: string | null = null;
    let bestCount = 1;
    for (const [k, c] of pairs) if (c > bestCount || (c === bestCount && best !== null && k < best)) { best = k; bestCount = c; }
    if (best === null) break;
    const [a, b] = best.split('\u0000');
    merges.push([a, b]);
    vocab.set(a + b, vocab.size);
    splits = splits.map(({ parts, count }) => {
      const out: string[] = [];
      for (let i = 0; i < parts.length; i++) {
        if (i + 1 < parts.length && parts[i] === a && parts[i + 1] === b) { out.push(a + b); i++; } else out.push(parts[i]);
      }
      return { parts: out, count };
    });
  }
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: special.map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab: Object.fromEntries(vocab), merges },
  };
}

function gpt2ByteMap(): string[] {
  const bs: number[] = [];
  for (let i = 33; i <= 126; i++) bs.push(i);
  for (let i = 161; i <= 172; i++) bs.push(i);
  for (let i = 174; i <= 255; i++) bs.push(i);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
  const map: string[] = new Array(256);
  bs.forEach((b, i) => { map[b] = String.fromCodePoint(cs[i]); });
  return map;
}

export const CHAT_TEMPLATE = "{{ bos_token }}{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

export function tokenizerConfig(): Record<string, unknown> {
  return {
    add_bos_token: true,
    add_eos_token: false,
    bos_token: '<s>',
    eos_token: '</s>',
    unk_token: '<unk>',
    model_max_length: 2048,
    tokenizer_class: 'PreTrainedTokenizerFast',
    chat_template: CHAT_TEMPLATE,
  };
}

// A deterministic English-like corpus for tokenizer training: sentences over a fixed word list
// plus pronounceable made-up words, so BPE finds enough distinct merges.
export function syntheticCorpus(seed: number, sentences: number): string {
  const rng = new Rng(seed);
  const pick = <T>(a: T[]): T => a[Math.floor(rng.next() * a.length)];
  const onsets = ['b', 'c', 'd', 'f', 'g', 'h', 'j', 'k', 'l', 'm', 'n', 'p', 'r', 's', 't', 'v', 'w', 'br', 'st', 'tr', 'ch', 'sh', 'th', 'pl', 'gr'];
  const vowels = ['a', 'e', 'i', 'o', 'u', 'ai', 'ea', 'oo', 'ou', 'y'];
  const codas = ['', 'n', 'r', 's', 't', 'l', 'nd', 'ng', 'st', 'rk', 'm'];
  const word = (): string => Array.from({ length: 1 + Math.floor(rng.next() * 3) }, () => pick(onsets) + pick(vowels) + pick(codas)).join('');
  const lexicon = Array.from({ length: 600 }, word);
  const subjects = ['the cat', 'a little girl', 'the old man', 'my friend', 'the server', 'an adapter', 'the model', 'a dog', 'the team', 'Lily', 'Tom'];
  const verbs = ['saw', 'loved', 'found', 'served', 'trained', 'wanted', 'made', 'played with', 'loaded', 'answered'];
  const objects = ['a red ball', 'the park', 'many requests', 'a big tree', 'the token', 'some cake', 'a new story', 'the weights', 'a small box'];
  const tails = ['.', '!', ', and then it was happy.', ' every day.', ' in the morning.', '?'];
  const out: string[] = [];
  for (let i = 0; i < sentences; i++) {
    const extra = Array.from({ length: Math.floor(rng.next() * 4) }, () => pick(lexicon)).join(' ');
    const s = `${pick(subjects)} ${pick(verbs)} ${pick(objects)}${extra ? ` ${extra}` : ''}${pick(tails)}`;
    out.push(s.charAt(0).toUpperCase() + s.slice(1));
  }
  return out.join(' ') + ' 0123456789 "quotes" (parens) - dash: colon; semi \n newline';
}

export interface WriteModelOptions {
  dtype?: 'F32' | 'F16' | 'BF16';
  seed?: number;
  tokenizer?: Record<string, unknown>;
  weights?: Map<string, Float32Array>;
}

export function writeSyntheticModel(dir: string, config: SyntheticConfig, opts: WriteModelOptions = {}): { config: Record<string, unknown>; weights: Map<string, Float32Array> } {
  mkdirSync(dir, { recursive: true });
  const cfg = hfConfig(config);
  const weights = opts.weights ?? randomWeights(cfg, opts.seed ?? 1);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
  writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ bos_token_id: 1, eos_token_id: 2 }, null, 2));
  writeWeights(join(dir, 'model.safetensors'), weights, cfg, opts.dtype ?? 'F32');
  const tok = opts.tokenizer ?? trainByteLevelBpe(syntheticCorpus(opts.seed ?? 1, 400), Math.min(config.vocab_size, 300 + 64));
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tok));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(tokenizerConfig(), null, 2));
  return { config: cfg, weights };
}
