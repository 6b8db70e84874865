// Data files on disk → examples: each format, its loss mask, and errors naming file:line.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadModelFiles } from '../../src/runtime/model-loader.ts';
import { TextTokenizer } from '../../src/runtime/tokenizer.ts';
import { ChatTemplate } from '../../src/runtime/chat-template.ts';
import { ExampleEncoder } from '../../src/train/examples.ts';
import type { Example } from '../../src/train/examples.ts';
import { loadTrainEval, readDataset } from '../../src/train/dataset.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const files = loadModelFiles(STORIES_DIR);
const tokenizer = new TextTokenizer(files.tokenizerJson, files.tokenizerConfig);
const encoder = ExampleEncoder.forModel(files);
const BOS = tokenizer.tokenId('<s>')!;
const EOS = tokenizer.tokenId('</s>')!;
const dir = mkdtempSync(join(tmpdir(), 'dataset-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
function file(text: string, ext = 'jsonl'): string {
  const path = join(dir, `f${n++}.${ext}`);
  writeFileSync(path, text);
  return path;
}
const read = (path: string, maxTokens = 256) => readDataset(path, encoder, { maxTokens });
const targetText = (ex: Example): string => ex.ids.filter((_, i) => ex.lossMask[i] === 1).map((id) => tokenizer.tokenText(id)).join('');

describe('formats', () => {
  it('{"text"}: BOS, the text, EOS; every token after BOS is a target', () => {
    const [ex, ...rest] = read(file('{"text": "Once upon a time"}\n'));
    expect(rest).toEqual([]);
    expect(ex.ids).toEqual([...tokenizer.encode('Once upon a time'), EOS]);
    expect(ex.ids[0]).toBe(BOS);
    expect(ex.lossMask).toEqual(ex.ids.map((_, i) => (i === 0 ? 0 : 1)));
    expect(ex.line).toBe(1);
  });

  it('{"prompt","completion"}: only the completion and EOS are targets', () => {
    const [ex] = read(file('{"prompt": "Once upon a time", "completion": " there was a dog."}\n'));
    expect(ex.ids).toEqual([...tokenizer.encode('Once upon a time there was a dog.'), EOS]);
    expect(targetText(ex)).toBe(' there was a dog.</s>');
    expect(ex.lossMask.slice(0, 5)).toEqual([0, 0, 0, 0, 0]); // <s> Once upon a time
  });

  it('{"messages"}: the model template renders it; only assistant turns (with their end of turn) are targets', () => {
    const messages = [
      { role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello there' },
      { role: 'user', content: 'Tell a story' }, { role: 'assistant', content: 'Once upon a time' },
    ];
    const [ex] = read(file(`${JSON.stringify({ messages })}\n`));
    expect(tokenizer.decode(ex.ids, false)).toBe('<s> User: Hi\nAssistant: Hello there\nUser: Tell a story\nAssistant: Once upon a time\n');
    const spans: string[] = [];
    ex.lossMask.forEach((m, i) => {
      if (m && !ex.lossMask[i - 1]) spans.push('');
      if (m) spans[spans.length - 1] += tokenizer.tokenText(ex.ids[i]);
    });
    expect(spans).toEqual([' Hello there\n', ' Once upon a time\n']);
  });

  it('{"messages"} with another template (system turn, end-of-turn token)', () => {
    const template = new ChatTemplate(
      "{% for m in messages %}{{ '<s>' if loop.first }}[{{ m['role'] }}] {{ m['content'] }}{% if m['role'] == 'assistant' %}</s>{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}",
      { bos_token: '<s>', eos_token: '</s>' },
    );
    const enc = new ExampleEncoder(tokenizer, template);
    const ex = enc.chat([{ role: 'system', content: 'Be kind.' }, { role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Ahoy' }]);
    // the legacy SentencePiece normalizer writes a "▁" after a special token, hence the space
    expect(targetText(ex)).toBe('Ahoy</s> \n');
    expect(ex.lossMask[0]).toBe(0);
  });

  it('{"messages"} refuses a template that does not render a prefix of the conversation as a prefix', () => {
    const lastOnly = new ChatTemplate("{{ messages[-1]['content'] }}", { bos_token: '<s>', eos_token: '</s>' });
    const enc = new ExampleEncoder(tokenizer, lastOnly);
    expect(() => enc.chat([{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Ahoy' }])).toThrow('the chat template does not render messages[0..1] as a prefix of the whole conversation');
  });

  it('.txt: one example per paragraph, each starting at its line', () => {
    const ex = read(file('The sun was up.\nTom ran.\n\n\nLily sat.\n\n', 'txt'));
    expect(ex.map((e) => e.line)).toEqual([1, 5]);
    expect(tokenizer.decode(ex[0].ids, true)).toBe('The sun was up.\nTom ran.');
    expect(ex[1].ids).toEqual([...tokenizer.encode('Lily sat.'), EOS]);
  });

  it('skips blank lines and tolerates CRLF and a UTF-8 BOM', () => {
    const ex = read(file('\uFEFF{"text": "a"}\r\n\r\n  \n{"text": "b"}\r\n'));
    expect(ex.map((e) => e.line)).toEqual([1, 4]);
  });
});

describe('errors name the file and line', () => {
  const refused: [string, RegExp][] = [
    ['{"text": "ok"}\n{"text": "broken"\n', /f\d+\.jsonl:2: not valid JSON/],
    ['{"text": "ok"}\n[1, 2]\n', /:2: each line must be a JSON object/],
    ['{"txt": "typo"}\n', /:1: the object has none of "text", "prompt" and "completion", or "messages"/],
    ['{"text": 3}\n', /:1: "text" must be a non-empty string/],
    ['{"prompt": "a"}\n', /:1: "completion" must be a string/],
    ['{"prompt": 1, "completion": "b"}\n', /:1: "prompt" must be a string/],
    ['{"text": "a", "prompt": "b", "completion": "c"}\n', /:1: the object mixes formats \(text and prompt\/completion\)/],
    ['{"messages": []}\n', /:1: "messages" must be a non-empty array/],
    ['{"messages": [{"role": "pirate", "content": "x"}]}\n', /:1: "messages\[0\].role" must be one of/],
    ['{"messages": [{"role": "user", "content": 5}]}\n', /:1: "messages\[0\].content" must be a string/],
    ['{"messages": [{"role": "user", "content": "hi"}]}\n', /:1: "messages" has no assistant message/],
  ];
  for (const [text, message] of refused) {
    it(`refuses ${JSON.stringify(text.trim().split('\n').pop())}`, () => {
      const path = file(text);
      expect(() => read(path)).toThrow(message);
      expect(() => read(path)).toThrow(path);
    });
  }

  it('refuses empty data', () => {
    const path = file('\n  \n');
    expect(() => read(path)).toThrow(`${path}: no examples (the file is empty or only blank lines)`);
    expect(() => read(file('', 'txt'))).toThrow('no examples');
  });

  it('refuses a sequence longer than --seq-len, naming the lengths', () => {
    const path = file(`{"text": "a"}\n${JSON.stringify({ text: 'Once upon a time there was a little dog.' })}\n`);
    const len = tokenizer.encode('Once upon a time there was a little dog.').length + 1;
    expect(() => read(path, len - 1)).toThrow(`${path}:2: the example is ${len} tokens, longer than --seq-len ${len - 1}`);
    expect(read(path, len)).toHaveLength(2);
  });

  it('refuses a file that cannot be read, by its flag', () => {
    expect(() => readDataset(join(dir, 'missing.jsonl'), encoder, { maxTokens: 10, flag: '--eval-data' })).toThrow(/^--eval-data .*missing\.jsonl: cannot be read \(ENOENT\)$/);
  });
});

describe('loadTrainEval', () => {
  const lines = Array.from({ length: 20 }, (_, i) => JSON.stringify({ text: `Story ${i}.` })).join('\n');
  it('splits --data by --eval-split, or reads --eval-data', () => {
    const data = file(lines);
    const split = loadTrainEval({ data, evalData: null, evalSplit: 0.1, seqLen: 64, seed: 0 }, encoder);
    expect([split.train.length, split.eval.length]).toEqual([18, 2]);
    expect(loadTrainEval({ data, evalData: null, evalSplit: 0.1, seqLen: 64, seed: 0 }, encoder)).toEqual(split);
    const evalData = file('{"text": "held out"}\n');
    const both = loadTrainEval({ data, evalData, evalSplit: 0, seqLen: 64, seed: 0 }, encoder);
    expect([both.train.length, both.eval.length]).toEqual([20, 1]);
    expect(() => loadTrainEval({ data, evalData: file('\n'), evalSplit: 0, seqLen: 64, seed: 0 }, encoder)).toThrow('no examples');
  });
});
