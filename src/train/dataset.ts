// A data file → Examples (examples.ts), with every error naming the file and its 1-based line.
//
// Formats, chosen by the file's extension:
//   .txt       plain text, one example per paragraph (paragraphs are separated by blank lines),
//              loss on every token. Paragraphs, not fixed windows: a story or a document keeps its
//              BOS and EOS, and --packing already fills rows with short paragraphs. A paragraph
//              longer than --seq-len is an error (split it, or raise --seq-len).
//   otherwise  JSON lines, one object per non-blank line, each one of
//              {"prompt": str, "completion": str}   loss on the completion (and EOS)
//              {"messages": [{"role", "content"}…]} rendered by the model's chat template; loss
//                                                   on the assistant turns only
//              {"text": str}                        loss on every token
//              Other keys are ignored; a line with keys of two formats is refused as ambiguous.
import { readFileSync } from 'node:fs';
import type { ChatMessage } from '../runtime/chat-template.ts';
import type { Example, ExampleEncoder } from './examples.ts';
import { splitEval } from './batches.ts';
import type { TrainArgs } from './train-args.ts';

export interface SourcedExample extends Example {
  line: number; // 1-based line of the file where the example starts
}

export interface ReadDatasetOptions {
  maxTokens: number;     // the longest example allowed (--seq-len, itself ≤ the model's context)
  flag?: string;         // the flag that named the file, for messages (--data, --eval-data)
  name?: string;         // how messages name the file instead of its path (a job: "training_file file-…")
  limit?: string;        // how messages name the length bound (default --seq-len; a job: lora.seq_len)
}

const ROLES = ['system', 'developer', 'user', 'assistant', 'tool'];

export function readDataset(path: string, encoder: ExampleEncoder, opts: ReadDatasetOptions): SourcedExample[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`${opts.name ?? `${opts.flag ?? '--data'} ${path}`}: cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  text = text.replace(/^\uFEFF/, '');
  const units = path.toLowerCase().endsWith('.txt') ? paragraphs(text) : jsonLines(text);
  const out: SourcedExample[] = [];
  for (const { line, body } of units) {
    const at = opts.name ? `${opts.name}, line ${line}` : `${path}:${line}`;
    let ex: Example;
    try {
      ex = path.toLowerCase().endsWith('.txt') ? encoder.text(body) : encodeJsonLine(body, encoder);
    } catch (e) {
      throw new Error(`${at}: ${(e as Error).message}`);
    }
    const limit = opts.limit ?? '--seq-len';
    if (ex.ids.length > opts.maxTokens) throw new Error(`${at}: the example is ${ex.ids.length} tokens, longer than ${limit} ${opts.maxTokens}; shorten it or raise ${limit} (up to the model's context)`);
    if (!ex.lossMask.some((m) => m === 1)) throw new Error(`${at}: the example has no target tokens, so there is nothing to learn from it`);
    out.push({ ...ex, line });
  }
  if (out.length === 0) throw new Error(`${opts.name ?? path}: no examples (the file is empty or only blank lines)`);
  return out;
}

// The run's training and eval examples: --eval-data, or --eval-split of --data (seeded by --seed).
export function loadTrainEval(args: Pick<TrainArgs, 'data' | 'evalData' | 'evalSplit' | 'seqLen' | 'seed' | 'names'>, encoder: ExampleEncoder): { train: SourcedExample[]; eval: SourcedExample[] } {
  const n = args.names;
  const data = readDataset(args.data, encoder, { maxTokens: args.seqLen, flag: '--data', name: n?.data, limit: n?.seqLen });
  if (args.evalData !== null) return { train: data, eval: readDataset(args.evalData, encoder, { maxTokens: args.seqLen, flag: '--eval-data', name: n?.evalData ?? undefined, limit: n?.seqLen }) };
  return splitEval(data, args.evalSplit, args.seed);
}

// The non-blank lines of a text with their 1-based numbers (a trailing \r dropped). It scans, so a
// blank line costs no string or object: an upload of 32 million newlines once held the server's
// main thread for seconds (file-store.ts checks uploads with this). `limit`: stop once more than
// that many are found (the caller refuses the file).
export function jsonLines(text: string, limit = Infinity): { line: number; body: string }[] {
  const out: { line: number; body: string }[] = [];
  let line = 0;
  for (let at = 0; at <= text.length; ) {
    let end = text.indexOf('\n', at);
    if (end === -1) end = text.length;
    line++;
    if (hasContent(text, at, end)) {
      const body = text.slice(at, text.charCodeAt(end - 1) === 13 ? end - 1 : end);
      out.push({ line, body });
      if (out.length > limit) return out;
    }
    at = end + 1;
  }
  return out;
}

// Whether text[from, to) holds anything but white space (what String.prototype.trim removes).
function hasContent(text: string, from: number, to: number): boolean {
  for (let i = from; i < to; i++) {
    const c = text.charCodeAt(i);
    if (c === 32 || (c >= 9 && c <= 13)) continue;
    if (c < 128 || !/\s/.test(text[i])) return true;
  }
  return false;
}

// Paragraphs separated by blank lines, each starting at its first line; inner newlines kept.
function paragraphs(text: string): { line: number; body: string }[] {
  const out: { line: number; body: string }[] = [];
  let start = 0;
  let buf: string[] = [];
  const lines = text.split('\n').map((l) => l.replace(/\r$/, ''));
  lines.forEach((l, i) => {
    if (l.trim() === '') {
      if (buf.length) out.push({ line: start + 1, body: buf.join('\n') });
      buf = [];
    } else {
      if (!buf.length) start = i;
      buf.push(l);
    }
  });
  if (buf.length) out.push({ line: start + 1, body: buf.join('\n') });
  return out;
}

function encodeJsonLine(body: string, encoder: ExampleEncoder): Example {
  const line = parseJsonLine(body);
  if (line.kind === 'text') return encoder.text(line.text);
  if (line.kind === 'chat') return encoder.chat(line.messages);
  return encoder.promptCompletion(line.prompt, line.completion);
}

// One JSON line's structure, checked without a tokenizer (the file API checks uploads with it,
// every line, before anything is stored): what encodeJsonLine then tokenizes.
export type JsonLine = { kind: 'text'; text: string } | { kind: 'prompt'; prompt: string; completion: string } | { kind: 'chat'; messages: ChatMessage[] };

export function parseJsonLine(body: string): JsonLine {
  let v: unknown;
  try {
    v = JSON.parse(body);
  } catch (e) {
    throw new Error(`not valid JSON (${(e as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('each line must be a JSON object with "text", "prompt" and "completion", or "messages"');
  const o = v as Record<string, unknown>;
  const kinds = [('text' in o) && 'text', ('prompt' in o || 'completion' in o) && 'prompt/completion', ('messages' in o) && 'messages'].filter(Boolean);
  if (kinds.length === 0) throw new Error('the object has none of "text", "prompt" and "completion", or "messages"');
  if (kinds.length > 1) throw new Error(`the object mixes formats (${kinds.join(' and ')}); use one per line`);
  if ('text' in o) {
    if (typeof o.text !== 'string' || o.text === '') throw new Error('"text" must be a non-empty string');
    return { kind: 'text', text: o.text };
  }
  if ('messages' in o) return { kind: 'chat', messages: parseChat(o.messages) };
  if (typeof o.prompt !== 'string') throw new Error('"prompt" must be a string');
  if (typeof o.completion !== 'string') throw new Error('"completion" must be a string');
  return { kind: 'prompt', prompt: o.prompt, completion: o.completion };
}

function parseChat(v: unknown): ChatMessage[] {
  if (!Array.isArray(v) || v.length === 0) throw new Error('"messages" must be a non-empty array');
  const messages = v.map((m, i) => {
    const { role, content } = (typeof m === 'object' && m !== null ? m : {}) as { role?: unknown; content?: unknown };
    if (typeof role !== 'string' || !ROLES.includes(role)) throw new Error(`"messages[${i}].role" must be one of ${ROLES.join(', ')}`);
    if (typeof content !== 'string') throw new Error(`"messages[${i}].content" must be a string`);
    return { role, content };
  });
  if (!messages.some((m) => m.role === 'assistant')) throw new Error('"messages" has no assistant message, so there is nothing to learn from it');
  return messages;
}
