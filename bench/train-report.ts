// The trainer's figures in the docs (run by `npm run bench:report`, after bench/report.ts), so that
// no number there is typed by hand:
//   - docs/benchmarks.md, block `train`: training vs prefill tokens/s and peak RSS on the 110M model,
//     from the latest `npm run bench -- --only train` (kept in docs/figures/train.json);
//   - README.md, block `train`: the same, and the pirate demo adapter's run (its training args,
//     held-out loss before and after, loss curve), read from models/default-adapters/pirate/.
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { before, writeBlock } from './markers.ts';
import { figuresSource } from './figures-source.ts';

const here = (p: string): string => fileURLToPath(new URL(p, import.meta.url));
const DOCS = here('../docs/benchmarks.md');
const README = here('../README.md');
const PIRATE = here('../models/default-adapters/pirate');

interface TrainFigures {
  model: string; batch: number; seq_len: number; rank: number; targets: number; lora_share: number;
  train_tok_s: number; prefill_tok_s: number; train_over_prefill: number; target_ratio: number;
  train_step_ms: number[]; prefill_step_ms: number[]; optimizer_step_ms: number; peak_rss_mb: number;
}
interface Run { date: string; cores: number; cpus: string; node: string; quick?: boolean; train?: TrainFigures }

const figures = figuresSource<Run>('train', 'train');
const f = (v: number, d = 0): string => v.toFixed(d);

const lines: string[] = [];
if (figures) {
  const { run } = figures;
  const t = run.train!;
  const day = run.date.slice(0, 10);
  const machine = `${run.cores}-core ${run.cpus}, Node ${run.node}`;
  const met = t.train_over_prefill >= t.target_ratio;
  const body = [
    `Figures of ${day} (${t.model}, ${machine}; \`npm run bench -- --only train${run.quick ? ' --quick' : ''}\`, written by \`npm run bench:report\` from docs/figures/train.json). ` +
      `One training step is a forward and backward pass of the training graph over a batch of ${t.batch} × ${t.seq_len} tokens, with LoRA rank ${t.rank} on all ${t.targets} targets of every layer ` +
      `(${f(100 * t.lora_share, 2)}% of the model's parameters trainable); prefill is the inference graph on the same batch shape, in the same run.`,
    '',
    '| training tok/s | prefill tok/s | training / prefill | target | training step ms | prefill step ms | AdamW ms | peak RSS MB |',
    '|---|---|---|---|---|---|---|---|',
    `| ${f(t.train_tok_s)} | ${f(t.prefill_tok_s)} | ${f(t.train_over_prefill, 2)} | ≥ ${t.target_ratio} (${met ? 'met' : '**not met**'}) | ` +
      `${t.train_step_ms.map((x) => f(x)).join(' ')} | ${t.prefill_step_ms.map((x) => f(x)).join(' ')} | ${f(t.optimizer_step_ms, 1)} | ${f(t.peak_rss_mb)} |`,
  ];
  writeBlock(DOCS, 'train', body.join('\n'), (text, block) => `${text.trimEnd()}\n\n## Training (\`--only train\`)\n\n${block}\n`);
  figures.keep();
  lines.push(`Training speed on the synthetic 110M model, batch ${t.batch} × ${t.seq_len}, rank ${t.rank} on all targets: ${f(t.train_tok_s)} training tokens/s against ` +
    `${f(t.prefill_tok_s)} prefill tokens/s on the same batch shape (${f(t.train_over_prefill, 2)}×; target ≥ ${t.target_ratio}), peak RSS ${f(t.peak_rss_mb)} MB ` +
    `(${day}, docs/benchmarks.md).`);
}

if (existsSync(`${PIRATE}/metrics.jsonl`) && existsSync(`${PIRATE}/training_args.json`)) {
  const records = readFileSync(`${PIRATE}/metrics.jsonl`, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; loss: number | null; eval_loss?: number });
  const args = JSON.parse(readFileSync(`${PIRATE}/training_args.json`, 'utf8')) as Record<string, unknown>;
  const base = records.find((r) => r.step === 0)?.eval_loss;
  const last = [...records].reverse().find((r) => r.eval_loss !== undefined);
  const steps = records.at(-1)?.step;
  if (base !== undefined && last?.eval_loss !== undefined) {
    lines.push('', `The pirate demo adapter (models/default-adapters/pirate, made by \`npm run make-demo-adapters\`): rank ${String(args.rank)}, α ${String(args.alpha)}, ` +
      `${String(steps)} steps at lr ${String(args.lr)}, seed ${String(args.seed)}, on stories the stories260K model wrote itself, translated by src/train/pirate.ts. ` +
      `Held-out loss on pirate stories: ${f(base, 3)} for the base model, ${f(last.eval_loss, 3)} with the adapter (${f(100 * (1 - last.eval_loss / base), 1)}% lower).`,
    '', '![loss curve of the pirate demo adapter](models/default-adapters/pirate/loss.png)');
  }
}
if (lines.length) {
  writeBlock(README, 'train', lines.join('\n'), before('## Configuration'));
  console.log(`README.md${figures ? ' and docs/benchmarks.md' : ''}: trainer figures${figures ? ` of ${figures.run.date}` : ''}`);
} else console.log('no trainer figures yet: run `npm run bench -- --only train` (and `npm run make-demo-adapters`)');
