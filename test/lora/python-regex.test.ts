// Python `re` patterns from adapter_config.json run on RE2 (python-regex.ts): no pattern can stall
// the server, Python syntax RE2 cannot express is refused with a reason, answers equal Python's, and
// absurd LoRA scales are refused (peft-config.ts, module-match.ts).
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { compilePeft, compilePython, MAX_PATTERN_LENGTH, MAX_PATTERN_SIZE } from '../../src/adapters/python-regex.ts';
import type { PyRegex } from '../../src/adapters/python-regex.ts';
import { MAX_LORA_SCALE, parsePeftConfig } from '../../src/adapters/peft-config.ts';
import type { PeftConfig } from '../../src/adapters/peft-config.ts';
import { isTargeted, moduleScaling } from '../../src/adapters/module-match.ts';
import { decodeAdapterOrThrow } from '../../src/adapters/lora-adapter.ts';
import { LoraserveError } from '../../src/runtime/errors.ts';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { encodeSafetensors } from '../../src/runtime/safetensors.ts';
import { buildAdapter } from '../../scripts/make-test-adapters.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const REDOS = String.raw`model(.|.)*Z|.*\.(q_proj|v_proj)`;
const ADVERSARIAL = 'model' + 'a'.repeat(50_000);

function re(source: string): PyRegex {
  const c = compilePython(source);
  if (!c.ok) throw new Error(`${source}: ${c.reason}`);
  return c.re;
}

function refusal(source: string): string {
  const c = compilePython(source);
  if (c.ok) throw new Error(`${source} compiled`);
  return c.reason;
}

const base = (extra: Record<string, unknown> = {}) => ({ peft_type: 'LORA', r: 8, lora_alpha: 16, target_modules: ['q_proj', 'v_proj'], ...extra });

function config(extra: Record<string, unknown> = {}): PeftConfig {
  const r = parsePeftConfig(base(extra));
  if (!r.config) throw new Error(r.problems.join('; '));
  return r.config;
}

const problems = (extra: Record<string, unknown>): string => parsePeftConfig(base(extra)).problems.join('\n');

const layerKeys = (layers: number[]) => layers.flatMap((l) => [
  `model.layers.${l}.self_attn.q_proj`, `model.layers.${l}.self_attn.k_proj`, `model.layers.${l}.self_attn.v_proj`,
  `model.layers.${l}.self_attn.o_proj`, `model.layers.${l}.mlp.gate_proj`, `model.layers.${l}.mlp.up_proj`, `model.layers.${l}.mlp.down_proj`,
]);

describe('ReDoS: patterns run in linear time', () => {
  it('the pattern that froze the server compiles and answers at once on a long adversarial key', () => {
    const r = re(REDOS);
    expect(r.fullmatch(ADVERSARIAL)).toBe(false);
    expect(r.fullmatch(ADVERSARIAL + 'Z')).toBe(true);
    expect(r.match(ADVERSARIAL)).toBe(false);
    expect(r.exec(ADVERSARIAL)).toBeNull();
    expect(r.fullmatch('model.layers.0.self_attn.q_proj')).toBe(true);
    expect(r.fullmatch('model.layers.0.self_attn.k_proj')).toBe(false);
  });

  it('other classic catastrophic patterns answer too', () => {
    const key = 'a'.repeat(50_000) + '!';
    expect(re('(a+)+').fullmatch(key)).toBe(false);
    expect(re('(a|aa)*b').fullmatch(key)).toBe(false);
    expect(re('(a|a?)+').fullmatch(key)).toBe(false);
    expect(re('(.*a){12}').fullmatch(key)).toBe(false);
    expect(re('(\\w+\\s?)*$').match(key)).toBe(false);
  });

  it('end to end: parsePeftConfig + isTargeted + moduleScaling with the pattern', () => {
    const c = config({ target_modules: REDOS, rank_pattern: { '(a|a)*q_proj': 4 }, alpha_pattern: { 'model(.|.)*Z|v_proj': 32 } });
    expect(c.targetModules.kind).toBe('regex');
    expect(isTargeted(c, 'model.layers.0.self_attn.q_proj')).toBe(true);
    expect(isTargeted(c, 'model.layers.3.self_attn.v_proj')).toBe(true);
    expect(isTargeted(c, 'model.layers.0.mlp.down_proj')).toBe(false);
    expect(isTargeted(c, ADVERSARIAL)).toBe(false);
    expect(moduleScaling(c, 'model.layers.0.self_attn.q_proj')).toEqual({ rank: 4, alpha: 16, scale: 4 });
    expect(moduleScaling(c, 'model.layers.0.self_attn.v_proj')).toEqual({ rank: 8, alpha: 32, scale: 4 });
    expect(moduleScaling(c, ADVERSARIAL)).toEqual({ rank: 8, alpha: 16, scale: 2 });
    // as exclude_modules too
    const ex = config({ target_modules: ['q_proj', 'v_proj'], exclude_modules: REDOS.replace('v_proj', 'v_projX') });
    expect(isTargeted(ex, 'model.layers.0.self_attn.q_proj')).toBe(false);
    expect(isTargeted(ex, 'model.layers.0.self_attn.v_proj')).toBe(true);
    expect(isTargeted(ex, ADVERSARIAL)).toBe(false);
  });

  it('end to end: an adapter file with the pattern decodes; a refused pattern or scale is a 422 naming the field', () => {
    const cfg = loadModel(STORIES_DIR).config;
    const files = (config: Record<string, unknown>) => {
      const a = buildAdapter(cfg, { rank: 4, targets: ['q_proj', 'v_proj'], seed: 5 });
      return { config: new TextEncoder().encode(JSON.stringify({ ...a.config, ...config })), weights: encodeSafetensors(a.tensors) };
    };
    const limits = { maxRank: 64, modelName: 'stories260K' };
    const { adapter } = decodeAdapterOrThrow(files({ target_modules: REDOS }), cfg, limits, 'redos');
    expect(adapter.targets.map((t) => t.target)).toContain('v_proj');
    const refused = (config: Record<string, unknown>): LoraserveError => {
      try { decodeAdapterOrThrow(files(config), cfg, limits, 'bad'); } catch (e) { return e as LoraserveError; }
      throw new Error('accepted');
    };
    for (const [config, message] of [
      [{ target_modules: '^(?!.*lm_head).*$' }, /"target_modules" regex .* cannot be used: lookahead/],
      [{ rank_pattern: { '(q)_proj\\1': 4 } }, /"rank_pattern" key .* cannot be used: backreference/],
      [{ lora_alpha: 1e30 }, /"lora_alpha" 1e30 gives a scale of 2\.5e29 \(alpha\/r = 1e30\/4\); the limit is \|scale\| ≤ 1000/],
    ] as const) {
      const err = refused(config);
      expect(err).toBeInstanceOf(LoraserveError);
      expect(err.status).toBe(422);
      expect(err.message).toMatch(message);
    }
  });

  it('patterns too long or too large to compile quickly are refused with the limit', () => {
    expect(refusal('a'.repeat(MAX_PATTERN_LENGTH + 1))).toMatch(new RegExp(`the limit is ${MAX_PATTERN_LENGTH}`));
    expect(refusal('((a{100}){100}){100}')).toMatch(new RegExp(`the limit is ${MAX_PATTERN_SIZE}`));
    expect(refusal('a{1001}')).toMatch(/limit of 1000/);
    expect(refusal('(?:.{100}){15}')).toMatch(/RE2 allows 1000 repetitions at most/);
    expect(problems({ target_modules: '(x{999}){999}' })).toMatch(/"target_modules" regex .*cannot be used: .*limit/);
  });
});

describe('Python syntax RE2 cannot express is refused with a reason', () => {
  it.each([
    ['(a)\\1', /backreference \\1/],
    ['(?P<x>a)(?P=x)', /backreference \(\?P=name\)/],
    ['(?=a)a', /lookahead/],
    ['^(?!.*lm_head).*$', /lookahead/],
    ['(?<=a)b', /lookbehind/],
    ['(?<!a)b', /lookbehind/],
    ['a++', /possessive/],
    ['a{1,2}+', /possessive/],
    ['(?>a)', /atomic group/],
    ['(?(1)a|b)', /conditional/],
    ['(?x) a', /verbose/],
    ['(?L)a', /"L"/],
    ['a(?i)b', /global inline flags .* start/],
    ['(?<name>a)', /unknown extension/],
    ['(a', /missing \)/],
    ['a)', /unbalanced parenthesis/],
    ['[a', /unterminated character set/],
    ['*a', /nothing to repeat/],
    ['a**', /multiple repeat/],
    ['a{2,1}', /min repeat greater than max repeat/],
    ['[z-a]', /bad character range/],
    ['[\\d-z]', /bad character range/],
    ['\\q', /bad escape \\q/],
    ['\\p{L}', /bad escape \\p/],
    ['\\N{EM DASH}', /named Unicode/],
    ['(?P<1x>a)', /bad character in group name/],
    ['(?P<x>a)(?P<x>b)', /redefinition of group name/],
  ])('%s', (source, reason) => {
    expect(refusal(source)).toMatch(reason);
  });

  it('a refused pattern is a 422 problem naming the field', () => {
    expect(problems({ target_modules: '^(?!.*lm_head).*$' })).toMatch(/^adapter_config\.json: "target_modules" regex "\^\(\?!\.\*lm_head\)\.\*\$" cannot be used: lookahead/);
    expect(problems({ exclude_modules: '(a)\\1' })).toMatch(/"exclude_modules" regex .* cannot be used: backreference/);
    expect(problems({ rank_pattern: { '(?<=x)q_proj': 4 } })).toMatch(/"rank_pattern" key "\(\?<=x\)q_proj" cannot be used: lookbehind/);
    expect(problems({ alpha_pattern: { 'q_proj)': 4 } })).toMatch(/"alpha_pattern" key "q_proj\)" cannot be used: unbalanced parenthesis/);
    // inside PEFT's (.*\.)?({k})$ a global flag is not at the start: Python 3.11+ raises
    expect(problems({ rank_pattern: { '(?i)Q_PROJ': 4 } })).toMatch(/"rank_pattern" key .* global inline flags/);
    expect(problems({ layers_to_transform: [0], layers_pattern: ['layers', '(?=x)'] })).toMatch(/"layers_pattern" "\(\?=x\)" cannot be used: lookahead/);
    expect(parsePeftConfig(base({ target_modules: '^(?!.*lm_head).*$' })).config).toBeNull();
  });

  it('every problem is collected: a bad key and a bad value of the same entry, and several fields', () => {
    const p = parsePeftConfig(base({ target_modules: '(?=a)', rank_pattern: { '(a)\\1': 0 } })).problems;
    expect(p).toHaveLength(3);
    expect(p.join('\n')).toMatch(/"rank_pattern\.\(a\)\\1" must be a positive integer, got 0\n.*"rank_pattern" key .* backreference.*\n.*target_modules.*lookahead/);
  });

  it('layers_pattern may hold no capturing group and no top-level "|": PEFT reads group 1 as the index', () => {
    expect(problems({ layers_to_transform: [0], layers_pattern: 'layers|h' })).toMatch(/"layers_pattern" "layers\|h" cannot be used: .*group 1/);
    expect(problems({ layers_to_transform: [0], layers_pattern: '(layers)' })).toMatch(/"layers_pattern" .* capturing group/);
    expect(problems({ layers_to_transform: [0], layers_pattern: '(?:layers|h)' })).toBe('');
  });

  it('arbitrary strings never throw: each compiles or comes back with a reason', () => {
    const unit = fc.constantFrom(...'()[]{}|*+?\\^$.-:=!<>P#iamsxLu0123ab,_ '.split(''));
    fc.assert(fc.property(fc.string({ unit, maxLength: 24 }), fc.string({ unit: fc.constantFrom('a', 'b', '0', '.', '_'), maxLength: 8 }), (source, key) => {
      const c = compilePython(source);
      if (!c.ok) { expect(c.reason.length).toBeGreaterThan(0); return; }
      expect(typeof c.re.fullmatch(key)).toBe('boolean');
      expect(typeof c.re.match(key)).toBe('boolean');
    }), { numRuns: 3000 });
  });
});

describe('Python syntax is translated', () => {
  it('named groups (?P<name>…) capture and match', () => {
    const r = re('model\\.layers\\.(?P<layer>\\d+)\\.(?P<block>self_attn|mlp)\\.(?P<proj>\\w+)');
    expect(r.groups).toBe(3);
    expect(r.fullmatch('model.layers.12.mlp.up_proj')).toBe(true);
    expect(r.exec('model.layers.12.mlp.up_proj')).toEqual(['model.layers.12.mlp.up_proj', '12', 'mlp', 'up_proj']);
    expect(re('(a)|(b)').exec('b')).toEqual(['b', null, 'b']);
  });

  it('\\Z, \\A, {,n}, literal braces, octal and \\u escapes, comments, flags', () => {
    expect(re('.*q_proj\\Z').fullmatch('model.layers.0.self_attn.q_proj')).toBe(true);
    expect(re('\\A.*q_proj').match('model.layers.0.self_attn.q_proj')).toBe(true);
    expect(re('a{,2}').fullmatch('aa')).toBe(true);
    expect(re('a{,2}').fullmatch('aaa')).toBe(false);
    expect(re('a{').fullmatch('a{')).toBe(true);
    expect(re('x{1,a}').fullmatch('x{1,a}')).toBe(true);
    expect(re('\\101\\u0042\\x43').fullmatch('ABC')).toBe(true);
    expect(re('q(?#the query)_proj').fullmatch('q_proj')).toBe(true);
    expect(re('(?i).*Q_PROJ').fullmatch('model.layers.0.self_attn.q_proj')).toBe(true);
    expect(re('(?i:Q)_proj').fullmatch('q_proj')).toBe(true);
    expect(re('(?a)\\w+').fullmatch('q_proj')).toBe(true);
    expect(re('(?s).').fullmatch('\n')).toBe(true);
    expect(re('.').fullmatch('\n')).toBe(false);
    expect(re('[[:alpha:]]').fullmatch('a]')).toBe(true); // not a POSIX class in Python
    expect(re('[]a]').fullmatch(']')).toBe(true);
    expect(re('[^]a]').fullmatch(']')).toBe(false);
    expect(re('\\s').fullmatch('\v')).toBe(true); // Python's \s has \v, RE2's does not
    expect(re('[\\S]').fullmatch('\v')).toBe(false);
  });

  it('match is re.match (anchored at the start), fullmatch is re.fullmatch', () => {
    const r = re('model\\.layers');
    expect(r.match('model.layers.0.self_attn.q_proj')).toBe(true);
    expect(r.fullmatch('model.layers.0.self_attn.q_proj')).toBe(false);
    expect(r.match('base_model.model.layers')).toBe(false);
    expect(re('a|b').match('bx')).toBe(true);
  });

  it('compiled patterns are cached', () => {
    expect(compilePython('.*\\.(q_proj|v_proj)')).toBe(compilePython('.*\\.(q_proj|v_proj)'));
  });
});

describe("PEFT's real-world patterns", () => {
  const keys = layerKeys([0, 1, 2, 13]);
  const targeted = (extra: Record<string, unknown>) => { const c = config(extra); return keys.filter((k) => isTargeted(c, k)); };

  it('.*\\.(q_proj|v_proj)', () => {
    expect(targeted({ target_modules: '.*\\.(q_proj|v_proj)' })).toEqual(keys.filter((k) => /\.(q_proj|v_proj)$/.test(k)));
  });

  it('model\\.layers\\.(0|1)\\..*(q_proj|k_proj)', () => {
    expect(targeted({ target_modules: 'model\\.layers\\.(0|1)\\..*(q_proj|k_proj)' })).toEqual([
      'model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.k_proj', 'model.layers.1.self_attn.q_proj', 'model.layers.1.self_attn.k_proj',
    ]);
  });

  it('a string target_modules is a full match: "q_proj" as a string matches nothing', () => {
    expect(targeted({ target_modules: 'q_proj' })).toEqual([]);
    expect(targeted({ target_modules: ['q_proj'] })).toHaveLength(4);
  });

  it('exclude_modules as a regex', () => {
    expect(targeted({ target_modules: 'all-linear', exclude_modules: '.*\\.(1|13)\\..*|.*mlp.*' })).toEqual(keys.filter((k) => /layers\.(0|2)\.self_attn/.test(k)));
  });

  it('rank_pattern / alpha_pattern keys: q_proj, layers.3.self_attn.q_proj, model.layers.0.mlp.down_proj', () => {
    const c = config({ r: 8, lora_alpha: 16, rank_pattern: { 'layers.3.self_attn.q_proj': 2, q_proj: 4, 'model.layers.0.mlp.down_proj': 16 }, alpha_pattern: { 'self_attn\\.(q|k)_proj': 8 } });
    expect(moduleScaling(c, 'model.layers.3.self_attn.q_proj')).toEqual({ rank: 2, alpha: 8, scale: 4 });
    expect(moduleScaling(c, 'model.layers.13.self_attn.q_proj')).toEqual({ rank: 4, alpha: 8, scale: 2 }); // "layers.3" starts after a dot only
    expect(moduleScaling(c, 'model.layers.0.self_attn.k_proj')).toEqual({ rank: 8, alpha: 8, scale: 1 });
    expect(moduleScaling(c, 'model.layers.0.mlp.down_proj')).toEqual({ rank: 16, alpha: 16, scale: 1 });
    expect(moduleScaling(c, 'model.layers.1.mlp.down_proj')).toEqual({ rank: 8, alpha: 16, scale: 2 });
    // (.*\.)? anchors the key at a dot: q_proj does not match xq_proj
    expect(compilePeft('q_proj', 'pattern-key').ok && (compilePeft('q_proj', 'pattern-key') as { re: PyRegex }).re.match('model.layers.0.self_attn.xq_proj')).toBe(false);
  });

  it('layers_to_transform with and without layers_pattern', () => {
    expect(targeted({ target_modules: ['q_proj'], layers_to_transform: [1, 13] })).toEqual(['model.layers.1.self_attn.q_proj', 'model.layers.13.self_attn.q_proj']);
    expect(targeted({ target_modules: ['q_proj'], layers_to_transform: 2, layers_pattern: 'layers' })).toEqual(['model.layers.2.self_attn.q_proj']);
    expect(targeted({ target_modules: ['q_proj'], layers_to_transform: [2], layers_pattern: ['h', '(?:lay|h)ers'] })).toEqual(['model.layers.2.self_attn.q_proj']);
    expect(targeted({ target_modules: ['q_proj'], layers_to_transform: [2], layers_pattern: 'blocks' })).toEqual([]);
  });

  it('a string target_modules (a regex or "all-linear") refuses layers_to_transform and layers_pattern, even empty, as PEFT does; "all-linear" in a list is refused, not expanded', () => {
    for (const target_modules of ['all-linear', '.*q_proj']) {
      expect(problems({ target_modules, layers_to_transform: [0] })).toMatch(/"layers_to_transform"\/layers_pattern cannot be used with a string target_modules/);
      expect(problems({ target_modules, layers_to_transform: [] })).toMatch(/cannot be used with a string target_modules/);
      expect(problems({ target_modules, layers_to_transform: [0], layers_pattern: 'layers' })).toMatch(/cannot be used with a string target_modules/);
      expect(problems({ target_modules })).toBe('');
    }
    expect(problems({ target_modules: ['q_proj'], layers_to_transform: [] })).toBe(''); // a list: [] means every layer (PEFT)
    expect(problems({ target_modules: ['all-linear'] })).toMatch(/lists "all-linear", which PEFT reads as a module name .* write "target_modules": "all-linear"/);
    expect(problems({ target_modules: ['q_proj', 'ALL-LINEAR'] })).toMatch(/lists "all-linear"/);
  });
});

// A safe subset of regex syntax where JS RegExp ^(?:p)$ means what Python's re.fullmatch(p) means
// (on keys without newlines): literals, ., \d, \w, classes, groups two deep, alternation, quantifiers.
// Groups take only bounded quantifiers, so the backtracking reference itself stays fast.
const ATOM = fc.constantFrom('a', 'b', 'q', '_', '0', '1', '\\.', '.', '\\d', '\\w', '\\D', '[ab]', '[^a.]', '[0-9]', '[a-z_]', 'q_proj');
const QUANT = fc.constantFrom('', '', '', '*', '+', '?', '*?', '+?', '??', '{2}', '{1,2}', '{0,3}', '{2,}');
const GROUP_QUANT = fc.constantFrom('', '', '?', '??', '{1,2}', '{2}');
const quantified = fc.tuple(ATOM, QUANT).map(([a, q]) => a + q);
const alternation = (term: fc.Arbitrary<string>, terms: number) => fc.array(fc.array(term, { minLength: 1, maxLength: terms }).map((t) => t.join('')), { minLength: 1, maxLength: 2 }).map((a) => a.join('|'));
const group = (p: fc.Arbitrary<string>) => fc.tuple(fc.constantFrom('(', '(?:', '(?P<g>'), p, GROUP_QUANT).map(([open, x, q]) => `${open}${x})${q}`);
const withGroups = (inner: fc.Arbitrary<string>, terms: number) => alternation(fc.oneof({ weight: 3, arbitrary: quantified }, { weight: 1, arbitrary: group(inner) }), terms);
const safePattern = withGroups(withGroups(alternation(quantified, 2), 2), 3); // at most 12 quantifiers in a row

// distinct group names, and the JS spelling of the same pattern
function named(p: string): { py: string; js: string } {
  let n = 0;
  const py = p.replace(/\(\?P<g>/g, () => `(?P<g${n++}>`);
  return { py, js: py.replace(/\(\?P</g, '(?<') };
}

const key = fc.string({ unit: fc.constantFrom('a', 'b', 'q', '_', '.', '0', '1', 'x'), maxLength: 10 });
// rank_pattern-style keys: module-name pieces, classes, .*, \d+ and small groups
const KEY_ATOM = fc.constantFrom('q_proj', 'v_proj', 'self_attn', 'mlp', 'layers', 'model', '\\.', '.', '\\d+', '[0-9]', '.*', '\\w+', '[a-z_]+', '(?:q|v)_proj', '(0|3)', '(?P<g>mlp|self_attn)');
const keyPattern = fc.array(fc.array(KEY_ATOM, { minLength: 1, maxLength: 4 }).map((t) => t.join('')), { minLength: 1, maxLength: 3 }).map((a) => a.join('|'));
const dottedKey = fc.array(fc.constantFrom('model', 'layers', '0', '3', '12', 'self_attn', 'mlp', 'q_proj', 'v_proj', 'down_proj', 'a'), { minLength: 1, maxLength: 5 }).map((s) => s.join('.'));

describe('property: answers equal the reference (JS RegExp on a subset where it agrees with Python)', () => {
  // booleans only: which match re.match picks can differ between JS and Python when a quantified
  // group matches empty (JS then backtracks into it; Python and RE2 accept the empty iteration)
  it('fullmatch and match', () => {
    fc.assert(fc.property(safePattern, fc.array(key, { minLength: 1, maxLength: 6 }), (p, keys) => {
      const { py, js } = named(p);
      const r = re(py);
      const full = new RegExp(`^(?:${js})$`);
      const start = new RegExp(`^(?:${js})`);
      for (const k of keys) {
        expect(r.fullmatch(k)).toBe(full.test(k));
        expect(r.match(k)).toBe(start.test(k));
        expect(r.exec(k) !== null).toBe(start.test(k));
      }
    }), { numRuns: 1000 });
  });

  it('the match re.match picks: leftmost-first, as Python backtracks', () => {
    expect(re('a*?').exec('aaa')).toEqual(['']);
    expect(re('(a|ab)(c|bcd)').exec('abcd')).toEqual(['abcd', 'a', 'bcd']);
    expect(re('(.*)\\.(\\d+)').exec('model.layers.12.mlp')).toEqual(['model.layers.12', 'model.layers', '12']);
    expect(re('(.*?)\\.(\\d+)').exec('model.layers.12.mlp.3')).toEqual(['model.layers.12', 'model.layers', '12']);
    expect(re('(?:(a)|b)*').exec('ab')).toEqual(['ab', 'a']); // Python keeps the last value a group took
    expect(re('(.??a*?){1,2}a*|a').exec('0')).toEqual(['', '']);
  });

  it("rank_pattern keys: re.match(rf'(.*\\.)?({k})$', key)", () => {
    fc.assert(fc.property(keyPattern, fc.array(dottedKey, { minLength: 1, maxLength: 6 }), (p, keys) => {
      const { py, js } = named(p);
      const c = compilePeft(py, 'pattern-key');
      expect(c.ok).toBe(true);
      const ref = new RegExp(`^(.*\\.)?(${js})$`);
      for (const k of keys) expect(c.ok && c.re.match(k)).toBe(ref.test(k));
    }), { numRuns: 600 });
  });

  it("layers_pattern: group 1 of re.match(rf'.*\\.{p}\\.(\\d+)\\.', key)", () => {
    const p = fc.constantFrom('layers', 'h', 'lay\\w+', '[a-z]+', 'model\\.layers', '\\w+', '(?:layers|blocks)', '.*', 'l.yers');
    fc.assert(fc.property(p, fc.array(dottedKey, { minLength: 1, maxLength: 6 }), (pattern, keys) => {
      const c = compilePeft(pattern, 'layers');
      expect(c.ok).toBe(true);
      const ref = new RegExp(`^.*\\.${pattern}\\.(\\d+)\\.`);
      for (const k of keys) expect(c.ok && (c.re.exec(k)?.[1] ?? null)).toBe(ref.exec(k)?.[1] ?? null);
    }), { numRuns: 500 });
  });
});

describe('LoRA scales', () => {
  it('the limit is a named constant', () => expect(MAX_LORA_SCALE).toBe(1000));

  it('lora_alpha 0 is served, with a warning', () => {
    const r = parsePeftConfig(base({ lora_alpha: 0 }));
    expect(r.config).not.toBeNull();
    expect(r.warnings.join('\n')).toMatch(/"lora_alpha" 0 gives a scale of 0: the adapter then equals the base model/);
  });

  it('lora_alpha 1e30 is refused, naming the field and the limit', () => {
    expect(problems({ lora_alpha: 1e30 })).toBe('adapter_config.json: "lora_alpha" 1e30 gives a scale of 1.25e29 (alpha/r = 1e30/8); the limit is |scale| ≤ 1000');
    expect(parsePeftConfig(base({ lora_alpha: 1e30 })).config).toBeNull();
  });

  it('1e309 in the JSON parses to Infinity: refused', () => {
    const raw = JSON.parse('{"peft_type": "LORA", "r": 8, "lora_alpha": 1e309, "target_modules": ["q_proj"]}');
    expect(raw.lora_alpha).toBe(Infinity);
    expect(parsePeftConfig(raw).problems.join('\n')).toMatch(/"lora_alpha" Infinity gives a scale of Infinity .*the limit is \|scale\| ≤ 1000/);
    const bad = JSON.parse('{"peft_type": "LORA", "r": 0, "lora_alpha": -1e309, "target_modules": ["q_proj"]}');
    expect(parsePeftConfig(bad).problems.join('\n')).toMatch(/"lora_alpha" -Infinity is not a finite number/);
  });

  it('the bound is |scale| ≤ 1000, inclusive, either sign', () => {
    expect(problems({ r: 4, lora_alpha: 4000 })).toBe('');
    expect(problems({ r: 4, lora_alpha: -4000 })).toBe('');
    expect(problems({ r: 4, lora_alpha: 4004 })).toMatch(/scale of 1001 \(alpha\/r = 4004\/4\)/);
    expect(problems({ r: 4, lora_alpha: -4004 })).toMatch(/scale of -1001/);
  });

  it('use_rslora divides by √r', () => {
    expect(problems({ r: 4, lora_alpha: 2002, use_rslora: true })).toMatch(/"lora_alpha" 2002 gives a scale of 1001 \(alpha\/√r = 2002\/√4\)/);
    expect(problems({ r: 4, lora_alpha: 2002 })).toBe('');
    expect(moduleScaling(config({ r: 4, lora_alpha: 2000, use_rslora: true }), 'model.layers.0.self_attn.q_proj').scale).toBe(1000);
  });

  it('every alpha_pattern and rank_pattern value is checked', () => {
    expect(problems({ alpha_pattern: { q_proj: 1e6 } })).toMatch(/"alpha_pattern\.q_proj" 1000000 gives a scale of 125000 \(alpha\/r = 1000000\/8\); the limit/);
    expect(problems({ r: 8, lora_alpha: 2000, rank_pattern: { q_proj: 1 } })).toMatch(/"rank_pattern\.q_proj" 1 gives a scale of 2000 \(alpha\/r = 2000\/1\)/);
    expect(problems({ rank_pattern: { q_proj: 0 } })).toMatch(/"rank_pattern\.q_proj" must be a positive integer, got 0/);
    expect(problems({ rank_pattern: { q_proj: 2.5 } })).toMatch(/must be a positive integer, got 2\.5/);
    expect(problems({ alpha_pattern: { q_proj: 'x' } })).toMatch(/"alpha_pattern\.q_proj" must be a number/);
    const inf = JSON.parse('{"peft_type": "LORA", "r": 8, "lora_alpha": 8, "alpha_pattern": {"v_proj": 1e999}, "rank_pattern": {"q_proj": 1e999}}');
    expect(parsePeftConfig(inf).problems.join('\n')).toMatch(/"rank_pattern\.q_proj" must be a positive integer, got Infinity\n.*"alpha_pattern\.v_proj" Infinity gives a scale of Infinity/);
    const zero = parsePeftConfig(base({ alpha_pattern: { v_proj: 0 } }));
    expect(zero.problems).toEqual([]);
    expect(zero.warnings.join('\n')).toMatch(/"alpha_pattern\.v_proj" 0 gives a scale of 0: the modules it matches then equal the base model/);
  });
});

describe('a module whose rank_pattern and alpha_pattern each pass but together exceed the scale limit', () => {
  it('is a 422 naming the module', async () => {
    const { buildAdapter: build } = await import('../../scripts/make-test-adapters.ts');
    const { loadModelFiles } = await import('../../src/runtime/model-loader.ts');
    const { STORIES_DIR } = await import('../helpers/fixtures.ts');
    const { encodeSafetensors } = await import('../../src/runtime/safetensors.ts');
    const { decodeAdapter } = await import('../../src/adapters/lora-adapter.ts');
    const cfg = loadModelFiles(STORIES_DIR).config;
    // r 4, alpha 8 (scale 2); q_proj: rank 1 (8/1 = 8 alone) and alpha 2000 (2000/4 = 500 alone) → 2000/1
    const f = build(cfg, { rank: 4, alpha: 8, targets: ['q_proj', 'v_proj'], rankPattern: { q_proj: 1 }, alphaPattern: { q_proj: 2000 }, seed: 1 });
    const r = decodeAdapter({ config: new TextEncoder().encode(JSON.stringify(f.config)), weights: encodeSafetensors(f.tensors) }, cfg, { maxRank: 64, modelName: 'stories260K' });
    expect(r.adapter).toBeNull();
    expect(r.problems.join('\n')).toMatch(/q_proj: alpha 2000 with rank 1.*limit is \|scale\| ≤ 1000/);
  });
});

