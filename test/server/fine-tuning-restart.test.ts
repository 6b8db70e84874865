// Fine-tuning durability (issue 15; docs/fine-tuning.md, "Durability"): a server process killed
// with SIGKILL while a job trains, then started again on the same adapter store and data directory:
//   - the job that was running is `failed` with the documented error (code server_restarted),
//     never resumed; no adapter of it is in the store, no staging left anywhere
//   - a job that was queued behind it runs after the restart and succeeds
//   - a clean shutdown (close) mid-job gives the same result as a crash
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import OpenAI, { toFile } from 'openai';
import { STORIES_DIR } from '../helpers/fixtures.ts';
import { BIN } from '../helpers/cli.ts';
import { startTestServer } from '../helpers/server.ts';
import type { RunningServer } from '../../src/server/serve.ts';
import { LONG_JOB, LORA_FAST, PROMPTS, trainingJsonl, waitFor, waitForJob } from '../helpers/fine-tuning.ts';

const MODEL = 'stories260K';
const root = mkdtempSync(join(tmpdir(), 'loraserve-ft-restart-'));
const adapters = join(root, 'adapters');
const dataDir = join(root, 'data');
let proc: ChildProcess | null = null;
let server: RunningServer | null = null;
afterAll(async () => { proc?.kill('SIGKILL'); await server?.close(); });

function spawnServer(): Promise<string> {
  proc = spawn(process.execPath, [BIN, 'serve', '--model', STORIES_DIR, '--host', '127.0.0.1', '--port', '0', '--adapters', adapters, '--data-dir', dataDir,
    '--enable-local-admin', '--threads', '1', '--max-context', '512', '--preload-adapters', 'none', '--log-level', 'info'], { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise<string>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`server did not start: ${buf.slice(-2000)}`)), 60_000);
    proc!.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(buf);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    proc!.stderr!.resume();
    proc!.once('exit', (code) => { clearTimeout(timer); reject(new Error(`server exited with ${code}`)); });
  });
}

const noLeftovers = () => {
  expect(readdirSync(adapters).filter((e) => e.startsWith('ft-') || e.startsWith('.'))).toEqual([]);
};

describe('restart during a job', () => {
  it('SIGKILL mid-job: the running job is failed after the restart, nothing half-written is served, the queued job runs', async () => {
    const url = await spawnServer();
    const c1 = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const file = await c1.files.create({ file: await toFile(Buffer.from(trainingJsonl(8)), 'train.jsonl'), purpose: 'fine-tune' });
    const running = await c1.fineTuning.jobs.create({ model: MODEL, training_file: file.id, suffix: 'crash', ...LONG_JOB, ...({ lora: LORA_FAST } as object) });
    const queued = await c1.fineTuning.jobs.create({ model: MODEL, training_file: file.id, suffix: 'after', method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 2, batch_size: 4 } } }, ...({ lora: LORA_FAST } as object) });
    // running, with a checkpoint written (the staging directory holds it)
    await waitFor('a checkpoint of the running job', async () => (await c1.fineTuning.jobs.checkpoints.list(running.id)).data.length > 0, 60_000);
    expect((await c1.fineTuning.jobs.retrieve(queued.id)).status).toBe('queued');
    expect(existsSync(join(dataDir, 'jobs', running.id, 'adapter.partial'))).toBe(true);
    proc!.kill('SIGKILL');
    await new Promise((r) => proc!.once('exit', r));
    proc = null;

    server = await startTestServer({ adapters, dataDir, preloadAdapters: null });
    const c2 = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const failed = await c2.fineTuning.jobs.retrieve(running.id);
    expect(failed.status).toBe('failed');
    expect(failed.error).toMatchObject({ code: 'server_restarted' });
    expect(failed.error!.message).toContain('not resumed');
    expect(failed.fine_tuned_model).toBeNull();
    expect(existsSync(join(dataDir, 'jobs', running.id, 'adapter.partial'))).toBe(false);
    noLeftovers();
    expect((await c2.models.list()).data.map((m) => m.id).filter((m) => m.includes('crash'))).toEqual([]);
    const events = (await c2.fineTuning.jobs.listEvents(running.id, { limit: 100 })).data;
    expect(events.some((e) => e.type === 'metrics')).toBe(true); // persisted before the crash
    expect(events[0]).toMatchObject({ level: 'error' });

    // the queued job runs now, and its adapter is served
    const done = await waitForJob(c2, queued.id);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    const r = await c2.completions.create({ model: done.fine_tuned_model!, prompt: PROMPTS[0], max_tokens: 8, temperature: 0 });
    expect(r.choices[0].text.length).toBeGreaterThan(0);
    expect(readdirSync(adapters).filter((e) => e.startsWith('ft-'))).toEqual([`ft-after-${queued.id.slice(-8)}`]);

    // a clean shutdown mid-job: the same rule
    const again = await c2.fineTuning.jobs.create({ model: MODEL, training_file: file.id, suffix: 'stop', ...LONG_JOB, ...({ lora: LORA_FAST } as object) });
    await waitFor('the job running', async () => (await c2.fineTuning.jobs.listEvents(again.id)).data.some((e) => e.type === 'metrics'), 60_000);
    await server.close();
    server = await startTestServer({ adapters, dataDir, preloadAdapters: null });
    const c3 = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    expect(await c3.fineTuning.jobs.retrieve(again.id)).toMatchObject({ status: 'failed', error: { code: 'server_restarted' } });
    expect(readdirSync(adapters).filter((e) => e.startsWith('ft-stop') || e.startsWith('.'))).toEqual([]);
    expect((await c3.fineTuning.jobs.retrieve(queued.id)).status).toBe('succeeded');
  }, 180_000);
});
