// A small rule-based "pirate speak" translator: the style a demo adapter learns (scripts/
// make-style-data.ts turns the stories260K model's own stories into pirate stories). Deterministic,
// so the data set is reproducible: word substitutions that keep the word's capitalization, "-ing"
// → "-in'", and an "Arr!" after every third sentence.
const WORDS: Record<string, string> = {
  hello: 'ahoy', hi: 'ahoy', hey: 'ahoy',
  you: 'ye', your: 'yer', yours: 'yers', my: 'me', myself: 'meself',
  is: 'be', are: 'be', am: 'be',
  the: "th'", of: "o'", and: "an'", for: 'fer', to: 'ta',
  friend: 'matey', friends: 'mateys', yes: 'aye', no: 'nay',
  boy: 'lad', boys: 'lads', girl: 'lass', girls: 'lasses', man: 'sailor',
  money: 'doubloons', treasure: 'booty', stop: 'avast', old: "ol'",
  wow: 'blimey', happy: 'jolly', mom: 'ma', dad: 'pa', house: 'ship', home: 'port',
};

// Words whose "ing" is not a suffix.
const ING_KEEP = new Set(['thing', 'things', 'king', 'kings', 'ring', 'rings', 'sing', 'wing', 'wings', 'swing', 'bring', 'spring', 'string', 'sting', 'ding', 'something', 'nothing', 'anything', 'everything', 'morning', 'evening', 'ceiling']);

export function pirate(text: string): string {
  const words = text.replace(/[A-Za-z]+(?:'[A-Za-z]+)?/g, (w) => matchCase(w, pirateWord(w.toLowerCase())));
  let sentence = 0;
  // narration sentences only (. ! or ? then a space or the end): one that ends inside a quote
  // keeps its closing quote in place
  return words.replace(/[.!?](?=\s|$)/g, (end) => (++sentence % 3 === 0 ? `${end} Arr!` : end));
}

function pirateWord(w: string): string {
  const sub = WORDS[w];
  if (sub !== undefined) return sub;
  if (w.length >= 5 && w.endsWith('ing') && !ING_KEEP.has(w)) return `${w.slice(0, -1)}'`;
  return w;
}

// The replacement in the original's case: "You" → "Ye", "YOU" → "YE", "you" → "ye".
function matchCase(original: string, replacement: string): string {
  if (original.length > 1 && original === original.toUpperCase()) return replacement.toUpperCase();
  if (original[0] === original[0].toUpperCase()) return replacement[0].toUpperCase() + replacement.slice(1);
  return replacement;
}
