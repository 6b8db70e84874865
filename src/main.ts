// loraserve command line.
//   loraserve generate --model DIR --prompt TEXT [--max-tokens N --temperature T --top-p P --top-k K
//                      --min-p P --seed S --stop STR (repeatable) --ignore-eos]
//   loraserve [serve] [options]   (see src/server/config.ts; with no command, serve)
//   loraserve train --model DIR --data FILE --out DIR [options]   (see src/train/train-args.ts)
//   loraserve merge --model DIR --out DIR --inputs D1,D2 --weights … --combination-type …   (src/merge/merge-command.ts)
//   loraserve export --model DIR --adapter DIR|NAME --out DIR [--shard-mb N]   (src/merge/export-command.ts)
import { parseArgs } from 'node:util';
import { startEngine } from './start-engine.ts';
import { parseSampling } from './server/sampling-fields.ts';
import { TextTokenizer } from './runtime/tokenizer.ts';
import { loadModelFiles } from './runtime/model-loader.ts';
import { toLoraserveError } from './runtime/errors.ts';
import { DEFAULT_MODEL_DIR } from './server/default-model.ts';

// `loraserve --port 9000` is `loraserve serve --port 9000`: flags alone start the server;
// `loraserve --help` (or `help`) lists the commands.
const argv = process.argv.slice(2);
const wantsHelp = argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help';
const [command, ...rest] = wantsHelp ? ['help'] : argv[0]?.startsWith('-') ? ['serve', ...argv] : argv;

const USAGE = `loraserve: one base model, many LoRA adapters, behind an OpenAI-compatible API.

  loraserve [serve] [flags]    serve the model and its adapters over HTTP (no command: serve; flags in README.md, "Configuration")
  loraserve generate [flags]   generate from a prompt on the command line (--model, --prompt, --max-tokens, sampling flags)
  loraserve train [flags]      fine-tune a LoRA adapter into a PEFT directory (--model, --data, --out; README.md, "Training adapters")
  loraserve merge [flags]      merge PEFT adapters into a new one (--model, --inputs, --weights, --combination-type, --out)
  loraserve export [flags]     write a full checkpoint with an adapter merged in (--model, --adapter, --out)
  loraserve help               this list
`;

async function generate(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string', default: DEFAULT_MODEL_DIR },
      prompt: { type: 'string', default: '' },
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
    },
    strict: true,
  });
  const num = (flag: string): number | undefined => {
    const v = values[flag as keyof typeof values] as string | undefined;
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new Error(`--${flag} must be a number, got ${JSON.stringify(v)}`);
    return n;
  };
  const model = loadModelFiles(values.model!);
  const tokenizer = new TextTokenizer(model.tokenizerJson, model.tokenizerConfig);
  const engine = await startEngine({ runtime: { modelDir: values.model! } });
  try {
    const fields = parseSampling({
      max_tokens: num('max-tokens'), temperature: num('temperature'), top_p: num('top-p'), top_k: num('top-k'),
      min_p: num('min-p'), seed: num('seed'), repetition_penalty: num('repetition-penalty'),
      frequency_penalty: num('frequency-penalty'), presence_penalty: num('presence-penalty'),
      stop: values.stop, ignore_eos: values['ignore-eos'],
    }, { vocabSize: engine.info.vocabSize, maxContext: engine.info.maxContext, defaultMaxTokens: 128 });
    const promptTokens = tokenizer.encode(values.prompt!);
    for await (const ev of engine.generate({ ...fields, promptTokens, logprobs: null, adapter: null })) {
      if (ev.type === 'token') process.stdout.write(ev.text);
      else if (ev.type === 'error') throw new Error(ev.error.message);
      else process.stdout.write('\n');
    }
  } finally {
    await engine.close();
  }
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
