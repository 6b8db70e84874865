// The command line as a user runs it: `loraserve generate` streams the reference continuation, with
// a LoRA adapter (--adapter) as the engine serves it, and log-probabilities (--logprobs) as the model gives them;
// `loraserve serve` starts on 127.0.0.1, answers, and exits cleanly on SIGTERM; bad options are
// refused at start with the flag named. Configuration precedence: flags, then LORASERVE_* env vars.
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig, ConfigError, DEFAULT_CONFIG } from '../../src/server/config.ts';
import { STORIES_DIR, storiesExpected } from '../helpers/fixtures.ts';
import { startEngine } from '../../src/start-engine.ts';
import { AdapterRegistry } from '../../src/adapters/registry.ts';
import { AdapterStore } from '../../src/adapters/adapter-store.ts';
import { loadModelFiles } from '../../src/runtime/model-loader.ts';
import { TextTokenizer } from '../../src/runtime/tokenizer.ts';
import { DEFAULT_SAMPLING } from '../../src/runtime/sampler.ts';
import { DEFAULT_ADAPTERS_DIR, DEFAULT_MODEL_DIR } from '../../src/server/default-model.ts';

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

  it('generate --help lists every flag it takes, --adapter and --logprobs included', async () => {
    const h = await cli(['generate', '--help']);
    expect(h.code).toBe(0);
    for (const flag of ['model', 'prompt', 'adapter', 'adapters', 'logprobs', 'max-tokens', 'temperature', 'top-p', 'top-k', 'min-p', 'seed',
      'repetition-penalty', 'frequency-penalty', 'presence-penalty', 'stop', 'ignore-eos', 'help']) expect(h.stdout).toContain(`--${flag}`);
    const main = await cli(['--help']);
    expect(main.stdout).toMatch(/^  loraserve generate .*--adapter/m);
  });

  it('generate --adapter DIR or NAME generates what the engine serves for that adapter, which is not the base model\'s text', async () => {
    const prompt = 'Once upon a time';
    const name = readdirSync(DEFAULT_ADAPTERS_DIR)[0];
    const store = mkdtempSync(join(tmpdir(), 'loraserve-cli-store-'));
    cpSync(join(DEFAULT_ADAPTERS_DIR, name), join(store, 'mine'), { recursive: true });
    // what the server would answer: the adapter through the registry, as serve loads it
    const model = loadModelFiles(DEFAULT_MODEL_DIR);
    const engine = await startEngine({ runtime: { modelDir: DEFAULT_MODEL_DIR, intraOpThreads: 1 } });
    let expected = '';
    try {
      const registry = new AdapterRegistry(engine, model.config, model.name, 64, new AdapterStore(mkdtempSync(join(tmpdir(), 'loraserve-cli-reg-'))));
      await registry.loadDir(name, join(DEFAULT_ADAPTERS_DIR, name), { replace: false, source: 'path' });
      const promptTokens = new TextTokenizer(model.tokenizerJson, model.tokenizerConfig).encode(prompt);
      for await (const ev of engine.generate({ promptTokens, maxTokens: 30, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: null, adapter: registry.acquire(name) })) {
        if (ev.type === 'token') expected += ev.text;
      }
    } finally {
      await engine.close();
    }
    const args = ['generate', '--prompt', prompt, '--max-tokens', '30', '--temperature', '0', '--ignore-eos'];
    const [byDir, byName, fromStore, base] = await Promise.all([
      cli([...args, '--adapter', join(DEFAULT_ADAPTERS_DIR, name)]),
      cli([...args, '--adapter', name]),                          // the default model's demo adapters
      cli([...args, '--adapter', 'mine', '--adapters', store]),   // a name in --adapters
      cli(args),
    ]);
    for (const r of [byDir, byName, fromStore]) {
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`${expected}\n`);
    }
    expect(base.stdout).not.toBe(byDir.stdout);
  }, 120_000);

  it('generate --adapter refuses what is not an adapter, saying why', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'loraserve-cli-'));
    mkdirSync(join(empty, 'sub'));
    const cases: [string[], RegExp][] = [
      [['--adapter', 'no-such-adapter', '--adapters', empty], /--adapter "no-such-adapter" is not a directory, and no adapter of that name is in/],
      [['--adapter', empty], /is a directory without adapter_config\.json/],
      [['--adapter', join(DEFAULT_ADAPTERS_DIR, readdirSync(DEFAULT_ADAPTERS_DIR)[0]), '--model', STORIES_DIR, '--logprobs', '21'], /--logprobs must be an integer in \[0, 20\]/],
    ];
    for (const [args, message] of cases) {
      const r = await cli(['generate', ...args]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(message);
    }
  });

  it('generate --logprobs N prints each token with its log-probability and the model\'s top N, then the text', async () => {
    const c = storiesExpected().generation_cases[0];
    const r = await cli(['generate', '--model', STORIES_DIR, '--prompt', c.prompt, '--max-tokens', '5', '--temperature', '0', '--ignore-eos', '--logprobs', '5']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const [table, text] = r.stdout.split('\n\n');
    const lines = table.split('\n');
    expect(lines[0]).toMatch(/^\s+#\s+token\s+logprob\s+top 5$/);
    expect(lines).toHaveLength(6);
    const rows = lines.slice(1).map((l) => {
      const m = /^\s*(\d+)\s+("(?:[^"\\]|\\.)*")\s+(-?\d+\.\d{4})\s+(.*)$/.exec(l);
      expect(m, l).not.toBeNull();
      const top = [...m![4].matchAll(/("(?:[^"\\]|\\.)*") (-?\d+\.\d{4}|-inf)/g)].map((t) => ({ text: JSON.parse(t[1]) as string, logprob: Number(t[2]) }));
      return { n: Number(m![1]), token: JSON.parse(m![2]) as string, logprob: Number(m![3]), top };
    });
    expect(rows.map((row) => row.n)).toEqual([1, 2, 3, 4, 5]);
    // greedy: each chosen token is its row's best alternative; the text is the tokens in order
    for (const row of rows) {
      expect(row.top).toHaveLength(5);
      expect(row.top[0]).toEqual({ text: row.token, logprob: row.logprob });
    }
    expect(text).toBe(`${rows.map((row) => row.token).join('')}\n`);
    expect(c.greedy_text.startsWith(rows.map((row) => row.token).join(''))).toBe(true);
    // the first token's alternatives are the reference's top 5 at the prompt's last position
    expect(rows[0].top.map((t) => t.logprob)).toEqual(c.last_position_top5.map((t) => expect.closeTo(t.logprob, 3)));
  });

  it('generate takes negative numbers after their flags (--presence-penalty -0.5, --seed -1)', async () => {
    const c = EXPECTED.generation_cases[0];
    const spaced = await cli(['generate', '--model', STORIES_DIR, '--prompt', c.prompt, '--max-tokens', '20', '--presence-penalty', '-0.5', '--seed', '-1', '--top-k', '-1']);
    const joined = await cli(['generate', '--model', STORIES_DIR, '--prompt', c.prompt, '--max-tokens', '20', '--presence-penalty=-0.5', '--seed=-1', '--top-k=-1']);
    expect(spaced.stderr).toBe('');
    expect(spaced.code).toBe(0);
    expect(spaced.stdout).toBe(joined.stdout);
    const refused = await cli(['generate', '--model', STORIES_DIR, '--frequency-penalty', '-3']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/'frequency_penalty' must be ≥ -2, got -3/);
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
    [['--max-batch', '-4'], '--max-batch must be an integer in [1, 1024], got "-4"'], // a negative value is the flag's, not a flag
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
