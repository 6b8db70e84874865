// Every `npm run NAME` the docs and source comments tell a user to type exists in package.json.
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const scripts = Object.keys((JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts);

function files(dir: string, ext: RegExp): string[] {
  return readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((e) => {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory()) return e.name === 'node_modules' ? [] : files(p, ext);
    return ext.test(e.name) ? [p] : [];
  });
}

describe('npm scripts named in the docs', () => {
  it('each `npm run NAME` in README.md, docs/, models/README.md, scripts/, bench/ and src/ is a script in package.json', () => {
    const sources = ['README.md', 'models/README.md', ...files('docs', /\.md$/), ...files('scripts', /\.ts$/), ...files('bench', /\.ts$/), ...files('src', /\.(ts|mjs)$/)];
    const missing: string[] = [];
    for (const f of sources) {
      for (const m of readFileSync(join(ROOT, f), 'utf8').matchAll(/npm run ([a-z][\w:-]*)/g)) {
        if (!scripts.includes(m[1])) missing.push(`${f}: npm run ${m[1]}`);
      }
    }
    expect(missing).toEqual([]);
  });
});
