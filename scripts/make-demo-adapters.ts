// Rebuilds the demo adapters that `npm start` serves beside the default model:
//   npm run make-demo-adapters
// 1. data     the default model (stories260K) writes its own stories (seeded sampling, one thread),
//             once; each style (src/train/styles.ts: pirate, archaic, sad) translates them:
//             data/demo/<style>/train.jsonl and eval.jsonl (held-out stories: other seeds); the
//             untranslated stories in data/demo/stories.jsonl
// 2. train    `loraserve train` (its API) per style, with fixed seeds and --threads 1, into
//             models/default-adapters/<style>/ (PEFT files, metrics.jsonl, loss.png/.svg, training
//             args) plus loraserve.json: the description /v1/models shows, and the routing examples
//             that `npm run make-routing-set` wrote there (kept across a retrain)
// 3. document models/README.md gets each adapter's held-out loss before (the base model) and
//             after, with its loss curve; README.md's quickstart gets the real outputs of one
//             greedy request to the base model and to each adapter, from a server started here.
// The same code, data and thread count give byte-identical adapter files (test/server/quickstart.test.ts).
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { fitStory, generateStories, splitStories, toJsonl } from './make-style-data.ts';
import { STYLES } from '../src/train/styles.ts';
import type { Style } from '../src/train/styles.ts';
import { parseTrainArgs } from '../src/train/train-args.ts';
import { train } from '../src/train/trainer.ts';
import { loadModelFiles } from '../src/runtime/model-loader.ts';
import { TextTokenizer } from '../src/runtime/tokenizer.ts';
import { encodeMeta, META_FILE, NO_META, readMeta } from '../src/adapters/adapter-meta.ts';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const MODEL = 'models/default';               // relative to ROOT: the adapters record it as their base model
export const ADAPTERS = 'models/default-adapters';

// The data: stories i = 0 … COUNT+EVAL_COUNT-1 (the first COUNT train, the rest held out).
export const DATA = { count: 240, evalCount: 32, seed: 0, maxTokens: 160, maxExampleTokens: 256, threads: 1 };

// The trainer's flags for every demo adapter (its --data, --eval-data, --out are added).
export const TRAIN_FLAGS = ['--rank', '4', '--alpha', '8', '--steps', '80', '--lr', '0.01', '--batch-size', '8', '--seq-len', '256', '--seed', '1', '--threads', '1'];

// The quickstart request, sent to the base model and to each adapter.
export const QUICKSTART = { prompt: 'Once upon a time', max_tokens: 48, temperature: 0 };

export interface DemoResult {
  style: Style;
  dir: string;
  evalLossBase: number;
  evalLossFinal: number;
  trainExamples: number;
  evalExamples: number;
  seconds: number;
}

// Data and training for `styles` into <out>/<style>; paths are relative to ROOT (the process
// changes directory there), so the files written do not depend on where the checkout is.
export async function makeDemoAdapters(opts: { out?: string; data?: string; styles?: readonly Style[]; log?: (line: string) => void } = {}): Promise<DemoResult[]> {
  process.chdir(ROOT);
  const out = opts.out ?? ADAPTERS;
  const dataRoot = opts.data ?? 'data/demo';
  const log = opts.log ?? ((line: string) => console.log(line));
  const files = loadModelFiles(MODEL);
  const tokenizer = new TextTokenizer(files.tokenizerJson, files.tokenizerConfig);
  log(`generating ${DATA.count + DATA.evalCount} stories with ${MODEL} …`);
  const stories = await generateStories({ modelDir: MODEL, ...DATA });
  mkdirSync(dataRoot, { recursive: true });
  writeFileSync(join(dataRoot, 'stories.jsonl'), toJsonl(stories)); // the model's own stories, untranslated
  const results: DemoResult[] = [];
  for (const style of opts.styles ?? STYLES) {
    const data = splitStories(stories.map((s) => fitStory(s, tokenizer, DATA.maxExampleTokens, style.translate)), DATA.count);
    const dataDir = join(dataRoot, style.name);
    mkdirSync(dataDir, { recursive: true });
    writeFileSync(join(dataDir, 'train.jsonl'), toJsonl(data.train));
    writeFileSync(join(dataDir, 'eval.jsonl'), toJsonl(data.eval));
    const dir = join(out, style.name);
    log(`training ${style.name}: ${data.train.length} train, ${data.eval.length} held-out stories → ${dir}`);
    const { examples } = existsSync(dir) ? readMeta(dir, []) : NO_META; // make-routing-set's; training rewrites the directory
    const args = parseTrainArgs(['--model', MODEL, '--data', join(dataDir, 'train.jsonl'), '--eval-data', join(dataDir, 'eval.jsonl'), '--out', dir, '--overwrite', ...TRAIN_FLAGS]);
    const report = await train(args, { stream: quietStream });
    writeFileSync(join(dir, META_FILE), encodeMeta({ description: style.description, examples }));
    results.push({ style, dir, evalLossBase: report.evalLossBase!, evalLossFinal: report.evalLossFinal!, trainExamples: data.train.length, evalExamples: data.eval.length, seconds: report.seconds });
    log(`  held-out loss ${report.evalLossBase!.toFixed(3)} → ${report.evalLossFinal!.toFixed(3)} in ${report.seconds.toFixed(1)} s`);
  }
  return results;
}

// The trainer's progress lines are not needed here (the summary per adapter is printed).
const quietStream = { write: () => true, isTTY: false } as unknown as NodeJS.WriteStream;

// The base model's and each adapter's greedy continuation of the quickstart prompt, from a server
// started on the default model with these adapters preloaded.
export async function quickstartSamples(adapters: string): Promise<{ model: string; text: string }[]> {
  const { startServer } = await import('../src/server/serve.ts');
  const { DEFAULT_CONFIG } = await import('../src/server/config.ts');
  const store = mkdtempSync(join(tmpdir(), 'loraserve-demo-store-'));
  const server = await startServer({ ...DEFAULT_CONFIG, model: resolve(MODEL), port: 0, adapters: store, preloadAdapters: resolve(adapters), threads: 1, logLevel: 'silent' });
  try {
    const models = ((await (await fetch(`${server.url}/v1/models`)).json()) as { data: { id: string }[] }).data.map((m) => m.id);
    const samples: { model: string; text: string }[] = [];
    for (const model of models) {
      const r = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, ...QUICKSTART }) });
      if (r.status !== 200) throw new Error(`${model}: ${r.status} ${await r.text()}`);
      samples.push({ model, text: ((await r.json()) as { choices: { text: string }[] }).choices[0].text });
    }
    return samples;
  } finally {
    await server.close();
    rmSync(store, { recursive: true, force: true });
  }
}

// Replaces what lies between <!-- name:begin --> and <!-- name:end --> in a file.
export function replaceBetween(file: string, name: string, content: string): void {
  const text = readFileSync(file, 'utf8');
  const begin = `<!-- ${name}:begin -->`;
  const end = `<!-- ${name}:end -->`;
  const i = text.indexOf(begin);
  const j = text.indexOf(end);
  if (i < 0 || j < i) throw new Error(`${file} has no ${begin} … ${end} section`);
  writeFileSync(file, `${text.slice(0, i + begin.length)}\n${content.trim()}\n${text.slice(j)}`);
}

const cell = (s: string): string => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');

export function lossTable(results: DemoResult[]): string {
  const rows = results.map((r) => {
    const dir = relative('models', r.dir);
    const drop = (1 - r.evalLossFinal / r.evalLossBase) * 100;
    return `| \`${r.style.name}\` | ${cell(r.style.description)} | ${r.trainExamples} / ${r.evalExamples} | ${r.evalLossBase.toFixed(3)} | ${r.evalLossFinal.toFixed(3)} | −${drop.toFixed(0)}% | [![${r.style.name} loss curve](${dir}/loss.png)](${dir}/loss.svg) |`;
  });
  return [
    `Written by \`npm run make-demo-adapters\` (training flags: \`${TRAIN_FLAGS.join(' ')}\`). Loss is the`,
    'mean cross-entropy per token on held-out stories of the style (stories the training set does not',
    'contain), before training (the base model) and after.',
    '',
    '| adapter | description | train / held-out stories | held-out loss, base | with the adapter | change | loss curve |',
    '|---|---|---|---|---|---|---|',
    ...rows,
  ].join('\n');
}

export function samplesBlock(samples: { model: string; text: string }[]): string {
  return [
    `Written by \`npm run make-demo-adapters\` from a server it starts: the same request (\`"prompt": "${QUICKSTART.prompt}"\`,`,
    `\`"max_tokens": ${QUICKSTART.max_tokens}\`, \`"temperature": 0\`) to each model.`,
    '',
    '| `model` | prompt and continuation |',
    '|---|---|',
    ...samples.map((s) => `| \`${s.model}\` | **${QUICKSTART.prompt}**${cell(s.text.trimEnd())} |`),
  ].join('\n');
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { 'no-docs': { type: 'boolean', default: false } }, strict: true });
  const t0 = performance.now();
  const results = await makeDemoAdapters();
  if (!values['no-docs']) {
    replaceBetween(join(ROOT, 'models/README.md'), 'demo-adapters', lossTable(results));
    const samples = await quickstartSamples(ADAPTERS);
    replaceBetween(join(ROOT, 'README.md'), 'quickstart-samples', samplesBlock(samples));
    for (const s of samples) console.log(`${s.model.padEnd(10)} ${s.text.trim()}`);
  }
  console.log(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}
