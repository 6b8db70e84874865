// The semantic-routing data of the demo adapters (issue 14), made in the repository from the default
// model's own stories (scripts/make-style-data.ts generateStories: seeded, reproducible):
//   models/default-adapters/<style>/loraserve.json   {description, examples}: EXAMPLES prompts in the
//                                                      style, what `model: "auto"` compares against
//   models/routing-eval.jsonl                         {prompt, label}: held-out prompts (other stories),
//                                                      EVAL per style, labelled with their style, plus
//                                                      EVAL plain ones labelled with the base model
// A prompt is a story's first two sentences in the style. Then it routes every eval prompt through
// the engine's embeddings (as the server does) and writes the accuracy and the score distributions
// to docs/figures/routing.json, which docs/routing.md is generated from (bench/routing-report.ts).
//   npm run make-routing-set
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateStories } from './make-style-data.ts';
import { STYLES } from '../src/train/styles.ts';
import { DEFAULT_MODEL_DIR } from '../src/server/default-model.ts';
import { startEngine } from '../src/start-engine.ts';
import { loadModelFiles } from '../src/runtime/model-loader.ts';
import { TextTokenizer } from '../src/runtime/tokenizer.ts';
import { DEFAULT_SAMPLING } from '../src/runtime/sampler.ts';
import { pickRoute, scoreRoutes } from '../src/adapters/semantic-router.ts';
import { encodeMeta, META_FILE, readMeta } from '../src/adapters/adapter-meta.ts';
import type { RouteCandidate } from '../src/adapters/semantic-router.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const ADAPTERS_DIR = join(ROOT, 'models', 'default-adapters');
export const EVAL_FILE = join(ROOT, 'models', 'routing-eval.jsonl');
export const FIGURES_FILE = join(ROOT, 'docs', 'figures', 'routing.json');
const EXAMPLES = 48;
const EVAL = 40;
const SEED = 70_000; // stories apart from the adapters' training data (seeds 0…)

export const firstSentences = (story: string, n = 2): string => (story.replace(/\s+/g, ' ').trim().match(/[^.!?]*[.!?]+["']?/g) ?? [story]).slice(0, n).join('').trim();

export interface RoutingSet {
  examples: Record<string, string[]>;             // style → example prompts
  eval: { prompt: string; label: string | null }[]; // label null: the base model
}

// Story i: examples for style i mod S while i < S·EXAMPLES, then eval prompts, style by style, then plain.
export async function makeRoutingSet(modelDir = DEFAULT_MODEL_DIR): Promise<RoutingSet> {
  const S = STYLES.length;
  const stories = await generateStories({ modelDir, count: S * EXAMPLES + (S + 1) * EVAL, evalCount: 0, seed: SEED, maxTokens: 96, threads: 1 });
  const prompts = stories.map((s) => firstSentences(s));
  const examples: Record<string, string[]> = {};
  STYLES.forEach((style, k) => { examples[style.name] = prompts.slice(0, S * EXAMPLES).filter((_, i) => i % S === k).map(style.translate); });
  const evalSet: RoutingSet['eval'] = [];
  let i = S * EXAMPLES;
  for (const style of STYLES) for (let j = 0; j < EVAL; j++) evalSet.push({ prompt: style.translate(prompts[i++]), label: style.name });
  for (let j = 0; j < EVAL; j++) evalSet.push({ prompt: prompts[i++], label: null });
  return { examples, eval: evalSet };
}

// Embeddings as the server computes them (engine `embed`, prompts tokenized with BOS).
export async function embedAll(modelDir: string, texts: string[]): Promise<number[][]> {
  const files = loadModelFiles(modelDir);
  const tokenizer = new TextTokenizer(files.tokenizerJson, files.tokenizerConfig);
  const engine = await startEngine({ runtime: { modelDir, intraOpThreads: 1 } });
  try {
    return await Promise.all(texts.map(async (text) => {
      for await (const ev of engine.generate({ promptTokens: tokenizer.encode(text), maxTokens: 0, sampling: { ...DEFAULT_SAMPLING }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: null, adapter: null, embed: true })) {
        if (ev.type === 'embedding') return ev.vector;
        if (ev.type === 'error') throw new Error(ev.error.message);
      }
      throw new Error('no embedding');
    }));
  } finally {
    await engine.close();
  }
}

export interface RoutingFigures {
  accuracy: number;                        // styled eval prompts routed to their style (threshold ignored)
  perStyle: Record<string, number>;
  evalPerStyle: number;
  examplesPerAdapter: number;
  styledScores: { min: number; median: number };  // best score of the styled prompts
  plainScores: { median: number; max: number };   // best score of the plain (base) prompts
  suggestedThreshold: number;
  accuracyAtThreshold: number;             // styled → their style and plain → base, at suggestedThreshold
}

export function routingFigures(set: RoutingSet, exampleVecs: Record<string, number[][]>, evalVecs: number[][]): RoutingFigures {
  const candidates: RouteCandidate[] = Object.entries(exampleVecs).map(([name, examples]) => ({ name, examples }));
  const routed = set.eval.map((e, i) => ({ ...e, scores: scoreRoutes(evalVecs[i], candidates) }));
  const styled = routed.filter((r) => r.label !== null);
  const plain = routed.filter((r) => r.label === null);
  const perStyle: Record<string, number> = {};
  for (const style of STYLES) {
    const mine = styled.filter((r) => r.label === style.name);
    perStyle[style.name] = mine.filter((r) => r.scores[0].name === style.name).length / mine.length;
  }
  const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);
  const styledBest = sorted(styled.map((r) => r.scores[0].score));
  const plainBest = sorted(plain.map((r) => r.scores[0].score));
  // the threshold that routes the most eval prompts right (styled → style, plain → base)
  let best = { t: 0, right: -1 };
  for (const t of [...styledBest, ...plainBest].map((x) => x + 1e-9)) {
    const right = routed.filter((r) => pickRoute(r.scores, t) === r.label).length;
    if (right > best.right) best = { t, right };
  }
  return {
    accuracy: styled.filter((r) => r.scores[0].name === r.label).length / styled.length,
    perStyle,
    evalPerStyle: EVAL,
    examplesPerAdapter: EXAMPLES,
    styledScores: { min: styledBest[0], median: styledBest[styledBest.length >> 1] },
    plainScores: { median: plainBest[plainBest.length >> 1], max: plainBest[plainBest.length - 1] },
    suggestedThreshold: Number(best.t.toFixed(4)),
    accuracyAtThreshold: best.right / routed.length,
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const set = await makeRoutingSet();
  for (const style of STYLES) {
    const dir = join(ADAPTERS_DIR, style.name);
    writeFileSync(join(dir, META_FILE), encodeMeta({ description: readMeta(dir, []).description, examples: set.examples[style.name] }));
  }
  writeFileSync(EVAL_FILE, set.eval.map((e) => `${JSON.stringify(e)}\n`).join(''));
  const names = STYLES.map((s) => s.name);
  const vecs = await embedAll(DEFAULT_MODEL_DIR, [...names.flatMap((n) => set.examples[n]), ...set.eval.map((e) => e.prompt)]);
  const exampleVecs: Record<string, number[][]> = {};
  names.forEach((n, k) => { exampleVecs[n] = vecs.slice(k * EXAMPLES, (k + 1) * EXAMPLES); });
  const figures = routingFigures(set, exampleVecs, vecs.slice(names.length * EXAMPLES));
  mkdirSync(dirname(FIGURES_FILE), { recursive: true });
  writeFileSync(FIGURES_FILE, `${JSON.stringify(figures, null, 2)}\n`);
  console.log(JSON.stringify(figures, null, 2));
}
