// The install configuration (.npmrc): no dependency's install script runs, so onnxruntime-node's
// never downloads the CUDA provider libraries (offline it would fail), and npm knows every key, so
// no command warns about an unknown config (and no future npm that drops unknown keys changes it).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(join(ROOT, 'package.json'));
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';
// npm as a user runs it: no npm_config_* from an npm that started this test, no ONNXRUNTIME_NODE_* from CI
const cleanEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_|^ONNXRUNTIME_NODE_/i.test(k)));
const npm = (args: string[], cwd = ROOT) => spawnSync(NPM, args, { cwd, env: cleanEnv, encoding: 'utf8', timeout: 60_000 });

// .npmrc's key=value lines (comments and blank lines skipped)
const npmrc = Object.fromEntries(readFileSync(join(ROOT, '.npmrc'), 'utf8').split('\n')
  .map((l) => l.trim()).filter((l) => l && !l.startsWith('#') && !l.startsWith(';'))
  .map((l) => [l.slice(0, l.indexOf('=')).trim(), l.slice(l.indexOf('=') + 1).trim()]));

// the lifecycle scripts `npm ci` / `npm install` run for a dependency, all skipped under ignore-scripts
const INSTALL_SCRIPTS = ['preinstall', 'install', 'postinstall', 'prepare'];

const temps: string[] = [];
afterAll(() => { for (const d of temps) rmSync(d, { recursive: true, force: true }); });

describe('install configuration (.npmrc)', () => {
  it('sets ignore-scripts=true and only keys npm knows: npm reads it without an "Unknown config" warning', () => {
    expect(npmrc).toEqual({ 'ignore-scripts': 'true' });
    const r = npm(['config', 'get', 'ignore-scripts']);
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe('true');
    expect(r.stderr).not.toMatch(/unknown/i);
    const known = JSON.parse(npm(['config', 'ls', '--json']).stdout) as Record<string, unknown>;
    for (const key of Object.keys(npmrc)) expect(known, `npm has no config "${key}"`).toHaveProperty(key);
  });

  it('npm honours it: a dependency\'s postinstall does not run (and does with --ignore-scripts=false)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'loraserve-npmrc-'));
    temps.push(dir);
    mkdirSync(join(dir, 'probe'));
    // its postinstall leaves a file in its own directory (a script's working directory)
    writeFileSync(join(dir, 'probe', 'package.json'), JSON.stringify({ name: 'probe', version: '1.0.0', scripts: { postinstall: `node -e "require('fs').writeFileSync('postinstall-ran', '')"` } }));
    execFileSync(NPM, ['pack', '--silent', '--pack-destination', dir], { cwd: join(dir, 'probe'), env: cleanEnv, stdio: 'pipe' });
    const app = join(dir, 'app');
    const marker = join(app, 'node_modules', 'probe', 'postinstall-ran');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true, dependencies: { probe: `file:../probe-1.0.0.tgz` } }));
    writeFileSync(join(app, '.npmrc'), readFileSync(join(ROOT, '.npmrc')));
    const flags = ['--offline', '--no-audit', '--no-fund', '--foreground-scripts'];
    const off = npm(['install', ...flags], app);
    expect(off.status, off.stderr).toBe(0);
    expect(existsSync(join(app, 'node_modules', 'probe', 'package.json'))).toBe(true);
    expect(existsSync(marker)).toBe(false);
    const on = npm(['rebuild', 'probe', '--ignore-scripts=false', ...flags], app); // how the README turns CUDA on
    expect(on.status, on.stderr).toBe(0);
    expect(existsSync(marker)).toBe(true);
  }, 60_000);

  it('onnxruntime-node downloads its CUDA libraries only from an install lifecycle script, which ignore-scripts skips', () => {
    const pkg = JSON.parse(readFileSync(require.resolve('onnxruntime-node/package.json'), 'utf8')) as { scripts: Record<string, string> };
    const runsInstall = Object.entries(pkg.scripts).filter(([, cmd]) => /script\/install\b/.test(cmd)).map(([name]) => name);
    expect(runsInstall.length).toBeGreaterThan(0);
    for (const name of runsInstall) expect(INSTALL_SCRIPTS).toContain(name);
    // that script's own reading of the environment: without a setting it does not skip (it would
    // download the CUDA libraries on Linux x64), so the skip must come from npm not running it
    const flag = (env: Record<string, string>) => execFileSync(process.execPath, ['-e', "process.stdout.write(String(require('onnxruntime-node/script/install-utils.js').parseInstallFlag()))"], { cwd: ROOT, env: { ...cleanEnv, ...env }, encoding: 'utf8' });
    expect(flag({})).toBe('undefined');
    const metadata = require('onnxruntime-node/script/install-metadata.js') as { requirements: Record<string, string[]> };
    expect(metadata.requirements['linux/x64']).toContain('cuda12');
    expect(flag({ ONNXRUNTIME_NODE_INSTALL: 'cuda12' })).not.toBe('false'); // README's GPU command: not a skip
  });

  it('the packages with install scripts work without them, and this project has no pre/post hooks ignore-scripts would skip', async () => {
    const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { hasInstallScript?: boolean }> };
    const withScripts = Object.entries(lock.packages).filter(([, p]) => p.hasInstallScript).map(([path]) => path.replace(/^node_modules\//, '')).sort();
    // a new one must be checked to work without its script before it is added here
    expect(withScripts).toEqual(['esbuild', 'koffi', 'onnxruntime-node', 'protobufjs']);
    const esbuild = await import('esbuild'); // tsx's compiler: its binary comes from the @esbuild/* optional dependency
    expect((await esbuild.transform('const a: number = 1', { loader: 'ts' })).code.trim()).toBe('const a = 1;');
    // koffi's script would build from source only where no prebuilt binary fits; on linux-x64 its
    // binary comes from the @koromix/koffi-linux-x64 optional dependency
    const koffi = (await import('koffi')).default;
    expect(typeof koffi.load('libc.so.6').func('int getpid()')()).toBe('number');
    const ort = await import('onnxruntime-node'); // the bundled CPU binding
    expect(ort.listSupportedBackends().find((b) => b.name === 'cpu')?.bundled).toBe(true);
    const scripts = Object.keys((JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts);
    expect(scripts.filter((s) => /^(pre|post)/.test(s) || INSTALL_SCRIPTS.includes(s))).toEqual([]);
  });
});
