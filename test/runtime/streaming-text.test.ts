import { describe, expect, it } from 'vitest';
import { StopMatcher } from '../../src/runtime/stop-matcher.ts';
import { StreamDecoder, TextTokenizer, byteLevelBytes } from '../../src/runtime/tokenizer.ts';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

describe('stop strings', () => {
  const run = (stops: string[], pieces: string[]) => {
    const m = new StopMatcher(stops);
    let out = '';
    for (const p of pieces) {
      const r = m.push(p);
      out += r.emit;
      if (r.stopped) return { out, stopped: r.stopped };
    }
    return { out: out + m.flush(), stopped: null };
  };
  it('a stop string split across tokens still stops and never appears', () => {
    expect(run(['END'], ['The ', 'E', 'N', 'D', ' more'])).toEqual({ out: 'The ', stopped: 'END' });
    expect(run(['\n\n'], ['a\n', '\nb'])).toEqual({ out: 'a', stopped: '\n\n' });
  });
  it('a partial match that does not complete is released', () => {
    expect(run(['END'], ['EN', 'x', 'EN'])).toEqual({ out: 'ENxEN', stopped: null });
  });
  it('the earliest of several stop strings wins', () => {
    expect(run(['cd', 'b'], ['abcd'])).toEqual({ out: 'a', stopped: 'b' });
  });
  it('text before a held prefix is emitted at once', () => {
    const m = new StopMatcher(['STOP']);
    expect(m.push('hello ST').emit).toBe('hello ');
  });
});

describe('streaming decoder', () => {
  const model = loadModel(STORIES_DIR);
  const tok = new TextTokenizer(model.tokenizerJson, model.tokenizerConfig);
  it('never emits half a UTF-8 character (byte-fallback tokens of é and 😀)', () => {
    const ids = tok.encode('café naïve 😀 ok');
    const dec = new StreamDecoder(tok, ids.slice(0, 1));
    const pieces = ids.slice(1).map((id) => dec.push(id));
    expect(pieces.join('') + dec.flush()).toBe('café naïve 😀 ok');
    for (const p of pieces) expect(p).not.toContain('\uFFFD');
    expect(pieces.filter((p) => p === '').length).toBeGreaterThan(0); // the 4 emoji bytes arrive as 3 empty pieces then the character
  });
  it('keeps the space of a word-initial token after the prompt', () => {
    const prompt = tok.encode('Once upon a');
    const dec = new StreamDecoder(tok, prompt);
    expect(dec.push(tok.encode(' time', false).at(-1)!)).toBe(' time');
  });
});

describe('tokenizer_config.json add_bos_token', () => {
  const model = loadModel(STORIES_DIR);
  it('false drops the BOS the post-processor adds; true (the fixture) keeps it; chat encoding adds none', () => {
    const on = new TextTokenizer(model.tokenizerJson, model.tokenizerConfig);
    const off = new TextTokenizer(model.tokenizerJson, { ...model.tokenizerConfig, add_bos_token: false });
    expect(on.encode('Hello world')).toEqual([1, 346, 306, 414, 263, 304, 341]);
    expect(off.encode('Hello world')).toEqual([346, 306, 414, 263, 304, 341]);
    expect(on.encode('Hello world', false)).toEqual([346, 306, 414, 263, 304, 341]);
    const noPost = { ...model.tokenizerJson, post_processor: null };
    expect(new TextTokenizer(noPost, model.tokenizerConfig).encode('Hello world')).toEqual([1, 346, 306, 414, 263, 304, 341]);
  });
});

describe('tokenBytes: the bytes a token stands for (chat logprobs `bytes`)', () => {
  const files = loadModel(STORIES_DIR);
  const tok = new TextTokenizer(files.tokenizerJson, files.tokenizerConfig);
  it('a character over byte-fallback tokens: each token is its own byte, and they rebuild the character', () => {
    const ids = tok.encode('☃', false).filter((id) => tok.tokenText(id) !== ' ' && tok.tokenText(id) !== '');
    expect(ids.map((id) => tok.tokenBytes(id))).toEqual([[0xe2], [0x98], [0x83]]);
    expect(Buffer.from(ids.flatMap((id) => tok.tokenBytes(id))).toString('utf8')).toBe('☃');
  });
  it('an ordinary piece: the UTF-8 of its text, leading space included', () => {
    const [, once] = tok.encode('Once', true);
    expect(tok.tokenText(once)).toBe(' Once');
    expect(tok.tokenBytes(once)).toEqual([...Buffer.from(' Once')]);
  });
  it('the byte-level alphabet (GPT-2 bytes_to_unicode) maps each of the 256 characters back to its byte', () => {
    const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    expect(byteLevelBytes('Ġhello')).toEqual([...Buffer.from(' hello')]);
    expect(byteLevelBytes('Ċ')).toEqual([10]);
    expect(byteLevelBytes('ĉ')).toEqual([9]); // \t: the 10th non-printable byte, 256 + 9
    for (let b = 0x21; b < 256; b++) if (printable(b)) expect(byteLevelBytes(String.fromCharCode(b))).toEqual([b]);
    expect(byteLevelBytes('a\u4e00')).toBe(null);
  });
});
