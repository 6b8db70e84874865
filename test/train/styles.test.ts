// The demo adapters' styles (src/train/styles.ts): what each translator writes, that it is
// deterministic, and that the marker counter finds a style's words and nothing in plain text.
import { describe, expect, it } from 'vitest';
import { archaic, sad, SAD_ENDINGS, STYLES, styleMarkers } from '../../src/train/styles.ts';

const STORY = 'Once upon a time, there was a little girl named Lily. She was very happy. "Do you want to play? You are my friend," said Tom. It was fun. Mom has a big ball.';

describe('styles', () => {
  it('archaic: thee/thou, hath, beheld, \'twas, and "Verily," before every second sentence', () => {
    expect(archaic(STORY)).toBe('Once upon a time, there dwelt a little girl named Lily. Verily, she was most happy. "Dost thou want to play? Verily, thou art my friend," quoth Tom. \'Twas fun. Verily, Mother hath a great ball.');
    expect(archaic('I saw you. Your dog has a hat.')).toBe('I beheld thee. Verily, thy dog hath a hat.');
  });

  it('sad: happy words turned sad, "Alas," before every second sentence, and a sad ending chosen by the story', () => {
    const out = sad('Tom was happy. He smiled and laughed. They had fun in the sun.');
    expect(out.startsWith('Tom was sad. Alas, he sighed and wept. They had gloom in the rain. ')).toBe(true);
    expect(SAD_ENDINGS.some((e) => out.endsWith(e))).toBe(true);
    expect(sad('Tom was happy.')).toBe(sad('Tom was happy.'));
    const endings = new Set(['A.', 'B.', 'C.', 'D.', 'E.', 'F.', 'G.', 'H.'].map((t) => sad(t).slice(t.length + 1)));
    expect(endings.size).toBeGreaterThan(2); // the ending varies with the story
  });

  it('markers: each style\'s translation of a story shows its words; the plain story shows none', () => {
    for (const s of STYLES) {
      expect(styleMarkers(s, STORY), s.name).toEqual([]);
      expect(styleMarkers(s, s.translate(STORY)).length, s.name).toBeGreaterThanOrEqual(3);
    }
    expect(STYLES.map((s) => s.name)).toEqual(['pirate', 'archaic', 'sad']);
    for (const s of STYLES) expect(s.description).not.toMatch(/\n/);
  });
});
