// node:util parseArgs for every command line (loraserve generate/serve/train/merge/export), with
// one difference: a negative number (or a comma list of numbers starting with one) after a string
// flag is that flag's value. parseArgs alone refuses `--seed -1` or `--presence-penalty -0.5` as
// ambiguous (the value starts with a dash) and asks for `--seed=-1`; here both spellings mean the same. Anything else that starts with a dash is
// still a flag (an unknown one is still an error under strict), and nothing after `--` is touched.
// It lives in src/runtime, the layer every command's parser may import (docs/architecture.md).
import { parseArgs } from 'node:util';
import type { ParseArgsConfig } from 'node:util';

// -1, -0.5, -.5, -2e-3, -10. (a negative number as Number() reads it, spelled plainly), or a comma
// list that starts with one (merge --weights -1,0.5)
const NUMBER = String.raw`(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?`;
const NEGATIVE_NUMBER = new RegExp(`^-${NUMBER}(?:,\\s*[+-]?${NUMBER})*$`, 'i');

export function parseFlags<T extends ParseArgsConfig & { args: string[] }>(config: T): ReturnType<typeof parseArgs<T>> {
  return parseArgs({ ...config, args: joinNegativeValues(config.args, config.options ?? {}) } as T);
}

// `--flag -1` → `--flag=-1` (and `-f -1` → `--flag=-1` for a short alias) where --flag takes a string.
export function joinNegativeValues(args: readonly string[], options: NonNullable<ParseArgsConfig['options']>): string[] {
  const takesString = (name: string): boolean => Object.hasOwn(options, name) && options[name].type === 'string';
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === '--') { out.push(...args.slice(i)); break; }
    const long = /^--([^=]+)$/.exec(arg)?.[1];
    const short = /^-([^-])$/.exec(arg)?.[1];
    const name = long ?? (short !== undefined ? Object.keys(options).find((k) => options[k].short === short) : undefined);
    const next = args[i + 1];
    if (name !== undefined && takesString(name) && next !== undefined && NEGATIVE_NUMBER.test(next)) {
      out.push(`--${name}=${next}`);
      i++;
    } else {
      out.push(arg);
    }
  }
  return out;
}
