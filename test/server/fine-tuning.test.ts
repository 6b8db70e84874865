// Fine-tuning over the API (issue 15), with the official `openai` client against the real server on
// 127.0.0.1 (stories260K):
//   - files: create, list, retrieve, content, delete; a malformed JSONL file → 422 naming every bad
//     line, nothing stored; size and line limits → 413
//   - a job: create → succeeded; listEvents (metrics: step, train loss, eval loss, tokens/s),
//     checkpoints, result files; the adapter is in the store and served as fine_tuned_model, and
//     its output differs from the base model's
//   - serving goes on during a job: streams from another adapter all finish
//   - cancel mid-run: cancelled, no adapter registered, nothing left in the store
//   - events live over SSE (?stream=true) and a WebSocket subscription
//   - bad input: each a clear 4xx; a bounded queue (429)
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import OpenAI, { toFile } from 'openai';
import WebSocket from 'ws';
import type { RunningServer } from '../../src/server/serve.ts';
import { ConfigError, dataDirOf, loadConfig } from '../../src/server/config.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';
import { adapterFiles, startTestServer, testConfig, upload } from '../helpers/server.ts';
import { LONG_JOB, LORA_FAST, PROMPTS, trainingJsonl, waitFor, waitForJob } from '../helpers/fine-tuning.ts';

const MODEL = 'stories260K';
let server: RunningServer;
let client: OpenAI;
let storeDir: string;
let dataDir: string;

const jsonlFile = (text: string, name = 'train.jsonl') => toFile(Buffer.from(text), name);
const post = (path: string, body: unknown) => fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
const storeEntries = () => readdirSync(storeDir);

beforeAll(async () => {
  const cfg = testConfig({ fineTuneMaxQueue: 2 });
  storeDir = cfg.adapters;
  dataDir = dataDirOf(cfg);
  const { startServer } = await import('../../src/server/serve.ts');
  server = await startServer(cfg);
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  expect((await upload(server.url, 'other', adapterFiles({ rank: 4, seed: 3 }))).status).toBe(201);
}, 60_000);
afterAll(async () => { await server?.close(); });

describe('files', () => {
  it('create, list, retrieve, content, delete', async () => {
    const f = await client.files.create({ file: await jsonlFile(trainingJsonl()), purpose: 'fine-tune' });
    expect(f).toMatchObject({ object: 'file', purpose: 'fine-tune', filename: 'train.jsonl', bytes: Buffer.byteLength(trainingJsonl()) });
    expect(f.id).toMatch(/^file-[0-9a-f]{24}$/);
    expect(existsSync(join(dataDir, 'files', f.id, 'content'))).toBe(true);
    expect((await client.files.list()).data.map((x) => x.id)).toContain(f.id);
    expect((await client.files.retrieve(f.id)).id).toBe(f.id);
    expect(await (await client.files.content(f.id)).text()).toBe(trainingJsonl());
    expect(await client.files.delete(f.id)).toMatchObject({ id: f.id, deleted: true });
    expect(existsSync(join(dataDir, 'files', f.id))).toBe(false);
    await expect(client.files.retrieve(f.id)).rejects.toMatchObject({ status: 404 });
  });

  it('a malformed JSONL file: 422 naming every bad line, nothing stored', async () => {
    const before = readdirSync(join(dataDir, 'files')).length;
    const bad = [JSON.stringify({ prompt: 'a', completion: 'b' }), '{not json', JSON.stringify({ text: 'x' }), JSON.stringify({ prompt: 1, completion: 'b' }), '[1,2]'].join('\n');
    const err = await client.files.create({ file: await jsonlFile(bad), purpose: 'fine-tune' }).catch((e: unknown) => e) as InstanceType<typeof OpenAI.APIError>;
    expect(err.status).toBe(422);
    const problems = (err.error as { problems: string[] }).problems;
    expect(problems.map((p) => p.split(':')[0])).toEqual(['line 2', 'line 4', 'line 5']);
    expect(readdirSync(join(dataDir, 'files')).length).toBe(before);
  });

  it('limits: a file over the line limit or the size limit is a 413; a wrong purpose a 400', async () => {
    const s = await startTestServer({ maxTrainingFileLines: 3, maxTrainingFileBytes: 1024 * 1024 });
    try {
      const c = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'unused', maxRetries: 0 });
      await expect(c.files.create({ file: await jsonlFile(trainingJsonl(4)), purpose: 'fine-tune' })).rejects.toMatchObject({ status: 413 });
      await expect(c.files.create({ file: await jsonlFile('x'.repeat(1024 * 1024 + 10)), purpose: 'fine-tune' })).rejects.toMatchObject({ status: 413 });
      await expect(c.files.create({ file: await jsonlFile(trainingJsonl(2)), purpose: 'batch' })).rejects.toMatchObject({ status: 400 });
      expect((await c.files.create({ file: await jsonlFile(trainingJsonl(3)), purpose: 'fine-tune' })).object).toBe('file');
    } finally {
      await s.close();
    }
  });
});

describe('jobs', () => {
  let trainId: string;
  let validId: string;
  beforeAll(async () => {
    trainId = (await client.files.create({ file: await jsonlFile(trainingJsonl(8)), purpose: 'fine-tune' })).id;
    validId = (await client.files.create({ file: await jsonlFile(trainingJsonl(4), 'valid.jsonl'), purpose: 'fine-tune' })).id;
  });

  it('create → succeeded; events, checkpoints, result files; the adapter is served and differs from the base model', async () => {
    const created = await client.fineTuning.jobs.create({
      model: MODEL, training_file: trainId, validation_file: validId, suffix: 'ball', seed: 7,
      method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 6, batch_size: 4 } } },
      // loraserve's LoRA settings ride along in the body
      ...({ lora: LORA_FAST } as object),
    });
    expect(created.object).toBe('fine_tuning.job');
    expect(created.id).toMatch(/^ftjob-[0-9a-f]{24}$/);
    expect(['validating_files', 'queued', 'running']).toContain(created.status);
    expect(created.hyperparameters).toMatchObject({ n_epochs: 6, batch_size: 4 });
    const job = await waitForJob(client, created.id);
    expect(job.status, JSON.stringify(job.error)).toBe('succeeded');
    const short = created.id.slice(-8);
    expect(job.fine_tuned_model).toBe(`${MODEL}:ft-ball-${short}`);
    expect(job.trained_tokens).toBeGreaterThan(0);
    expect(job.result_files).toHaveLength(2);
    const png = Buffer.from(await (await client.files.content(job.result_files[1])).arrayBuffer());
    expect(png.subarray(1, 4).toString()).toBe('PNG');
    expect(await (await client.files.content(job.result_files[0])).text()).toContain('"step":12');

    const events = (await client.fineTuning.jobs.listEvents(created.id, { limit: 100 })).data;
    const metrics = events.filter((e) => e.type === 'metrics').map((e) => e.data as Record<string, number | null>);
    expect(metrics.map((m) => m.step).sort((a, b) => a! - b!)).toEqual(Array.from({ length: 13 }, (_, i) => i)); // step 0: eval before training
    const last = metrics.find((m) => m.step === 12)!;
    expect(last.train_loss).toBeGreaterThan(0);
    expect(last.eval_loss).toBeGreaterThan(0);
    expect(last.tokens_per_s).toBeGreaterThan(0);
    expect(last.eval_loss!).toBeLessThan(metrics.find((m) => m.step === 0)!.eval_loss!);
    expect(events[0].message).toContain('successfully completed'); // newest first
    const page1 = await client.fineTuning.jobs.listEvents(created.id, { limit: 3 });
    expect(page1.data).toHaveLength(3);
    expect(page1.has_more).toBe(true);
    const page2 = await client.fineTuning.jobs.listEvents(created.id, { limit: 3, after: page1.data[2].id });
    expect(page2.data[0].id).toBe(events[3].id);
    const ckpts = (await client.fineTuning.jobs.checkpoints.list(created.id)).data;
    expect(ckpts.map((c) => c.step_number)).toEqual([10, 8, 6, 4, 2]); // each epoch but the last (the adapter itself)

    // in the store, atomically, and served
    expect(storeEntries()).toContain(`ft-ball-${short}`);
    expect(storeEntries().filter((e) => e.startsWith('.'))).toEqual([]);
    // its config names the served model, not the server's directory (no path leaks; it merges with
    // other adapters of the model: merge-files.ts)
    const stored = JSON.parse(readFileSync(join(storeDir, `ft-ball-${short}`, 'adapter_config.json'), 'utf8'));
    expect(stored.base_model_name_or_path).toBe(MODEL);
    expect((await client.models.list()).data.map((m) => m.id)).toContain(`ft-ball-${short}`);
    expect((await client.models.retrieve(job.fine_tuned_model!)).id).toBe(`ft-ball-${short}`); // the name the job gives works here too
    const req = { prompt: PROMPTS[0], max_tokens: 24, temperature: 0 };
    const base = await client.completions.create({ model: MODEL, ...req });
    const tuned = await client.completions.create({ model: job.fine_tuned_model!, ...req });
    expect(tuned.choices[0].text).not.toBe(base.choices[0].text);
    expect(tuned.choices[0].text).toContain('ball');

    // the same suffix again while that adapter is served: 409
    await expect(client.fineTuning.jobs.create({ model: MODEL, training_file: trainId, suffix: 'ball' })).rejects.toMatchObject({ status: 409 });
    expect((await client.fineTuning.jobs.list()).data[0].id).toBe(created.id);
  }, 120_000);

  it('serving goes on during a job, SSE streams its events live, and a cancel mid-run leaves nothing', async () => {
    const job = await client.fineTuning.jobs.create({ model: MODEL, training_file: trainId, suffix: 'long', ...LONG_JOB, ...({ lora: LORA_FAST } as object) });
    // SSE: the events so far, then live ones
    const sse = await fetch(`${server.url}/v1/fine_tuning/jobs/${job.id}/events?stream=true`);
    expect(sse.headers.get('content-type')).toContain('text/event-stream');
    const reader = sse.body!.getReader();
    const frames: string[] = [];
    const readAll = (async () => {
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) !== -1) { frames.push(buf.slice(0, i).replace(/^data: /, '')); buf = buf.slice(i + 2); }
      }
    })();
    await waitFor('a metrics event over SSE', async () => frames.some((f) => f.includes('"type":"metrics"') && f.includes('"step":2')));
    expect((await client.fineTuning.jobs.retrieve(job.id)).status).toBe('running');

    // other traffic while it trains: streams from another adapter all finish
    const streams = await Promise.all(Array.from({ length: 6 }, async (_, i) => {
      const s = await client.completions.create({ model: 'other', prompt: PROMPTS[i], max_tokens: 32, temperature: 0.8, seed: i, stream: true });
      let text = '';
      let finish: string | null = null;
      for await (const c of s) { text += c.choices[0]?.text ?? ''; finish = c.choices[0]?.finish_reason ?? finish; }
      return { text, finish };
    }));
    for (const s of streams) { expect(s.finish).not.toBeNull(); expect(s.text.length).toBeGreaterThan(0); }
    expect((await client.fineTuning.jobs.retrieve(job.id)).status).toBe('running');

    // cancel mid-run
    const c = await client.fineTuning.jobs.cancel(job.id);
    expect(c.status).toBe('cancelled'); // the answer comes once the job has stopped
    const ended = await waitForJob(client, job.id);
    expect(ended.status).toBe('cancelled');
    expect(ended.fine_tuned_model).toBeNull();
    await readAll; // the SSE stream ends with the job
    expect(frames.at(-1)).toBe('[DONE]');
    expect(frames.at(-2)).toContain('cancelled');
    expect(storeEntries().filter((e) => e.includes('long'))).toEqual([]);
    expect(storeEntries().filter((e) => e.startsWith('.'))).toEqual([]);
    expect((await client.models.list()).data.map((m) => m.id).filter((m) => m.includes('long'))).toEqual([]);
    expect(existsSync(join(dataDir, 'jobs', job.id, 'adapter.partial'))).toBe(false);
    expect(existsSync(join(dataDir, 'jobs', job.id, 'adapter'))).toBe(false);
    await expect(client.fineTuning.jobs.cancel(job.id)).rejects.toMatchObject({ status: 409 });
  }, 120_000);

  it('a WebSocket subscription streams the events of a job, then the job', async () => {
    const job = await client.fineTuning.jobs.create({ model: MODEL, training_file: trainId, method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 1, batch_size: 4 } } }, ...({ lora: LORA_FAST } as object) });
    const ws = new WebSocket(`${server.url.replace('http', 'ws')}/v1/stream`);
    const msgs: Record<string, unknown>[] = [];
    await new Promise((r) => ws.once('open', r));
    ws.on('message', (d) => msgs.push(JSON.parse(String(d))));
    ws.send(JSON.stringify({ type: 'fine_tuning.job.subscribe', fine_tuning_job_id: job.id }));
    ws.send(JSON.stringify({ type: 'fine_tuning.job.subscribe', fine_tuning_job_id: 'ftjob-000000000000000000000000' }));
    await waitFor('the job done message', async () => msgs.some((m) => m.type === 'fine_tuning.job.done'), 90_000);
    ws.close();
    const done = msgs.find((m) => m.type === 'fine_tuning.job.done') as { job: { status: string } };
    expect(done.job.status).toBe('succeeded');
    const events = msgs.filter((m) => m.type === 'fine_tuning.job.event').map((m) => m.event as { type: string; data: { step: number } | null });
    expect(events.filter((e) => e.type === 'metrics').map((e) => e.data!.step)).toEqual([1, 2]);
    expect(msgs.find((m) => m.type === 'error')).toMatchObject({ status: 404 });
  }, 120_000);

  it('bad input: each a clear 4xx naming the field', async () => {
    const cases: [unknown, number, string][] = [
      [{ model: MODEL, training_file: 'file-000000000000000000000000' }, 404, 'training_file'],
      [{ model: MODEL, training_file: '../../etc/passwd' }, 404, 'training_file'],
      [{ model: 'gpt-4o-mini', training_file: trainId }, 404, 'model'],
      [{ model: MODEL, training_file: trainId, method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: -1 } } } }, 400, 'method.supervised.hyperparameters.n_epochs'],
      [{ model: MODEL, training_file: trainId, hyperparameters: { n_epochs: 0 } }, 400, 'hyperparameters.n_epochs'],
      [{ model: MODEL, training_file: trainId, epochs: 3 }, 400, 'epochs'],
      [{ model: MODEL, training_file: trainId, lora: { rank: 4, dropout_rate: 0.1 } }, 400, 'lora.dropout_rate'],
      [{ model: MODEL, training_file: trainId, lora: { rank: 1000 } }, 400, 'lora.rank'],
      [{ model: MODEL, training_file: trainId, suffix: 'a/b' }, 400, 'suffix'],
      [{ model: MODEL, training_file: trainId, method: { type: 'dpo' } }, 400, 'method.type'],
    ];
    for (const [body, status, param] of cases) {
      const r = await post('/v1/fine_tuning/jobs', body);
      const j = await r.json() as { error: { param: string; message: string } };
      expect(r.status, JSON.stringify(j)).toBe(status);
      expect(j.error.param, JSON.stringify(j)).toBe(param);
    }
    expect((await fetch(`${server.url}/v1/fine_tuning/jobs/..%2F..%2Fetc`)).status).toBe(404);
    expect((await fetch(`${server.url}/v1/files/..%2Fjobs/content`)).status).toBe(404);
  });

  it('a job whose data does not fit fails with an error naming the file id and lora.seq_len, never a server path', async () => {
    const job = await client.fineTuning.jobs.create({ model: MODEL, training_file: trainId, metadata: { team: 'red', run: '7' }, method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 1, batch_size: 4 } } }, ...({ lora: { ...LORA_FAST, seq_len: 4 } } as object) });
    const ended = await waitForJob(client, job.id);
    expect(ended.status).toBe('failed');
    expect(ended.error!.message).toMatch(new RegExp(`^training_file ${trainId}, line \\d+: the example is \\d+ tokens, longer than lora.seq_len 4`));
    expect(ended.error!.message).not.toContain('/');
    expect(ended.error!.message).not.toContain('--');

    // OpenAI's metadata filter of the list: metadata[k]=v (all must match), metadata=null
    const ids = async (q: string) => {
      const r = await fetch(`${server.url}/v1/fine_tuning/jobs?limit=100&${q}`);
      expect(r.status, q).toBe(200);
      return ((await r.json()) as { data: { id: string }[] }).data.map((j) => j.id);
    };
    expect(await ids('metadata[team]=red')).toEqual([job.id]);
    expect(await ids('metadata[team]=red&metadata[run]=7')).toEqual([job.id]);
    expect(await ids('metadata[team]=red&metadata[run]=8')).toEqual([]);
    expect(await ids('metadata[team]=blue')).toEqual([]);
    const all = await ids('');
    expect(await ids('metadata=null')).toEqual(all.filter((id) => id !== job.id));
    const bad = await fetch(`${server.url}/v1/fine_tuning/jobs?tag=red`);
    expect(bad.status).toBe(400);
    // files of another of OpenAI's purposes: none here, not an error
    const batch = await fetch(`${server.url}/v1/files?purpose=batch`);
    expect(batch.status).toBe(200);
    expect((await batch.json()).data).toEqual([]);
  }, 60_000);

  it('a duplicate suffix of a job in progress is a 409, and the queue is bounded (429)', async () => {
    const a = await client.fineTuning.jobs.create({ model: MODEL, training_file: trainId, suffix: 'dup', ...LONG_JOB, ...({ lora: LORA_FAST } as object) });
    await expect(client.fineTuning.jobs.create({ model: MODEL, training_file: trainId, suffix: 'dup' })).rejects.toMatchObject({ status: 409 });
    await waitForJob(client, a.id, ['running']);
    const b = await client.fineTuning.jobs.create({ model: MODEL, training_file: trainId, ...LONG_JOB });
    const c = await client.fineTuning.jobs.create({ model: MODEL, training_file: trainId, ...LONG_JOB });
    const full = await post('/v1/fine_tuning/jobs', { model: MODEL, training_file: trainId });
    expect(full.status).toBe(429);
    expect((await waitForJob(client, b.id, ['queued'])).status).toBe('queued');
    // a queued job is cancelled at once; a file used by a job in progress cannot be deleted
    expect((await client.fineTuning.jobs.cancel(b.id)).status).toBe('cancelled');
    await expect(client.files.delete(trainId)).rejects.toMatchObject({ status: 409 });
    await client.fineTuning.jobs.cancel(c.id);
    await client.fineTuning.jobs.cancel(a.id);
    expect((await waitForJob(client, a.id)).status).toBe('cancelled');
  }, 120_000);

  it('a queued job whose adapter name was taken meanwhile (an upload) fails when its turn comes, before training, naming suffix', async () => {
    const a = await client.fineTuning.jobs.create({ model: MODEL, training_file: trainId, ...LONG_JOB, ...({ lora: LORA_FAST } as object) });
    await waitForJob(client, a.id, ['running']);
    const b = await client.fineTuning.jobs.create({ model: MODEL, training_file: trainId, suffix: 'taken', ...({ lora: LORA_FAST } as object) });
    expect((await waitForJob(client, b.id, ['queued'])).status).toBe('queued');
    expect((await upload(server.url, `ft-taken-${b.id.slice(-8)}`, adapterFiles({ rank: 2, seed: 5 }))).status).toBe(201);
    await client.fineTuning.jobs.cancel(a.id);
    const ended = await waitForJob(client, b.id);
    expect(ended.status).toBe('failed');
    expect(ended.error).toMatchObject({ code: 'conflict', param: 'suffix' });
    expect(ended.error?.message).toMatch(/was created \(uploaded or merged\) after this job/);
    expect(ended.trained_tokens ?? 0).toBe(0);
  }, 120_000);
});

describe('configuration', () => {
  it('the flags parse; the data directory defaults to a sibling of the store', () => {
    const cfg = loadConfig(['--model', STORIES_DIR, '--adapters', '/tmp/x/adapters', '--fine-tune-threads', '2', '--fine-tune-nice', '0', '--fine-tune-max-queue', '3', '--fine-tune-pause-waiting', '4', '--max-training-file-mb', '5', '--max-training-file-lines', '6'], {});
    expect(cfg).toMatchObject({ fineTuneThreads: 2, fineTuneNice: 0, fineTuneMaxQueue: 3, fineTunePauseWaiting: 4, maxTrainingFileBytes: 5 * 1024 * 1024, maxTrainingFileLines: 6, dataDir: null });
    expect(dataDirOf(cfg)).toBe('/tmp/x/adapters.fine-tuning');
    expect(dataDirOf(loadConfig(['--model', STORIES_DIR, '--data-dir', '/tmp/y'], {}))).toBe('/tmp/y');
    expect(() => loadConfig(['--model', STORIES_DIR, '--fine-tune-nice', '20'], {})).toThrow(ConfigError);
  });

  it('a data directory that cannot be used: the server serves, and the fine-tuning routes are 503s naming it', async () => {
    const s = await startTestServer({ dataDir: '/dev/null/fine-tuning' });
    try {
      const r = await fetch(`${s.url}/v1/fine_tuning/jobs`);
      expect(r.status).toBe(503);
      expect((await r.json() as { error: { message: string } }).error.message).toContain('--data-dir');
      expect((await fetch(`${s.url}/v1/files`)).status).toBe(503);
      expect((await fetch(`${s.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt: 'Hi', max_tokens: 2 }) })).status).toBe(200);
    } finally {
      await s.close();
    }
  }, 60_000);
});

describe('auth', () => {
  it('files and jobs need the admin key', async () => {
    const s = await startTestServer({ adminKey: 'sesame', enableLocalAdmin: false });
    try {
      expect((await fetch(`${s.url}/v1/files`)).status).toBe(401);
      expect((await fetch(`${s.url}/v1/fine_tuning/jobs`)).status).toBe(401);
      const ok = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'sesame', maxRetries: 0 });
      expect((await ok.fineTuning.jobs.list()).data).toEqual([]);
      const bad = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'nope', maxRetries: 0 });
      await expect(bad.files.list()).rejects.toMatchObject({ status: 401 });
    } finally {
      await s.close();
    }
  }, 60_000);
});
