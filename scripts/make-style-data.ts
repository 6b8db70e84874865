// Generates a style's data set (pirate by default): stories written by the stories260K model itself
// (models/default; seeded sampling from varied story openings, so the data is reproducible and in
// the model's own distribution), translated by the style's rules (src/train/pirate.ts,
// src/train/styles.ts), as JSON lines {"text"}:
//   <out>/train.jsonl and <out>/eval.jsonl (held-out stories: other seeds, not a split of train)
//   npm run make-style-data [-- --style pirate|archaic|sad --model DIR --out DIR (default data/<style>)
//                              --count N --eval-count N --seed S --max-tokens N]
// The data is generated, not committed: it takes seconds, and data/ is git-ignored.
//
// Each story is cut to whole sentences so that its pirate version, tokenized with BOS and EOS,
// fits in --max-example-tokens (default 256, the trainer's default --seq-len): pirate words such as
// "th'" and "matey" are spelt in several tokens by the 512-token vocabulary, so a translated story
// is longer in tokens than the original.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startEngine } from '../src/start-engine.ts';
import { loadModelFiles } from '../src/runtime/model-loader.ts';
import { TextTokenizer } from '../src/runtime/tokenizer.ts';
import { DEFAULT_SAMPLING } from '../src/runtime/sampler.ts';
import { pirate } from '../src/train/pirate.ts';
import { STYLES } from '../src/train/styles.ts';
import { DEFAULT_MODEL_DIR } from '../src/server/default-model.ts';

const OPENINGS = [
  'Once upon a time', 'One day', 'Lily and Tom', 'There was a little', 'Tim had a', 'Once there was a big',
  'Sue wanted to', 'The sun was', 'Ben and his mom', 'A little bird', 'One morning', 'Max liked to',
  'The dog', 'Anna saw a', 'It was a sunny day', 'The little boy',
];

export interface PirateDataOptions {
  modelDir: string;
  count: number;             // training stories
  evalCount: number;         // held-out stories
  seed: number;
  maxTokens: number;         // tokens generated per story
  maxExampleTokens: number;  // the longest pirate example, BOS and EOS included
}

// Stories i = 0 … count+evalCount-1, each from opening i mod 16 with sampling seed seed + i; the
// first `count` are train, the rest eval.
export async function makePirateData(opts: PirateDataOptions): Promise<{ train: string[]; eval: string[] }> {
  return makeStyleData({ ...opts, translate: pirate });
}

// The same for any style: the model's stories (generateStories), each cut to the whole sentences
// whose translation fits (fitStory).
export async function makeStyleData(opts: PirateDataOptions & { translate: (text: string) => string; threads?: number }): Promise<{ train: string[]; eval: string[] }> {
  const files = loadModelFiles(opts.modelDir);
  const tokenizer = new TextTokenizer(files.tokenizerJson, files.tokenizerConfig);
  const stories = await generateStories(opts);
  return splitStories(stories.map((s) => fitStory(s, tokenizer, opts.maxExampleTokens, opts.translate)), opts.count);
}

// The first `count` fitted stories are train, the rest eval ('' ones, which did not fit, dropped).
export function splitStories(fitted: string[], count: number): { train: string[]; eval: string[] } {
  const kept = fitted.map((s, i) => ({ s, i })).filter(({ s }) => s !== '');
  return { train: kept.filter(({ i }) => i < count).map(({ s }) => s), eval: kept.filter(({ i }) => i >= count).map(({ s }) => s) };
}

// The model's own stories, untranslated: story i from opening i mod 16, sampled (temperature 0.7,
// top-p 0.9) with seed seed + i. `threads` fixes onnxruntime's thread count (results can depend on it).
export async function generateStories(opts: { modelDir: string; count: number; evalCount: number; seed: number; maxTokens: number; threads?: number }): Promise<string[]> {
  const files = loadModelFiles(opts.modelDir);
  const tokenizer = new TextTokenizer(files.tokenizerJson, files.tokenizerConfig);
  const engine = await startEngine({ runtime: { modelDir: opts.modelDir, ...(opts.threads ? { intraOpThreads: opts.threads } : {}) } });
  try {
    return await Promise.all(Array.from({ length: opts.count + opts.evalCount }, async (_, i) => {
      const opening = OPENINGS[i % OPENINGS.length];
      let text = opening;
      for await (const ev of engine.generate({
        promptTokens: tokenizer.encode(opening), maxTokens: opts.maxTokens, sampling: { ...DEFAULT_SAMPLING, temperature: 0.7, topP: 0.9 },
        seed: opts.seed + i, stop: [], stopTokenIds: [], ignoreEos: false, logprobs: null, adapter: null,
      })) {
        if (ev.type === 'token') text += ev.text;
        else if (ev.type === 'error') throw new Error(ev.error.message);
      }
      return text;
    }));
  } finally {
    await engine.close();
  }
}

// The story's pirate (or `translate`'s) version, cut to the whole sentences whose translation fits
// (+2 for BOS, EOS); '' when not even one sentence fits.
export function fitStory(story: string, tokenizer: TextTokenizer, maxTokens: number, translate: (text: string) => string = pirate): string {
  const sentences = story.replace(/\s+/g, ' ').trim().match(/[^.!?]*[.!?]+["']?/g) ?? [];
  let best = '';
  for (let n = 1; n <= sentences.length; n++) {
    const candidate = translate(sentences.slice(0, n).join('').trim());
    if (tokenizer.encode(candidate).length + 1 > maxTokens) break;
    best = candidate;
  }
  return best;
}

export const toJsonl = (texts: string[]): string => texts.map((text) => `${JSON.stringify({ text })}\n`).join('');

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      model: { type: 'string', default: DEFAULT_MODEL_DIR },
      style: { type: 'string', default: 'pirate' },
      out: { type: 'string' },
      count: { type: 'string', default: '400' },
      'eval-count': { type: 'string', default: '40' },
      seed: { type: 'string', default: '0' },
      'max-tokens': { type: 'string', default: '200' },
      'max-example-tokens': { type: 'string', default: '256' },
    },
    strict: true,
  });
  const int = (flag: keyof typeof values): number => {
    const n = Number(values[flag]);
    if (!Number.isSafeInteger(n) || n < 0) throw new Error(`--${flag} must be an integer ≥ 0, got ${values[flag]}`);
    return n;
  };
  const style = STYLES.find((s) => s.name === values.style);
  if (!style) throw new Error(`--style must be one of ${STYLES.map((s) => s.name).join(', ')}, got ${values.style}`);
  const out = values.out ?? fileURLToPath(new URL(`../data/${style.name}`, import.meta.url));
  const data = await makeStyleData({
    modelDir: values.model!, count: int('count'), evalCount: int('eval-count'), seed: int('seed'),
    maxTokens: int('max-tokens'), maxExampleTokens: int('max-example-tokens'), translate: style.translate,
  });
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'train.jsonl'), toJsonl(data.train));
  writeFileSync(join(out, 'eval.jsonl'), toJsonl(data.eval));
  console.log(`wrote ${data.train.length} train and ${data.eval.length} eval ${style.name} stories to ${out}`);
}
