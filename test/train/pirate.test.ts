// The pirate translator, and the demo data generated with the stories260K model.
import { describe, expect, it } from 'vitest';
import { pirate } from '../../src/train/pirate.ts';
import { loadModelFiles } from '../../src/runtime/model-loader.ts';
import { TextTokenizer } from '../../src/runtime/tokenizer.ts';
import { fitStory, makePirateData } from '../../scripts/make-style-data.ts';
import { hasStories, STORIES_DIR } from '../helpers/fixtures.ts';

describe('pirate', () => {
  it('substitutes words, keeping their case', () => {
    expect(pirate('hello my friend, you are the best')).toBe("ahoy me matey, ye be th' best");
    expect(pirate('Hello! You is MY friend')).toBe('Ahoy! Ye be ME matey');
    expect(pirate('The boy and the girl')).toBe("Th' lad an' th' lass");
  });

  it("turns -ing into -in', but not in words where ing is no suffix", () => {
    expect(pirate('playing and singing in the morning, nothing but a king')).toBe("playin' an' singin' in th' morning, nothing but a king");
  });

  it('adds "Arr!" after every third narration sentence, never inside a quote', () => {
    expect(pirate('One. Two. Three. Four. Five. Six.')).toBe('One. Two. Three. Arr! Four. Five. Six. Arr!');
    expect(pirate('He said, "Stop! Stop!" Then. Done.')).toBe('He said, "Avast! Avast!" Then. Done. Arr!');
  });

  it('is deterministic and leaves unknown words and punctuation alone', () => {
    const text = 'Lily saw a cat. It was big and fluffy? Yes!';
    expect(pirate(text)).toBe(pirate(text));
    expect(pirate('Lily saw a cat.')).toBe('Lily saw a cat.');
    expect(pirate('')).toBe('');
  });
});

describe.skipIf(!hasStories)('pirate data from stories260K', () => {
  const files = loadModelFiles(STORIES_DIR);
  const tokenizer = new TextTokenizer(files.tokenizerJson, files.tokenizerConfig);

  it('pirate words tokenize into few pieces with the 512-token vocabulary', () => {
    for (const w of ['ye', 'matey', "th'", 'ahoy', 'Arr!', "playin'"]) {
      const pieces = tokenizer.encode(` ${w}`, false).length;
      expect(pieces, w).toBeLessThanOrEqual(6);
      expect(tokenizer.decode(tokenizer.encode(`Lily ${w} sat.`, false))).toBe(`Lily ${w} sat.`);
    }
  });

  it('fits a story to whole sentences within the token limit', () => {
    const story = 'Once upon a time there was a girl. She had a friend. They played all day.';
    const whole = fitStory(story, tokenizer, 1000);
    expect(whole).toBe(pirate(story));
    const limit = tokenizer.encode(pirate('Once upon a time there was a girl. She had a friend.')).length + 1;
    expect(fitStory(story, tokenizer, limit)).toBe(pirate('Once upon a time there was a girl. She had a friend.'));
    expect(fitStory(story, tokenizer, 3)).toBe('');
  });

  it('generates train and eval stories in pirate speak, each fitting the limit', async () => {
    const data = await makePirateData({ modelDir: STORIES_DIR, count: 6, evalCount: 2, seed: 0, maxTokens: 120, maxExampleTokens: 128 });
    expect(data.train.length).toBeGreaterThanOrEqual(5);
    expect(data.eval.length).toBeGreaterThanOrEqual(1);
    for (const s of [...data.train, ...data.eval]) {
      expect(tokenizer.encode(s).length + 1).toBeLessThanOrEqual(128);
      expect(s).toMatch(/[.!?]["']?$/);
    }
    expect(data.train.join(' ')).toMatch(/\bth'|\ban'|\bta\b|Arr!/);
  });
});
