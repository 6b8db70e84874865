// jsonLines scans a training file for its non-blank lines without splitting it (a file of millions
// of blank lines used to build a string and an object per line on the server's main thread): the
// same lines and numbers as the plain split-and-trim reading, on any text; `limit` stops the scan.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { jsonLines } from '../../src/train/dataset.ts';

const reference = (text: string) => text.split('\n').map((body, i) => ({ line: i + 1, body: body.replace(/\r$/, '') })).filter((u) => u.body.trim() !== '');

describe('jsonLines', () => {
  it('finds the lines split-and-trim finds, on any text of lines, blanks, \\r and unicode spaces', () => {
    const piece = fc.constantFrom('\n', '\r\n', '\r', ' ', '\t', '\u00a0', '\u2028', '\ufeff', '\u3000', 'x', '{"text":"a"}', 'é', '😀', '\v');
    fc.assert(fc.property(fc.array(piece, { maxLength: 60 }).map((p) => p.join('')), (text) => {
      expect(jsonLines(text)).toEqual(reference(text));
    }), { numRuns: 2000 });
  });

  it('stops once more than `limit` lines are found', () => {
    const text = Array.from({ length: 50 }, (_, i) => `{"text":"${i}"}`).join('\n\n');
    expect(jsonLines(text, 10)).toHaveLength(11);
    expect(jsonLines(text, 10)[10]).toEqual({ line: 21, body: '{"text":"10"}' });
    expect(jsonLines(text)).toHaveLength(50);
  });

  it('a text of a million newlines and one line: that line, numbered', () => {
    const text = `${'\n'.repeat(1_000_000)}{"text":"a"}\n`;
    expect(jsonLines(text)).toEqual([{ line: 1_000_001, body: '{"text":"a"}' }]);
  });
});
