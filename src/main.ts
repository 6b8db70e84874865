// loraserve command line.
//   loraserve generate --model DIR --prompt TEXT [--adapter DIR|NAME --logprobs N --max-tokens N
//                      --temperature T --top-p P --top-k K --min-p P --seed S --stop STR (repeatable)
//                      --ignore-eos …]   (loraserve generate --help)
//   loraserve [serve] [options]   (see src/server/config.ts; with no command, serve)
//   loraserve train --model DIR --data FILE --out DIR [options]   (see src/train/train-args.ts)
//   loraserve merge --model DIR --out DIR --inputs D1,D2 --weights … --combination-type …   (src/merge/merge-command.ts)
//   loraserve export --model DIR --adapter DIR|NAME --out DIR [--shard-mb N]   (src/merge/export-command.ts)
// Every command parses its flags with parseFlags (src/runtime/cli-args.ts): a negative number may
// follow its flag (--presence-penalty -0.5) as well as be joined to it (--presence-penalty=-0.5).
import { basename, join, resolve } from 'node:path';
import { existsSync, realpathSync, statSync } from 'node:fs';
import { startEngine } from './start-engine.ts';
import { parseSampling } from './server/sampling-fields.ts';
import { TextTokenizer } from './runtime/tokenizer.ts';
import { loadModelFiles } from './runtime/model-loader.ts';
import { invalidField, toLoraserveError } from './runtime/errors.ts';
import { parseFlags } from './runtime/cli-args.ts';
import { DEFAULT_ADAPTERS } from './runtime/engine-client.ts';
import type { AdapterRef, TokenEvent, TopLogprob } from './runtime/generate-request.ts';
import { CONFIG_FILE, decodeAdapterOrThrow, readAdapterDir } from './adapters/lora-adapter.ts';
import { checkAdapterName } from './adapters/adapter-store.ts';
import { DEFAULT_ADAPTERS_DIR, DEFAULT_MODEL_DIR } from './server/default-model.ts';

// `loraserve --port 9000` is `loraserve serve --port 9000`: flags alone start the server;
// `loraserve --help` (or `help`) lists the commands.
const argv = process.argv.slice(2);
const wantsHelp = argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help';
const [command, ...rest] = wantsHelp ? ['help'] : argv[0]?.startsWith('-') ? ['serve', ...argv] : argv;

const USAGE = `loraserve: one base model, many LoRA adapters, behind an OpenAI-compatible API.

  loraserve [serve] [flags]    serve the model and its adapters over HTTP (no command: serve; flags in README.md, "Configuration")
  loraserve generate [flags]   generate from a prompt on the command line, with the base model or a LoRA adapter (--adapter); loraserve generate --help
  loraserve train [flags]      fine-tune a LoRA adapter into a PEFT directory (--model, --data, --out; README.md, "Training adapters")
  loraserve merge [flags]      merge PEFT adapters into a new one (--model, --inputs, --weights, --combination-type, --out)
  loraserve export [flags]     write a full checkpoint with an adapter merged in (--model, --adapter, --out)
  loraserve help               this list

A negative number may follow its flag: --presence-penalty -0.5 is --presence-penalty=-0.5.
`;

const MAX_LOGPROBS = 20; // as the API's logprobs / top_logprobs

// --logprobs N: one line per generated token (its number, the token, its log-probability, the top N
// alternatives with theirs), under a header. Tokens are shown as JSON strings, so spaces and
// newlines are visible.
class LogprobTable {
  private count = 0;
  constructor(private readonly top: number) {}

  row(ev: TokenEvent & { type: 'token' }): string {
    const header = this.count === 0 ? `${'#'.padStart(4)}  ${'token'.padEnd(14)} ${'logprob'.padStart(8)}${this.top > 0 ? `  top ${this.top}` : ''}\n` : '';
    this.count++;
    const alternatives = (ev.top ?? []).map((t: TopLogprob) => `${JSON.stringify(t.text)} ${fmt(t.logprob)}`).join(', ');
    return `${header}${String(this.count).padStart(4)}  ${JSON.stringify(ev.tokenText).padEnd(14)} ${fmt(ev.logprob ?? NaN).padStart(8)}${alternatives ? `  ${alternatives}` : ''}\n`;
  }
}

const fmt = (logprob: number): string => (logprob === -Infinity ? '-inf' : logprob.toFixed(4));

// what --help shows of the table: the rows of a real one
const LOGPROBS_EXAMPLE = new LogprobTable(2)
  .row({ type: 'token', id: 0, text: '', tokenText: ' there', logprob: -0.0123, top: [{ id: 0, text: ' there', logprob: -0.0123 }, { id: 1, text: ' a', logprob: -4.5678 }] })
  .replace(/^/gm, ' '.repeat(24)).trimEnd();

const GENERATE_USAGE = `loraserve generate: generate from a prompt with the base model, or with a LoRA adapter on it,
and print the text to stdout as it is generated.

  --model DIR           Hugging Face model directory (default: models/default, the bundled stories260K)
  --prompt TEXT         the prompt (default: empty)
  --adapter DIR|NAME    generate with a LoRA adapter: a PEFT adapter directory (adapter_config.json +
                        adapter_model.safetensors), or the name of one in --adapters (default ./adapters;
                        with the default model, the demo adapters in models/default-adapters too)
  --adapters STORE      where --adapter NAME is looked up (default ./adapters)
  --logprobs N          per generated token, print the chosen token's log-probability and the top N
                        alternatives (N from 0 to ${MAX_LOGPROBS}), one line each, then the text; for example
${LOGPROBS_EXAMPLE}

  Sampling, the API's fields in kebab case:
  --max-tokens N (default 128)  --temperature T  --top-p P  --top-k K  --min-p P  --seed S
  --repetition-penalty R  --frequency-penalty F  --presence-penalty P  --stop STR (repeatable)  --ignore-eos

  A negative number may follow its flag: --presence-penalty -0.5 is --presence-penalty=-0.5.
  --help, -h            this text
`;

const GENERATE_FLAGS = {
  model: { type: 'string', default: DEFAULT_MODEL_DIR },
  prompt: { type: 'string', default: '' },
  adapter: { type: 'string' },
  adapters: { type: 'string', default: './adapters' },
  logprobs: { type: 'string' },
  'max-tokens': { type: 'string' },
  temperature: { type: 'string' },
  'top-p': { type: 'string' },
  'top-k': { type: 'string' },
  'min-p': { type: 'string' },
  seed: { type: 'string' },
  'repetition-penalty': { type: 'string' },
  'frequency-penalty': { type: 'string' },
  'presence-penalty': { type: 'string' },
  stop: { type: 'string', multiple: true },
  'ignore-eos': { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

async function generate(argv: string[]): Promise<void> {
  let values: ReturnType<typeof parseFlags<{ args: string[]; options: typeof GENERATE_FLAGS; strict: true }>>['values'];
  try {
    ({ values } = parseFlags({ args: argv, options: GENERATE_FLAGS, strict: true }));
  } catch (e) {
    throw invalidField('argv', `generate: ${(e as Error).message}; loraserve generate --help lists the flags`);
  }
  if (values.help) {
    process.stdout.write(GENERATE_USAGE);
    return;
  }
  const num = (flag: string): number | undefined => {
    const v = values[flag as keyof typeof values] as string | undefined;
    if (v === undefined) return undefined;
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n)) throw invalidField(`--${flag}`, `--${flag} must be a number, got ${JSON.stringify(v)}`);
    return n;
  };
  const logprobs = num('logprobs') ?? null;
  if (logprobs !== null && !(Number.isInteger(logprobs) && logprobs >= 0 && logprobs <= MAX_LOGPROBS)) {
    throw invalidField('--logprobs', `--logprobs must be an integer in [0, ${MAX_LOGPROBS}] (the alternatives shown per token), got ${JSON.stringify(values.logprobs)}`);
  }
  const model = loadModelFiles(values.model);
  const tokenizer = new TextTokenizer(model.tokenizerJson, model.tokenizerConfig);

  // The adapter is read and validated against the model before the engine starts, then handed to it.
  let adapter: { ref: AdapterRef; weights: ReturnType<typeof decodeAdapterOrThrow>['adapter'] } | null = null;
  if (values.adapter !== undefined) {
    const dir = adapterDir(values.adapter, values.adapters, model.dir);
    const name = basename(dir);
    const decoded = decodeAdapterOrThrow(await readAdapterDir(dir), model.config, { maxRank: Number.MAX_SAFE_INTEGER, modelName: model.name }, name);
    for (const w of decoded.warnings) process.stderr.write(`loraserve: adapter ${name}: ${w}\n`);
    adapter = { ref: { name, version: decoded.adapter.version, dir }, weights: decoded.adapter };
  }
  const maxLoraRank = Math.max(DEFAULT_ADAPTERS.maxLoraRank, adapter?.weights.maxRank ?? 0);
  const engine = await startEngine({ runtime: { modelDir: model.dir }, adapters: { maxLoraRank } });
  try {
    const fields = parseSampling({
      max_tokens: num('max-tokens'), temperature: num('temperature'), top_p: num('top-p'), top_k: num('top-k'),
      min_p: num('min-p'), seed: num('seed'), repetition_penalty: num('repetition-penalty'),
      frequency_penalty: num('frequency-penalty'), presence_penalty: num('presence-penalty'),
      stop: values.stop, ignore_eos: values['ignore-eos'],
    }, { vocabSize: engine.info.vocabSize, maxContext: engine.info.maxContext, defaultMaxTokens: 128 });
    if (adapter) await engine.putAdapter(adapter.weights); // its buffers move to the engine
    const promptTokens = tokenizer.encode(values.prompt);
    const table = logprobs !== null ? new LogprobTable(logprobs) : null;
    for await (const ev of engine.generate({ ...fields, promptTokens, logprobs, adapter: adapter?.ref ?? null })) {
      if (ev.type === 'error') throw toLoraserveError(ev.error);
      if (ev.type === 'token') {
        if (table) process.stdout.write(table.row(ev));
        else process.stdout.write(ev.text);
      } else if (ev.type === 'done') {
        // with --logprobs the table came first: the text follows it, after a blank line
        process.stdout.write(table ? `\n${ev.text}\n` : '\n');
      }
    }
  } finally {
    await engine.close();
  }
}

// --adapter: a directory with adapter_config.json is used as it is; anything else is an adapter name,
// looked up in --adapters, then (for the default model only) among the demo adapters beside it.
function adapterDir(value: string, store: string, modelDir: string): string {
  const isDir = (p: string): boolean => statSync(p, { throwIfNoEntry: false })?.isDirectory() ?? false;
  const asDir = resolve(value);
  if (isDir(asDir)) {
    if (existsSync(join(asDir, CONFIG_FILE))) return realpathSync(asDir);
    throw invalidField('--adapter', `--adapter ${asDir} is a directory without ${CONFIG_FILE}: not a PEFT adapter directory`);
  }
  const stores = [resolve(store), ...(modelDir === resolve(DEFAULT_MODEL_DIR) ? [DEFAULT_ADAPTERS_DIR] : [])];
  try {
    checkAdapterName(value, '--adapter');
  } catch {
    throw invalidField('--adapter', `--adapter ${JSON.stringify(value)} is neither an adapter directory nor an adapter name`);
  }
  for (const s of stores) if (isDir(join(s, value))) return realpathSync(join(s, value));
  throw invalidField('--adapter', `--adapter ${JSON.stringify(value)} is not a directory, and no adapter of that name is in ${stores.join(' or ')}`);
}

async function main(): Promise<void> {
  switch (command) {
    case 'help':
      process.stdout.write(USAGE);
      return;
    case 'generate':
      return generate(rest);
    case 'merge': {
      const { mergeCommand } = await import('./merge/merge-command.ts');
      return mergeCommand(rest);
    }
    case 'export': {
      const { exportCommand } = await import('./merge/export-command.ts');
      return exportCommand(rest);
    }
    case 'train': {
      const { trainCommand } = await import('./train/train-command.ts');
      return trainCommand(rest);
    }
    case 'serve':
    case undefined: {
      const { serve } = await import('./server/serve.ts');
      return serve(rest);
    }
    default:
      throw new Error(`unknown command ${JSON.stringify(command)}; use 'serve', 'generate', 'train', 'merge' or 'export' (loraserve --help lists them)`);
  }
}

main().catch((err) => {
  process.stderr.write(`loraserve: ${toLoraserveError(err).message}\n`);
  process.exit(1);
});
