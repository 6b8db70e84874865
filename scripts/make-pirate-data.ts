// Generates the pirate demo data set: stories written by the stories260K model itself (seeded
// sampling from varied story openings, so the data is reproducible and in the model's own
// distribution), translated to pirate speak by src/train/pirate.ts, as JSON lines {"text"}:
//   <out>/train.jsonl and <out>/eval.jsonl (held-out stories: other seeds, not a split of train)
//   npm run make-pirate-data [-- --model DIR --out DIR --count N --eval-count N --seed S --max-tokens N]
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

export const STORIES_260K = fileURLToPath(new URL('../../shared/fixtures/stories260K', import.meta.url));

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
  const files = loadModelFiles(opts.modelDir);
  const tokenizer = new TextTokenizer(files.tokenizerJson, files.tokenizerConfig);
  const engine = await startEngine({ runtime: { modelDir: opts.modelDir } });
  try {
    const stories = await Promise.all(Array.from({ length: opts.count + opts.evalCount }, async (_, i) => {
      const opening = OPENINGS[i % OPENINGS.length];
      let text = opening;
      for await (const ev of engine.generate({
        promptTokens: tokenizer.encode(opening), maxTokens: opts.maxTokens, sampling: { ...DEFAULT_SAMPLING, temperature: 0.8, topP: 0.95 },
        seed: opts.seed + i, stop: [], stopTokenIds: [], ignoreEos: false, logprobs: null, adapter: null,
      })) {
        if (ev.type === 'token') text += ev.text;
        else if (ev.type === 'error') throw new Error(ev.error.message);
      }
      return fitStory(text, tokenizer, opts.maxExampleTokens);
    }));
    const kept = stories.map((s, i) => ({ s, i })).filter(({ s }) => s !== '');
    return { train: kept.filter(({ i }) => i < opts.count).map(({ s }) => s), eval: kept.filter(({ i }) => i >= opts.count).map(({ s }) => s) };
  } finally {
    await engine.close();
  }
}

// The story's pirate version, cut to the whole sentences whose translation fits (+2 for BOS, EOS);
// '' when not even one sentence fits.
export function fitStory(story: string, tokenizer: TextTokenizer, maxTokens: number): string {
  const sentences = story.replace(/\s+/g, ' ').trim().match(/[^.!?]*[.!?]+["']?/g) ?? [];
  let best = '';
  for (let n = 1; n <= sentences.length; n++) {
    const candidate = pirate(sentences.slice(0, n).join('').trim());
    if (tokenizer.encode(candidate).length + 1 > maxTokens) break;
    best = candidate;
  }
  return best;
}

const toJsonl = (texts: string[]): string => texts.map((text) => `${JSON.stringify({ text })}\n`).join('');

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      model: { type: 'string', default: STORIES_260K },
      out: { type: 'string', default: fileURLToPath(new URL('../data/pirate', import.meta.url)) },
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
  const data = await makePirateData({
    modelDir: values.model!, count: int('count'), evalCount: int('eval-count'), seed: int('seed'),
    maxTokens: int('max-tokens'), maxExampleTokens: int('max-example-tokens'),
  });
  mkdirSync(values.out!, { recursive: true });
  writeFileSync(join(values.out!, 'train.jsonl'), toJsonl(data.train));
  writeFileSync(join(values.out!, 'eval.jsonl'), toJsonl(data.eval));
  console.log(`wrote ${data.train.length} train and ${data.eval.length} eval stories to ${values.out}`);
}
