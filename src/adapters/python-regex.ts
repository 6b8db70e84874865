// Python `re` patterns from adapter_config.json, matched by RE2 (re2js) in time linear in the key,
// so no pattern can stall the server (ReDoS). Python syntax is translated where RE2 can express it
// ((?P<name>…), \Z, {,n}, octal and \u escapes, comments) and refused with a reason where it cannot
// (backreferences, lookaround, possessive quantifiers, atomic and conditional groups, (?x)), or where
// Python itself would raise. Inline-flag rules follow Python ≥ 3.11.
// Answers equal Python's on ASCII keys without a trailing newline, which is every module key (see NAME
// in lora-adapter.ts): there \d \w \b are ASCII in both, \s is [ \t\n\v\f\r] in both, and $ is the end.
import { RE2JS } from 're2js';

export const MAX_PATTERN_LENGTH = 10_000; // characters of Python source
export const MAX_PATTERN_SIZE = 20_000;   // estimated RE2 instructions, after {m,n} expansion

export type PyMatch = ReadonlyArray<string | null>; // [group(0), group(1), …]; null: the group did not take part

export class PyRegex {
  private anchored: RE2JS | null = null;
  constructor(
    readonly source: string,                // the Python pattern
    readonly re2: string,                   // its RE2 translation
    readonly groups: number,                // capturing groups
    readonly topLevelAlternation: boolean,  // a `|` outside every group
    private readonly whole: RE2JS,
  ) {}

  // re.fullmatch(source, s) is not None
  fullmatch(s: string): boolean { return this.whole.testExact(s); }

  // re.match(source, s) is not None (anchored at the start only)
  match(s: string): boolean { return this.start().test(s); }

  // re.match(source, s) with its groups. Python and RE2 treat an iteration of a quantified group that
  // matches empty differently, so there (only) the span or a group's value can differ from Python's.
  exec(s: string): PyMatch | null {
    const m = this.start().exec(s);
    return m ? Array.from(m, (g) => (g === undefined ? null : (g as string))) : null;
  }

  private start(): RE2JS { return (this.anchored ??= RE2JS.compile(`\\A(?:${this.re2})`)); }
}

export type Compiled = { ok: true; re: PyRegex } | { ok: false; reason: string };

const cache = new Map<string, Compiled>();
const CACHE_LIMIT = 1000;

// A Python pattern, compiled once (cached by source).
export function compilePython(source: string): Compiled {
  const hit = cache.get(source);
  if (hit) return hit;
  const result = compileUncached(source);
  if (cache.size >= CACHE_LIMIT) cache.delete(cache.keys().next().value!);
  cache.set(source, result);
  return result;
}

// PEFT's three uses of `re`, each the exact string PEFT compiles around the configured pattern.
export type PeftUse =
  | 'fullmatch'    // re.fullmatch(p, key): target_modules / exclude_modules given as a string
  | 'pattern-key'  // re.match(rf"(.*\.)?({p})$", key): rank_pattern / alpha_pattern keys
  | 'layers';      // re.match(rf".*\.{p}\.(\d+)\.", key): layers_pattern; group 1 is the layer index

const PEFT_SOURCE: Record<PeftUse, (p: string) => string> = {
  'fullmatch': (p) => p,
  'pattern-key': (p) => `(.*\\.)?(${p})$`,
  'layers': (p) => `.*\\.${p}\\.(\\d+)\\.`,
};

export function compilePeft(pattern: string, use: PeftUse): Compiled {
  const c = compilePython(PEFT_SOURCE[use](pattern));
  if (c.ok && use === 'layers' && (c.re.groups !== 1 || c.re.topLevelAlternation)) {
    return { ok: false, reason: 'PEFT splices layers_pattern unparenthesised into .*\\.{p}\\.(\\d+)\\. and reads group 1 as the layer index, so it may hold no capturing group and no top-level "|" (use (?:…))' };
  }
  return c;
}

function compileUncached(source: string): Compiled {
  if (source.length > MAX_PATTERN_LENGTH) return { ok: false, reason: `it is ${source.length} characters long; the limit is ${MAX_PATTERN_LENGTH}` };
  let t: Translation;
  try {
    t = translate(source);
  } catch (e) {
    return { ok: false, reason: e instanceof Refusal ? e.message : `it could not be translated (${(e as Error).message})` }; // fail closed
  }
  if (t.size > MAX_PATTERN_SIZE) return { ok: false, reason: `it expands to about ${t.size} regex instructions (repeat counts multiply); the limit is ${MAX_PATTERN_SIZE}` };
  try {
    return { ok: true, re: new PyRegex(source, t.re2, t.groups, t.topLevelAlternation, RE2JS.compile(t.re2)) };
  } catch (e) {
    const why = (e as Error).message.replace(/^error parsing regexp: /, '');
    return { ok: false, reason: `RE2 cannot compile it: ${why}${/repeat count/.test(why) ? ` (RE2 allows ${MAX_REPEAT} repetitions at most, nested repeat counts multiplied)` : ''}` };
  }
}

// ---- Python `re` syntax → RE2 syntax (sre_parse's rules, reduced to what a translation needs) ----

class Refusal extends Error {}

interface Translation { re2: string; groups: number; topLevelAlternation: boolean; size: number }

// One open group: its estimated size, the size of its last item (for quantifiers), its items so far.
interface Frame { size: number; last: number; items: number; bar: boolean }

type Prev = 'none' | 'anchor' | 'atom' | 'repeat';

const HEX = /^[0-9a-fA-F]$/;
const OCT = /^[0-7]$/;
const DIGIT = /^[0-9]$/;
const ASCII_LETTER = /^[A-Za-z]$/;
const IDENTIFIER = /^[\p{XID_Start}_]\p{XID_Continue}*$/u;
const SPACE = '\\t\\n\\x{b}\\f\\r '; // Python's ASCII \s, which RE2's \s lacks \v of
const NOT_SPACE = '\\x{0}-\\x{8}\\x{e}-\\x{1f}\\x{21}-\\x{10ffff}';
const CONTROL = { a: 0x07, f: 0x0c, n: 0x0a, r: 0x0d, t: 0x09, v: 0x0b } as Record<string, number>;
const MAX_REPEAT = 1000; // RE2's limit for {m,n}
const BRACE = /\{(\d*)(?:(,)(\d*))?\}/y;

const hex = (cp: number): string => `\\x{${cp.toString(16)}}`;
const literal = (cp: number): string => {
  if (cp < 0x20 || cp === 0x7f || (cp >= 0xd800 && cp <= 0xdfff)) return hex(cp);
  const ch = String.fromCodePoint(cp);
  return cp < 0x80 && !/[A-Za-z0-9]/.test(ch) ? `\\${ch}` : ch;
};

function translate(src: string): Translation {
  let i = 0;
  let out = '';
  let groups = 0;
  let prev: Prev = 'none';
  const names = new Set<string>();
  let seenType = ''; // "a" or "u", once given
  const frames: Frame[] = [{ size: 0, last: 0, items: 0, bar: false }];
  const refuse = (what: string, at = i): never => { throw new Refusal(`${what} (at position ${at})`); };
  const frame = (): Frame => frames[frames.length - 1];
  const peek = (k = 0): string | undefined => src[i + k];

  const item = (re2: string, kind: 'anchor' | 'atom'): void => {
    const f = frame();
    f.items++;
    f.size += 1;
    f.last = 1;
    out += re2;
    prev = kind;
  };

  const quantifier = (re2: string, count: number, at: number): void => {
    if (prev === 'none' || prev === 'anchor') refuse('nothing to repeat', at);
    if (prev === 'repeat') refuse('multiple repeat', at);
    if (peek() === '+') refuse(`possessive quantifier "${src.slice(at, i + 1)}" is not supported (it needs a backtracking matcher)`, at);
    if (peek() === '?') { re2 += '?'; i++; }
    const f = frame();
    f.size += f.last * (count - 1) + 1;
    f.last = f.last * count + 1;
    out += re2;
    prev = 'repeat';
  };

  // {m}, {m,}, {,n}, {m,n}, {,}: a repeat; anything else: a literal "{" (Python's rule).
  const brace = (): void => {
    const at = i;
    BRACE.lastIndex = i;
    const m = BRACE.exec(src);
    if (!m || (m[1] === '' && !m[2])) { i++; item('\\{', 'atom'); return; }
    i += m[0].length;
    const lo = m[1] === '' ? 0 : Number(m[1]);
    const hi = m[2] ? (m[3] === '' ? null : Number(m[3])) : lo;
    if (hi !== null && hi < lo) refuse('min repeat greater than max repeat', at);
    if (lo > MAX_REPEAT || (hi ?? 0) > MAX_REPEAT) refuse(`repeat count ${Math.max(lo, hi ?? 0)} is above RE2's limit of ${MAX_REPEAT}`, at);
    quantifier(hi === lo ? `{${lo}}` : `{${lo},${hi ?? ''}}`, Math.max(hi ?? lo + 1, 1), at);
  };

  // An escape; i is at the backslash. Returns a code point, or RE2 text for a class/anchor.
  type Char = { cp: number };
  type Esc = Char | { re2: string; inClass: string; kind: 'atom' | 'anchor' };
  const isChar = (e: Esc): e is Char => 'cp' in e;
  const escape = (inClass: boolean): Esc => {
    const at = i;
    const c = peek(1);
    if (c === undefined) refuse('bad escape (end of pattern)', at);
    i += 2;
    const digits = (n: number, re: RegExp): string => {
      let s = '';
      while (s.length < n && peek() !== undefined && re.test(peek()!)) s += src[i++];
      return s;
    };
    switch (c) {
      case 'd': case 'D': case 'w': case 'W': return { re2: `\\${c}`, inClass: `\\${c}`, kind: 'atom' };
      case 's': return { re2: `[${SPACE}]`, inClass: SPACE, kind: 'atom' };
      case 'S': return { re2: `[^${SPACE}]`, inClass: NOT_SPACE, kind: 'atom' };
      case 'x': case 'u': case 'U': {
        const want = c === 'x' ? 2 : c === 'u' ? 4 : 8;
        const h = digits(want, HEX);
        if (h.length !== want) refuse(`incomplete escape \\${c}${h}`, at);
        const cp = parseInt(h, 16);
        if (cp > 0x10ffff) refuse(`bad escape \\${c}${h}`, at);
        return { cp };
      }
      case 'N': return refuse('named Unicode escapes \\N{…} are not supported', at);
      case 'b': if (inClass) return { cp: 0x08 }; break;
      case '0': return { cp: parseInt(`0${digits(2, OCT)}`, 8) };
    }
    if (CONTROL[c!] !== undefined) return { cp: CONTROL[c!] };
    if (!inClass) {
      if (c === 'A' || c === 'b' || c === 'B') return { re2: `\\${c}`, inClass: '', kind: 'anchor' };
      if (c === 'Z' || c === 'z') return { re2: '\\z', inClass: '', kind: 'anchor' };
      if (DIGIT.test(c!)) {
        // three octal digits: a character; otherwise a group reference
        if (OCT.test(c!) && OCT.test(peek() ?? '') && OCT.test(peek(1) ?? '')) {
          const cp = parseInt(src.slice(i - 1, i + 2), 8);
          if (cp > 0o377) refuse(`octal escape value \\${src.slice(i - 1, i + 2)} outside of range 0-0o377`, at);
          i += 2;
          return { cp };
        }
        const ref = c! + (DIGIT.test(peek() ?? '') ? src[i++] : '');
        return refuse(`backreference \\${ref} is not supported (it needs a backtracking matcher)`, at);
      }
    } else if (OCT.test(c!)) {
      const cp = parseInt(c! + digits(2, OCT), 8);
      if (cp > 0o377) refuse('octal escape value outside of range 0-0o377', at);
      return { cp };
    }
    if (ASCII_LETTER.test(c!) || DIGIT.test(c!)) refuse(`bad escape \\${c}`, at);
    const cp = src.codePointAt(i - 1)!;
    i += cp > 0xffff ? 1 : 0;
    return { cp };
  };

  // [...]: every literal written as \x{…}, so nothing in it can mean anything else to RE2
  const charClass = (): void => {
    const at = i;
    i++;
    let body = '';
    if (peek() === '^') { body = '^'; i++; }
    const start = i;
    const member = (): Esc => {
      if (peek() === undefined) refuse('unterminated character set', at);
      if (peek() === '\\') return escape(true);
      const cp = src.codePointAt(i)!;
      i += cp > 0xffff ? 2 : 1;
      return { cp };
    };
    for (;;) {
      if (peek() === ']' && i > start) { i++; break; }
      const from = i;
      const a = member();
      if (peek() === '-' && peek(1) !== undefined && peek(1) !== ']') {
        i++;
        const b = member();
        if (!isChar(a) || !isChar(b) || b.cp < a.cp) return refuse(`bad character range ${src.slice(from, i)}`, from);
        body += `${hex(a.cp)}-${hex(b.cp)}`;
      } else {
        body += isChar(a) ? hex(a.cp) : a.inClass;
      }
    }
    item(`[${body}]`, 'atom');
  };

  // (?flags) (global) or (?flags:…) / (?flags-flags:…) (scoped); i is after "(?". The RE2 flags: i m s.
  const flags = (at: number): { on: string; off: string; global: boolean } => {
    let on = '';
    let off = '';
    const take = (negative: boolean): string => {
      const c = peek();
      if (c === undefined) refuse('missing -, : or )', at);
      if (!/[aiLmsux]/.test(c!)) refuse(c && /\p{L}/u.test(c) ? `unknown inline flag "${c}"` : 'missing -, : or )', i);
      i++;
      if (c === 'x') refuse('inline flag "x" (verbose) is not supported', at);
      if (c === 'L') refuse('inline flag "L" cannot be used with a str pattern', at);
      if (c === 'a' || c === 'u') {
        if (negative) refuse('inline flags "a", "u" and "L" cannot be turned off', at);
        if (seenType && seenType !== c) refuse('inline flags "a", "u" and "L" are incompatible', at);
        seenType = c;
        return ''; // ASCII / Unicode: the same on ASCII keys (see the header)
      }
      return c!;
    };
    if (peek() !== '-') {
      while (peek() !== ')' && peek() !== ':' && peek() !== '-') on += take(false);
      if (peek() === ')') { i++; return { on, off, global: true }; }
    }
    if (peek() === '-') {
      i++;
      if (peek() === ':' || peek() === undefined) refuse('missing flag', i);
      while (peek() !== ':') off += take(true);
    }
    i++; // ':'
    if ([...on].some((c) => off.includes(c))) refuse('inline flag turned on and off', at);
    return { on, off, global: false };
  };

  const open = (re2: string, capturing: boolean): void => {
    if (capturing) groups++;
    frames.push({ size: 0, last: 0, items: 0, bar: false });
    out += re2;
    prev = 'none';
  };

  const group = (): void => {
    const at = i;
    if (peek(1) !== '?') { i++; open('(', true); return; }
    i += 2;
    const c = peek();
    const c2 = peek(1);
    if (c === ':') { i++; open('(?:', false); return; }
    if (c === 'P' && c2 === '<') {
      const end = src.indexOf('>', i + 2);
      if (end < 0) refuse('missing >, unterminated name', at);
      const name = src.slice(i + 2, end);
      if (!IDENTIFIER.test(name)) refuse(`bad character in group name ${JSON.stringify(name)}`, at);
      if (names.has(name)) refuse(`redefinition of group name ${JSON.stringify(name)}`, at);
      names.add(name);
      i = end + 1;
      open('(', true); // names only serve (?P=name), which RE2 cannot do anyway
      return;
    }
    if (c === 'P' && c2 === '=') refuse('backreference (?P=name) is not supported (it needs a backtracking matcher)', at);
    if (c === '=' || c === '!') refuse(`lookahead (?${c}…) is not supported (RE2 has no lookaround)`, at);
    if (c === '<' && (c2 === '=' || c2 === '!')) refuse(`lookbehind (?<${c2}…) is not supported (RE2 has no lookaround)`, at);
    if (c === '>') refuse('atomic group (?>…) is not supported (it needs a backtracking matcher)', at);
    if (c === '(') refuse('conditional group (?(…)…) is not supported (it needs a backtracking matcher)', at);
    if (c === '#') {
      // a comment: up to the first ")" that is not escaped; invisible to what follows
      for (i++; ; i++) {
        if (peek() === undefined) refuse('missing ), unterminated comment', at);
        if (peek() === '\\') { i++; continue; }
        if (peek() === ')') { i++; return; }
      }
    }
    if (c === undefined) refuse('unexpected end of pattern', at);
    if (c !== '-' && !/[aiLmsux]/.test(c!)) refuse(`unknown extension ?${c}`, at);
    const f = flags(at);
    if (f.global) {
      if (frames.length > 1 || frame().items > 0 || frame().bar) refuse(`global inline flags (?${src.slice(at + 2, i - 1)}) must be at the start of the whole expression (Python 3.11+); use a scoped group such as (?i:…)`, at);
      if (f.on) out += `(?${[...new Set(f.on)].join('')})`;
      return;
    }
    const set = [...new Set(f.on)].join('') + (f.off ? `-${[...new Set(f.off)].join('')}` : '');
    open(set ? `(?${set}:` : '(?:', false);
  };

  const close = (): void => {
    if (frames.length === 1) refuse('unbalanced parenthesis');
    const g = frames.pop()!;
    i++;
    out += ')';
    const f = frame();
    f.items++;
    f.size += g.size + 2;
    f.last = g.size + 2;
    prev = 'atom'; // any group may be repeated, even an empty one
  };

  while (i < src.length) {
    const c = src[i];
    const at = i;
    switch (c) {
      case '\\': {
        const e = escape(false);
        if (isChar(e)) item(literal(e.cp), 'atom');
        else item(e.re2, e.kind);
        break;
      }
      case '[': charClass(); break;
      case '(': group(); break;
      case ')': close(); break;
      case '|': {
        const f = frame();
        f.bar = true;
        f.size += 1;
        f.last = 0;
        out += '|';
        prev = 'none';
        i++;
        break;
      }
      case '*': case '+': case '?': i++; quantifier(c, 1, at); break;
      case '{': brace(); break;
      case '^': case '$': i++; item(c, 'anchor'); break;
      case '.': i++; item('.', 'atom'); break;
      default: {
        const cp = src.codePointAt(i)!;
        i += cp > 0xffff ? 2 : 1;
        item(literal(cp), 'atom');
      }
    }
  }
  if (frames.length > 1) refuse('missing ), unterminated subpattern');
  return { re2: out, groups, topLevelAlternation: frames[0].bar, size: frames[0].size };
}
