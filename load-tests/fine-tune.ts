// The fine-tuning scenario (`npm run load-test -- --only finetune`): 8 streaming clients against
// one adapter, first with no job, then while a fine-tuning job trains (its own worker thread,
// --fine-tune-threads 1), at the default training priority (--fine-tune-nice 10) and, on a second
// server, at normal priority (--fine-tune-nice 0). Records inter-token latency p50/p99, TTFT and
// throughput per phase, and the job's training tokens/s, in load-tests/results/fine-tune.json;
// load-tests/fine-tune-report.ts writes them into docs/benchmarks.md. Bounded: `seconds` per phase,
// at most MAX_REQUESTS streams per phase, the job cancelled at the end of its phase.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';
import { buildAdapter } from '../scripts/make-test-adapters.ts';
import { parseModelConfig } from '../src/runtime/model-config.ts';
import { encodeSafetensors } from '../src/runtime/safetensors.ts';
import { latencyRow, printTable, startServer, streamCompletion } from './harness.ts';
import type { StreamStats } from './harness.ts';

const MAX_REQUESTS = 2000;
const PROMPTS = ['Once upon a time', 'One day', 'The little dog', 'Tom said', 'In the park', 'Lily saw', 'The sun', 'A big bird'];

export interface FineTuneOptions { model: string; seconds: number; concurrency?: number }

export async function runFineTune(opts: FineTuneOptions): Promise<{ failures: string[] }> {
  const conc = opts.concurrency ?? 8;
  const cfg = parseModelConfig(JSON.parse(readFileSync(join(opts.model, 'config.json'), 'utf8')));
  const modelName = opts.model.split('/').filter(Boolean).at(-1)!;
  const rows: Record<string, string | number>[] = [];
  const failures: string[] = [];
  const training: Record<string, number | string>[] = [];
  // examples long enough that a training step is real work; many epochs so the job outlasts the phase
  const story = ' there was a big red ball. The ball liked to jump and roll in the sun all day long, and every child in the town came to play with it.';
  const jsonl = Array.from({ length: 64 }, (_, i) => JSON.stringify({ prompt: PROMPTS[i % PROMPTS.length], completion: story.repeat(2) })).join('\n');

  const phase = async (url: string, name: string): Promise<StreamStats[]> => {
    const deadline = performance.now() + opts.seconds * 1000;
    const out: StreamStats[] = [];
    let seed = 0;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: conc }, async (_, c) => {
      while (performance.now() < deadline && out.length < MAX_REQUESTS) {
        out.push(await streamCompletion(url, { model: 'tenant', prompt: PROMPTS[c % PROMPTS.length], max_tokens: 64, temperature: 0.8, ignore_eos: true, seed: seed++ }));
      }
    }));
    rows.push(latencyRow(name, out, performance.now() - t0));
    for (const r of out) if (!r.ok) failures.push(`${name}: stream failed: ${r.status} ${r.error ?? ''}`.slice(0, 200));
    return out;
  };

  const withJob = async (url: string, name: string, nice: number): Promise<void> => {
    const form = new FormData();
    form.append('purpose', 'fine-tune');
    form.append('file', new Blob([jsonl]), 'train.jsonl');
    const f = await (await fetch(`${url}/v1/files`, { method: 'POST', body: form })).json() as { id: string };
    const created = await (await fetch(`${url}/v1/fine_tuning/jobs`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: modelName, training_file: f.id, method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 1000, batch_size: 8 } } }, lora: { rank: 8, learning_rate: 0.001, seq_len: 128 } }),
    })).json() as { id: string };
    const events = async () => ((await (await fetch(`${url}/v1/fine_tuning/jobs/${created.id}/events?limit=100`)).json()) as { data: { type: string; data: { step: number; tokens_per_s: number } | null }[] }).data;
    const until = Date.now() + 60_000;
    while (!(await events()).some((e) => e.type === 'metrics') && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    // newest first; the step numbers say how far it trained
    const lastStep = async (): Promise<number> => Math.max(0, ...(await events()).filter((e) => e.type === 'metrics').map((e) => e.data!.step));
    const before = await lastStep();
    const tPhase = performance.now();
    await phase(url, name);
    const phaseS = (performance.now() - tPhase) / 1000;
    const after = await lastStep();
    const metrics = (await events()).filter((e) => e.type === 'metrics' && e.data!.step > before).map((e) => e.data!);
    const job = await (await fetch(`${url}/v1/fine_tuning/jobs/${created.id}`)).json() as { status: string };
    if (job.status !== 'running') failures.push(`${name}: the job was ${job.status}, not running, at the end of the phase`);
    const tps = metrics.map((m) => m.tokens_per_s);
    training.push({ phase: name, nice, steps_during_phase: after - before, steps_per_s: (after - before) / phaseS, train_tok_s_mean: tps.length ? tps.reduce((a, b) => a + b, 0) / tps.length : 0 });
    await fetch(`${url}/v1/fine_tuning/jobs/${created.id}/cancel`, { method: 'POST' });
  };

  const adapterForm = (): FormData => {
    const a = buildAdapter(cfg, { rank: 8, seed: 1, targets: ['q_proj', 'v_proj', 'o_proj'] });
    const fd = new FormData();
    fd.append('name', 'tenant');
    fd.append('adapter_config.json', new Blob([JSON.stringify(a.config)]), 'adapter_config.json');
    fd.append('adapter_model.safetensors', new Blob([encodeSafetensors(a.tensors) as Uint8Array<ArrayBuffer>]), 'adapter_model.safetensors');
    return fd;
  };
  for (const nice of [10, 0]) {
    const server = await startServer(opts.model, ['--max-queue', '512', '--fine-tune-threads', '1', '--fine-tune-nice', String(nice)]);
    try {
      const up = await fetch(`${server.url}/v1/adapters`, { method: 'POST', body: adapterForm() });
      if (up.status !== 201) throw new Error(`upload failed: ${up.status} ${await up.text()}`);
      await streamCompletion(server.url, { model: 'tenant', prompt: 'warm up', max_tokens: 8 });
      if (nice === 10) await phase(server.url, 'no job');
      await withJob(server.url, `job running (--fine-tune-nice ${nice})`, nice);
    } finally {
      await server.stop();
    }
  }
  printTable(`fine-tuning while serving: ${conc} streaming clients, 64 tokens each`, rows);
  printTable('the job during each phase', training);
  const dir = fileURLToPath(new URL('./results/', import.meta.url));
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'fine-tune.json'), JSON.stringify({ date: new Date().toISOString(), model: modelName, cores: cpus().length, cpu: cpus()[0]?.model ?? '', node: process.version, seconds: opts.seconds, concurrency: conc, rows, training, failures }, null, 2));
  return { failures };
}
