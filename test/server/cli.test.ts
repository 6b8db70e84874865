// The command line as a user runs it: `loraserve generate` streams the reference continuation;
// `loraserve serve` starts on 127.0.0.1, answers, and exits cleanly on SIGTERM; bad options are
// refused at start with the flag named. Configuration precedence: flags, then LORASERVE_* env vars.
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig, ConfigError, DEFAULT_CONFIG } from '../../src/server/config.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const BIN = fileURLToPath(new URL('../../bin/loraserve.js', import.meta.url));
const EXPECTED = JSON.parse(readFileSync(join(STORIES_DIR, 'EXPECTED.json'), 'utf8')) as { generation_cases: { prompt: string; greedy_text: string }[] };

function cli(args: string[], onStdout?: (text: string, kill: (sig: NodeJS.Signals) => void) => void): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LORASERVE_THREADS: '1' } });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); onStdout?.(stdout, (sig) => child.kill(sig)); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', reject);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

describe('loraserve command line', () => {
  it('--help lists every command with one line each; an unknown command says where the list is', async () => {
    const h = await cli(['--help']);
    expect(h.code).toBe(0);
    for (const c of ['serve', 'generate', 'train', 'merge', 'export', 'help']) expect(h.stdout).toMatch(new RegExp(`^  loraserve ${c === 'serve' ? '\\[serve\\]' : c} `, 'm'));
    const u = await cli(['bogus']);
    expect(u.code).toBe(1);
    expect(u.stderr).toMatch(/unknown command "bogus".*--help/);
  });

  it('generate streams the greedy reference continuation to stdout', async () => {
    const c = EXPECTED.generation_cases[0];
    const r = await cli(['generate', '--model', STORIES_DIR, '--prompt', c.prompt, '--max-tokens', '40', '--temperature', '0', '--ignore-eos']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${c.greedy_text}\n`);
  });

  it('serve listens on 127.0.0.1, answers, and exits 0 on SIGTERM', async () => {
    let checked: Promise<unknown> | null = null;
    const r = await cli(['serve', '--model', STORIES_DIR, '--port', '0', '--adapters', mkdtempSync(join(tmpdir(), 'loraserve-cli-')), '--log-level', 'info'], (out, kill) => {
      const m = /Server listening at (http:\/\/[\d.]+:\d+)/.exec(out);
      if (!m || checked) return;
      const url = m[1];
      checked = (async () => {
        expect(url).toMatch(/^http:\/\/127\.0\.0\.1:/);
        const models = await (await fetch(`${url}/v1/models`)).json() as { data: { id: string }[] };
        expect(models.data.map((d) => d.id)).toContain('stories260K');
        const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 8, temperature: 0 }) });
        expect(res.status).toBe(200);
        const text = ((await res.json()) as { choices: { text: string }[] }).choices[0].text;
        expect(text.length).toBeGreaterThan(10);
        expect(EXPECTED.generation_cases[0].greedy_text.startsWith(text)).toBe(true);
      })().finally(() => kill('SIGTERM'));
      checked.catch(() => undefined); // awaited below, once the process has exited
    });
    expect(checked).not.toBeNull();
    await checked;
    expect(r.code).toBe(0);
  });

  it.each([
    [['--max-batch', '0'], '--max-batch must be an integer in [1, 1024]'],
    [['--lora-mode', 'sometimes'], '--lora-mode must be auto, merged or unmerged'],
    [['--port', '70000'], '--port must be an integer in [0, 65535]'],
    [['--no-such-flag'], 'no-such-flag'],
    [['--model', '/nonexistent/model'], '--model /nonexistent/model is not a directory'],
  ])('serve %j is refused at start (exit 2), naming the flag', async (args, message) => {
    const r = await cli(['serve', '--model', STORIES_DIR, ...args]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(message);
  });
});

describe('configuration', () => {
  it('flags win over LORASERVE_* env vars, which win over the defaults', () => {
    const env = { LORASERVE_MAX_BATCH: '16', LORASERVE_ENABLE_LOCAL_ADMIN: 'true', LORASERVE_ALLOW_ADAPTER_DIR: `${STORIES_DIR},${tmpdir()}` };
    const fromEnv = loadConfig(['--model', STORIES_DIR], env);
    expect(fromEnv.maxBatch).toBe(16);
    expect(fromEnv.enableLocalAdmin).toBe(true);
    expect(fromEnv.allowAdapterDirs).toHaveLength(2);
    expect(fromEnv.maxQueue).toBe(DEFAULT_CONFIG.maxQueue);
    expect(loadConfig(['--model', STORIES_DIR, '--max-batch', '8'], env).maxBatch).toBe(8);
    expect(loadConfig(['--model', STORIES_DIR, '--kv-budget-mb', '64'], {}).kvBudgetBytes).toBe(64 * 1024 * 1024);
    expect(() => loadConfig(['--model', STORIES_DIR], { LORASERVE_MAX_QUEUE: 'many' })).toThrow(ConfigError);
    expect(() => loadConfig(['--model', STORIES_DIR], { LORASERVE_MAX_QUEUE: 'many' })).toThrow('--max-queue must be an integer');
  });

  it('scheduling flags: defaults, and values out of range refused with the flag and its limit named', () => {
    const cfg = loadConfig(['--model', STORIES_DIR]);
    expect([cfg.itlTargetMs, cfg.scheduling, cfg.loraArenaBytes]).toEqual([200, 'goodput', 1024 * 1024 * 1024]);
    expect(loadConfig(['--model', STORIES_DIR, '--scheduling', 'strict', '--itl-target-ms', '50']).scheduling).toBe('strict');
    expect(() => loadConfig(['--model', STORIES_DIR, '--scheduling', 'fast'])).toThrow(/--scheduling must be goodput or strict/);
    expect(() => loadConfig(['--model', STORIES_DIR, '--itl-target-ms', '0'])).toThrow(/--itl-target-ms must be an integer in \[10, 600000\]/);
    expect(() => loadConfig(['--model', STORIES_DIR, '--lora-arena-mb', '-1'])).toThrow(/--lora-arena-mb/);
  });

  it('serves on 127.0.0.1:8080 by default', () => {
    const c = loadConfig(['--model', STORIES_DIR], {});
    expect([c.host, c.port]).toEqual(['127.0.0.1', 8080]);
  });
});
