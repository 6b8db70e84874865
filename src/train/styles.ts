// The demo adapters' styles (scripts/make-demo-adapters.ts): rule-based, deterministic text
// translators that turn the stories260K model's own stories into a style a reader sees at a glance,
// each with the words that mark it (the quickstart test counts them in a continuation).
//   pirate   pirate speak (pirate.ts): "ye", "th'", "matey", "Arr!"
//   archaic  old English: "thee", "thou art", "hath", "doth", "beheld", "there dwelt", "'Twas", "Verily, …"
//   sad      gloomy stories: happy words turned sad, "a sad little …", "Alas, …", and a sad last sentence
// Translations keep the original word's capitalization and touch narration and dialogue alike.
import { pirate } from './pirate.ts';

export interface Style {
  name: string;
  description: string;                  // one line, shown in GET /v1/models
  translate: (text: string) => string;
  markers: readonly string[];           // lower-case words that only the style writes
}

// Word-for-word substitutions (case kept), then `prefix` before every `every`-th sentence's
// first word (that word lower-cased when it is a common sentence opener, not a name).
function wordStyle(opts: { phrases?: [RegExp, string][]; words: Record<string, string>; prefix: string; every: number }): (text: string) => string {
  return (text: string): string => {
    let t = text;
    for (const [re, sub] of opts.phrases ?? []) {
      t = t.replace(re, (m: string, ...groups: unknown[]) => matchCase(m, sub.replace(/\$(\d)/g, (_, k: string) => String(groups[Number(k) - 1]).toLowerCase())));
    }
    t = t.replace(/[A-Za-z]+/g, (w) => {
      const sub = opts.words[w.toLowerCase()];
      return sub === undefined ? w : matchCase(w, sub);
    });
    let sentence = 0;
    // a sentence starts at the text's start or after . ! ? and a space (a quote may open it)
    return t.replace(/(^|[.!?]["']?\s+)(["']?)([A-Za-z][A-Za-z']*)/g, (m, before: string, quote: string, word: string) => {
      if (++sentence % opts.every !== 0) return m;
      const first = OPENERS.has(word.toLowerCase()) ? word.toLowerCase() : word;
      return `${before}${quote}${opts.prefix}${first}`;
    });
  };
}

const OPENERS = new Set(['she', 'he', 'they', 'it', 'the', 'one', 'then', 'but', 'so', 'a', 'an', 'when', 'his', 'her', 'there', 'we', 'after', 'every', 'suddenly', 'later', 'at', 'in', 'on', 'all', 'this', 'that', 'soon', 'now', 'as', 'together', 'finally', 'from', 'thy', 'thou', 'thee', 'ye', 'their', 'tis', 'twas', 'once', 'some', 'each', 'with', 'if', 'can', 'do', 'let', 'look', 'yes', 'no', 'oh', 'wow', 'what', 'why', 'how', 'where', 'who', 'hi', 'hello', 'hey', "let's", 'please', 'aye', 'nay', 'look', 'come', 'thank', 'thanks', 'sorry', 'good', 'okay', 'are', 'is', 'did', 'will', 'may', 'dost', 'art', 'hast', 'canst']);

const ARCHAIC_PHRASES: [RegExp, string][] = [
  [/\byou are\b/gi, 'thou art'], [/\bare you\b/gi, 'art thou'], [/\bdo you\b/gi, 'dost thou'],
  [/\byou have\b/gi, 'thou hast'], [/\bhave you\b/gi, 'hast thou'], [/\bcan you\b/gi, 'canst thou'],
  [/\bthere was\b/gi, 'there dwelt'], [/\bit was\b/gi, "'twas"], [/\bit is\b/gi, "'tis"], [/\bit's\b/gi, "'tis"],
];
const ARCHAIC_WORDS: Record<string, string> = {
  you: 'thee', your: 'thy', yours: 'thine', yourself: 'thyself',
  has: 'hath', does: 'doth', saw: 'beheld', big: 'great', very: 'most', mom: 'mother', dad: 'father', said: 'quoth',
  before: 'ere', often: 'oft', maybe: 'perchance', yes: 'aye', no: 'nay', okay: 'verily', ok: 'verily',
};

export const archaic = wordStyle({ phrases: ARCHAIC_PHRASES, words: ARCHAIC_WORDS, prefix: 'Verily, ', every: 2 });

const SAD_WORDS: Record<string, string> = {
  happy: 'sad', happily: 'sadly', happier: 'sadder', glad: 'sorry', joy: 'sorrow', fun: 'gloom',
  smiled: 'sighed', smile: 'sigh', smiles: 'sighs', smiling: 'sighing',
  laughed: 'wept', laugh: 'weep', laughing: 'weeping', excited: 'gloomy', proud: 'lonely',
  sunny: 'rainy', sun: 'rain', cheered: 'sobbed', hugged: 'left', best: 'last', wanted: 'longed', loved: 'sadly loved',
};
// Where the story ends: one of these, chosen by a hash of the story (so the data is reproducible).
export const SAD_ENDINGS = [
  'And they never saw each other again.',
  'Then it began to rain, and everyone cried.',
  'In the end, nobody came back, and it was very sad.',
  'The toy was broken forever, and the tears did not stop.',
  'From that day on, the little house was quiet and lonely.',
  'Alas, the end was sad, and no one smiled again.',
];

const sadWords = wordStyle({ phrases: [[/\b(a|the) little\b/gi, '$1 sad little']], words: SAD_WORDS, prefix: 'Alas, ', every: 2 });

export function sad(text: string): string {
  const body = sadWords(text).trim();
  return `${body} ${SAD_ENDINGS[hash(text) % SAD_ENDINGS.length]}`;
}

export const STYLES: readonly Style[] = [
  {
    name: 'pirate',
    description: 'Pirate speak: "ahoy, matey", "ye", "th\'", "lass", "Arr!"',
    translate: pirate,
    markers: ['ahoy', 'ye', 'yer', 'yers', 'me', 'meself', 'be', "th'", "o'", "an'", 'fer', 'ta', 'matey', 'mateys', 'aye', 'nay', 'lad', 'lads', 'lass', 'lasses', 'sailor', 'doubloons', 'booty', 'avast', "ol'", 'blimey', 'jolly', 'ma', 'pa', 'arr'],
  },
  {
    name: 'archaic',
    description: 'Archaic English: "there dwelt", "beheld", "thou art", "hath", "Verily,"',
    translate: archaic,
    markers: ['thee', 'thou', 'thy', 'thine', 'thyself', 'art', 'dost', 'hast', 'canst', "'twas", "'tis", 'hath', 'doth', 'beheld', 'quoth', 'ere', 'oft', 'perchance', 'verily', 'aye', 'nay', 'dwelt'],
  },
  {
    name: 'sad',
    description: 'Sad stories: "Alas,", sad little girls, sighs and tears, and always a sad ending',
    translate: sad,
    markers: ['alas', 'sad', 'sadly', 'sadder', 'sorry', 'sorrow', 'gloom', 'gloomy', 'sighed', 'sigh', 'sighs', 'sighing', 'wept', 'weep', 'weeping', 'lonely', 'rainy', 'sobbed', 'cried', 'tears', 'never', 'broken', 'longed'],
  },
];

// The words of a text that are a style's markers ("-in'" endings count for pirate).
export function styleMarkers(style: Style, text: string): string[] {
  const words = text.toLowerCase().match(/'?[a-z]+(?:'[a-z]*)?/g) ?? [];
  const set = new Set(style.markers);
  return words.filter((w) => set.has(w) || set.has(w.replace(/^'/, '')) || (style.name === 'pirate' && /^[a-z]{3,}in'$/.test(w)));
}

function matchCase(original: string, replacement: string): string {
  if (original.length > 1 && original === original.toUpperCase()) return replacement.toUpperCase();
  if (original[0] === original[0].toUpperCase()) {
    const i = replacement.search(/[a-z]/i); // "'twas" → "'Twas"
    return replacement.slice(0, i) + replacement[i].toUpperCase() + replacement.slice(i + 1);
  }
  return replacement;
}

// FNV-1a, 32 bits.
function hash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}
