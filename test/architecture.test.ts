// The layers (docs/architecture.md, "Structure"): src/runtime depends on nothing else in src;
// src/adapters and src/merge depend on src/runtime (and each other), never on src/server or the
// composition roots beside src/main.ts; src/train (the LoRA trainer) likewise. The wiring of the
// engine thread lives in its composition root, src/engine-thread.ts.
//
// Every .ts/.mts/.mjs/.js file is parsed (TypeScript's parser, so comments and strings are not
// mistaken for imports) and each module reference is checked: static imports and `export … from`,
// `import x = require()`, dynamic `import('…')`, `require('…')`, and `new URL('…', import.meta.url)`
// (how worker entries are named).
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, expectTypeOf, it } from 'vitest';
import type { AdapterCacheStats, AdapterWeights, LoraMode as RuntimeLoraMode, MergedPathStats, WarmBufferCounts } from '../src/runtime/adapter-source.ts';
import type { EngineStats } from '../src/runtime/engine-messages.ts';
import type { HostCacheStats } from '../src/adapters/host-cache.ts';
import type { LoraAdapter } from '../src/adapters/lora-adapter.ts';
import type { WarmBufferStats } from '../src/adapters/warm-buffers.ts';
import type { LoraMode, MergedStats } from '../src/merge/merged-sessions.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SOURCE = /\.(ts|mts|mjs|js)$/;

interface Reference { specifier: string; line: number }

// The module references of one file's text, in order.
function moduleReferences(text: string, fileName = 'file.ts'): Reference[] {
  const kind = fileName.endsWith('.ts') || fileName.endsWith('.mts') ? ts.ScriptKind.TS : ts.ScriptKind.JS;
  const sf = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, true, kind);
  const out: Reference[] = [];
  const add = (node: ts.Node | undefined): void => {
    if (node && ts.isStringLiteralLike(node)) out.push({ specifier: node.text, line: sf.getLineAndCharacterOfPosition(node.getStart(sf)).line + 1 });
  };
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) add(node.moduleSpecifier);
    else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) add(node.moduleReference.expression);
    else if (ts.isCallExpression(node)) {
      const callee = node.expression;
      if (callee.kind === ts.SyntaxKind.ImportKeyword || (ts.isIdentifier(callee) && callee.text === 'require')) add(node.arguments[0]);
    } else if (ts.isNewExpression(node) && ts.isIdentifier(node.expression) && node.expression.text === 'URL') {
      const base = node.arguments?.[1];
      if (base && base.getText(sf) === 'import.meta.url') add(node.arguments![0]);
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) add(node.argument.literal);
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

interface Rule { from: string; forbidden: (target: string) => boolean; why: string }

const inside = (dir: string) => (target: string): boolean => target === dir || target.startsWith(dir + '/');
const topLevel = (target: string): boolean => target.startsWith('src/') && !target.slice(4).includes('/'); // main.ts, engine-thread.ts, …

const RULES: Rule[] = [
  { from: 'src/runtime', forbidden: (t) => inside('src')(t) && !inside('src/runtime')(t), why: 'src/runtime imports nothing from src/adapters, src/merge, src/server, src/train or the composition roots' },
  { from: 'src/adapters', forbidden: (t) => inside('src/server')(t) || topLevel(t), why: 'src/adapters must not import src/server or the composition roots' },
  { from: 'src/merge', forbidden: (t) => inside('src/server')(t) || topLevel(t), why: 'src/merge must not import src/server or the composition roots' },
  { from: 'src/train', forbidden: (t) => inside('src/server')(t) || topLevel(t), why: 'src/train must not import src/server or the composition roots' },
];

// The layer violations of one file (path relative to the repository root, with '/').
function violations(file: string, text: string): string[] {
  const out: string[] = [];
  for (const rule of RULES) {
    if (!inside(rule.from)(file)) continue;
    for (const ref of moduleReferences(text, file)) {
      if (!ref.specifier.startsWith('.') && !ref.specifier.startsWith('/')) continue; // packages and node: builtins
      const target = relative(ROOT, resolve(ROOT, dirname(file), ref.specifier)).split(sep).join('/');
      if (rule.forbidden(target)) out.push(`${file}:${ref.line} imports '${ref.specifier}' (${target}): ${rule.why}`);
    }
  }
  return out;
}

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(ROOT, dir), { withFileTypes: true })) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory()) out.push(...sourceFiles(path));
    else if (SOURCE.test(e.name) && !e.name.endsWith('.d.ts')) out.push(path);
  }
  return out;
}

const existing = (dir: string): boolean => { try { readdirSync(join(ROOT, dir)); return true; } catch { return false; } };

describe('layers', () => {
  for (const dir of ['src/runtime', 'src/adapters', 'src/merge', 'src/train'].filter(existing)) {
    it(`${dir} imports only what its layer may`, () => {
      const files = sourceFiles(dir);
      expect(files.length).toBeGreaterThan(0);
      const found = files.flatMap((f) => violations(f, readFileSync(join(ROOT, f), 'utf8')));
      expect(found, found.join('\n')).toEqual([]);
    });
  }

  it('the scanner finds every kind of module reference, and nothing in comments or strings', () => {
    const text = [
      "import { a } from './a.ts';",
      "import type { B } from '../adapters/b.ts';",
      "import './side-effect.mjs';",
      "export { c } from \"./c.ts\";",
      "export * from './d.ts';",
      "// import { nope } from '../server/nope.ts';",
      "/* await import('../server/nope.ts') */",
      "const s = \"import x from '../server/nope.ts'\";",
      "const m = await import('../merge/m.ts');",
      "type T = import('./t.ts').T;",
      "const w = new URL('../engine-thread-entry.mjs', import.meta.url);",
      "const u = new URL('https://example.com/x');",
      "const r = require('../train/r.js');",
    ].join('\n');
    expect(moduleReferences(text).map((r) => r.specifier)).toEqual([
      './a.ts', '../adapters/b.ts', './side-effect.mjs', './c.ts', './d.ts', '../merge/m.ts', './t.ts', '../engine-thread-entry.mjs', '../train/r.js',
    ]);
  });

  it('names the file, line and import of each violation', () => {
    const text = "import { ok } from './scheduler.ts';\nimport { HostCache } from '../adapters/host-cache.ts';\nconst m = await import('../merge/merged-sessions.ts');\n"
      + "const w = new URL('../server/x.mjs', import.meta.url);\nimport type { T } from '../train/t.ts';\nimport { startEngine } from '../start-engine.ts';\n";
    const found = violations('src/runtime/engine-worker.ts', text);
    expect(found).toHaveLength(5);
    expect(found[0]).toMatch(/^src\/runtime\/engine-worker\.ts:2 imports '\.\.\/adapters\/host-cache\.ts' \(src\/adapters\/host-cache\.ts\)/);
    expect(found[1]).toContain("engine-worker.ts:3 imports '../merge/merged-sessions.ts'");
    expect(found[2]).toContain("'../server/x.mjs'");
    expect(found[3]).toContain("'../train/t.ts'");
    expect(found[4]).toContain("'../start-engine.ts'");
    expect(violations('src/runtime/graph/ir.ts', "import { x } from '../../adapters/y.ts';")).toHaveLength(1);
    expect(violations('src/runtime/graph/ir.ts', "import { x } from '../dtype.ts';")).toEqual([]);
    expect(violations('src/adapters/registry.ts', "import { x } from '../server/config.ts';")).toHaveLength(1);
    expect(violations('src/adapters/registry.ts', "import { x } from '../runtime/errors.ts';\nimport { y } from '../merge/merge-lora.ts';")).toEqual([]);
    expect(violations('src/merge/merged-sessions.ts', "import { x } from '../server/config.ts';")).toHaveLength(1);
    expect(violations('src/server/app.ts', "import { x } from '../adapters/registry.ts';")).toEqual([]);
    expect(violations('src/train/dataset.ts', "import { x } from '../server/prompt-text.ts';\nimport { y } from '../main.ts';")).toHaveLength(2);
    expect(violations('src/train/dataset.ts', "import { x } from '../runtime/chat-template.ts';\nimport { y } from '../adapters/lora-adapter.ts';")).toEqual([]);
  });
});

// The runtime's structural types for what crosses the thread boundary must stay the adapter and
// merge types' twins (checked by tsc, which includes this file).
it('the runtime twins of adapter and merge types match them', () => {
  expectTypeOf<AdapterWeights>().toEqualTypeOf<LoraAdapter>();
  expectTypeOf<AdapterCacheStats>().toEqualTypeOf<HostCacheStats>();
  expectTypeOf<WarmBufferCounts>().toEqualTypeOf<WarmBufferStats>();
  expectTypeOf<MergedPathStats>().toEqualTypeOf<MergedStats>();
  expectTypeOf<RuntimeLoraMode>().toEqualTypeOf<LoraMode>();
  expectTypeOf<EngineStats['hostCache']>().toEqualTypeOf<HostCacheStats>();
});
