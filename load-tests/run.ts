// npm run load-test [-- --model DIR --seconds N --concurrency N --only steady|churn|disconnects|attack|finetune]
// Starts loraserve on 127.0.0.1 and runs three bounded scenarios against it (all by default, or the one named by --only):
//   steady       many adapters with power-law (Zipf) popularity, as in S-LoRA's evaluation:
//                streaming clients (TTFT, inter-token latency) plus autocannon (throughput)
//   churn        the same traffic while adapters are uploaded, replaced and deleted
//   disconnects  clients that drop their streams mid-way; the server must free them at once
//   attack       attack.ts, on servers of its own: huge prompts, reload churn, slow readers,
//                symlink/Host/Origin attacks, with victim streams' gaps, lag, RSS (results/attack.json)
//   finetune     fine-tune.ts, on servers of its own: 8 streaming clients with and without a
//                fine-tuning job training, ITL p50/p99 per phase (results/fine-tune.json)
// Each prints throughput, TTFT and inter-token percentiles, and error counts; JSON goes to
// load-tests/results/. Exits non-zero on any 5xx, on leaked sequences, or on a wrong output.
import autocannon from 'autocannon';
import { mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { Rng } from '../src/runtime/random.ts';
import { buildAdapter } from '../scripts/make-test-adapters.ts';
import { parseModelConfig } from '../src/runtime/model-config.ts';
import { encodeSafetensors } from '../src/runtime/safetensors.ts';
import { latencyRow, metricValue, printTable, startServer, streamCompletion, zipf } from './harness.ts';
import type { StreamStats } from './harness.ts';
import { runAttack } from './attack.ts';
import { runFineTune } from './fine-tune.ts';

const { values } = parseArgs({ options: {
  model: { type: 'string', default: fileURLToPath(new URL('../../shared/fixtures/stories260K', import.meta.url)) },
  seconds: { type: 'string', default: '10' },
  concurrency: { type: 'string', default: '8' },
  adapters: { type: 'string', default: '20' },
  only: { type: 'string' },
} });
const SCENARIOS = ['steady', 'churn', 'disconnects', 'attack', 'finetune'];
if (values.only !== undefined && !SCENARIOS.includes(values.only)) throw new Error(`--only must be one of ${SCENARIOS.join(', ')}`);
const want = (scenario: string): boolean => values.only === undefined || values.only === scenario;
const SECONDS = Number(values.seconds);
const CONC = Number(values.concurrency);
const N_ADAPTERS = Number(values.adapters);
const MAX_REQUESTS = 2000; // hard bound per scenario
const PROM_LAG_PRECISION_S = 0.01;
const rng = new Rng(7);
const cfg = parseModelConfig(JSON.parse(readFileSync(join(values.model!, 'config.json'), 'utf8')));
const modelName = values.model!.split('/').filter(Boolean).at(-1)!;

function form(name: string, seed: number): FormData {
  const f = buildAdapter(cfg, { rank: 8, seed, targets: ['q_proj', 'v_proj', 'o_proj'] });
  const fd = new FormData();
  fd.append('name', name);
  fd.append('replace', 'true');
  fd.append('adapter_config.json', new Blob([JSON.stringify(f.config)]), 'adapter_config.json');
  fd.append('adapter_model.safetensors', new Blob([encodeSafetensors(f.tensors) as Uint8Array<ArrayBuffer>]), 'adapter_model.safetensors');
  return fd;
}

const rows: Record<string, string | number>[] = [];
const failures: string[] = [];
const server = values.only === 'attack' || values.only === 'finetune' ? null : await startServer(values.model!, ['--max-queue', '512']);
if (server) try {
  for (let i = 0; i < N_ADAPTERS; i++) {
    const r = await fetch(`${server.url}/v1/adapters`, { method: 'POST', body: form(`tenant-${i}`, i) });
    if (r.status !== 201) throw new Error(`upload failed: ${r.status} ${await r.text()}`);
  }
  const pick = zipf(N_ADAPTERS, 1.0, () => rng.next());
  const model = (): string => (rng.next() < 0.1 ? modelName : `tenant-${pick()}`);
  const body = () => ({ model: model(), prompt: 'Once upon a time', max_tokens: 48, temperature: 0.8, seed: Math.floor(rng.next() * 1e6) });

  // streaming clients: CONC loops until the deadline or the request bound
  const streamLoad = async (deadline: number, extra?: (i: number) => Promise<StreamStats | null>): Promise<StreamStats[]> => {
    const out: StreamStats[] = [];
    await Promise.all(Array.from({ length: CONC }, async (_, c) => {
      while (performance.now() < deadline && out.length < MAX_REQUESTS) {
        const special = extra ? await extra(c) : null;
        out.push(special ?? await streamCompletion(server.url, body()));
      }
    }));
    return out;
  };

  let steady: StreamStats[] = [], churned: StreamStats[] = [], disc: StreamStats[] = [];
  let expected404 = 0, leaked = 0;
  let t0 = performance.now();
  // 1. steady
  if (want('steady')) {
  const cannon = autocannon({
    url: server.url, connections: 4, amount: 300, timeout: 60,
    requests: [{ method: 'POST', path: '/v1/completions', headers: { 'content-type': 'application/json' }, setupRequest: (req) => ({ ...req, body: JSON.stringify({ ...body(), max_tokens: 16 }) }) }],
  });
  const [steadyOut, cannonResult] = await Promise.all([streamLoad(t0 + SECONDS * 1000), cannon]);
  steady = steadyOut;
  rows.push(latencyRow('steady (zipf over adapters)', steady, performance.now() - t0));
  const non2xx = cannonResult.non2xx + cannonResult.errors;
  printTable('autocannon, non-streamed completions (16 tokens) alongside the streams', [{ requests: cannonResult.requests.total, req_s: cannonResult.requests.average, latency_p50_ms: cannonResult.latency.p50, latency_p99_ms: cannonResult.latency.p99, non_2xx_or_errors: non2xx }]);
  if (non2xx) failures.push(`autocannon saw ${non2xx} non-2xx responses or errors`);
  }

  // 2. churn: replace, delete and re-upload adapters while traffic flows
  if (want('churn')) {
  t0 = performance.now();
  let churnOps = 0;
  const churn = (async () => {
    for (let k = 0; churnOps < 60 && performance.now() < t0 + SECONDS * 1000; k++) {
      const name = `tenant-${k % N_ADAPTERS}`;
      if (k % 3 === 2) await fetch(`${server.url}/v1/adapters/${name}`, { method: 'DELETE' });
      const r = await fetch(`${server.url}/v1/adapters`, { method: 'POST', body: form(name, 1000 + k) });
      if (r.status >= 500) failures.push(`churn upload got ${r.status}`);
      churnOps++;
      await new Promise((res) => setTimeout(res, 100));
    }
  })();
  churned = await streamLoad(t0 + SECONDS * 1000);
  await churn;
  const churnRow = latencyRow(`churn (${churnOps} replace/delete ops)`, churned, performance.now() - t0);
  rows.push(churnRow);
  expected404 = churned.filter((r) => r.status === 404).length; // requests racing a delete
  if (churned.some((r) => r.status >= 500)) failures.push('churn: 5xx responses');
  }

  // 3. disconnects: a third of the requests drop their stream after 3 tokens
  if (want('disconnects')) {
  t0 = performance.now();
  let dropped = 0;
  disc = await streamLoad(t0 + SECONDS * 1000, async () => {
    if (rng.next() < 0.33) { dropped++; await streamCompletion(server.url, { ...body(), max_tokens: 400, ignore_eos: true }, { abortAfterTokens: 3 }); }
    return null;
  });
  rows.push(latencyRow(`disconnects (${dropped} dropped)`, disc, performance.now() - t0));
  leaked = -1;
  for (let i = 0; i < 100; i++) {
    const h = await (await fetch(`${server.url}/health`)).json() as { running: number; waiting: number };
    leaked = h.running + h.waiting;
    if (leaked === 0) break;
    await new Promise((res) => setTimeout(res, 50));
  }
  if (leaked !== 0) failures.push(`${leaked} sequences still running after the disconnect scenario`);
  }

  printTable('load tests (streaming clients)', rows);
  const errorMessages = [...new Set([...steady, ...churned, ...disc].filter((r) => !r.ok).map((r) => `${r.status}: ${(r.error ?? '').slice(0, 160)}`))];
  if (errorMessages.length) console.log(`errors seen:\n  ${errorMessages.join('\n  ')}`);
  // prom-client's p99 is of whole 10 ms timer intervals (eventLoopMonitoringPrecision): the lag is the excess
  const lag = Math.max(0, (await metricValue(server.url, 'loraserve_nodejs_eventloop_lag_p99_seconds')) - PROM_LAG_PRECISION_S);
  printTable('server', [{ event_loop_lag_p99_ms: lag * 1000, churn_404s_expected: expected404, leaked_sequences: leaked }]);
  for (const r of [...steady, ...disc]) if (!r.ok) failures.push(`stream failed: ${r.status} ${r.error ?? ''}`.slice(0, 200));
  const dir = fileURLToPath(new URL('./results/', import.meta.url));
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'latest.json'), JSON.stringify({ date: new Date().toISOString(), model: modelName, rows, errorMessages, eventLoopLagP99Ms: lag * 1000, failures }, null, 2));
} finally {
  await server.stop();
}
if (want('finetune')) failures.push(...(await runFineTune({ model: values.model!, seconds: SECONDS, concurrency: CONC })).failures.map((f) => `finetune: ${f}`));
if (want('attack')) failures.push(...(await runAttack({ model: values.model!, seconds: SECONDS })).failures.map((f) => `attack: ${f}`));
if (failures.length) {
  console.error(`\nFAILED:\n${[...new Set(failures)].slice(0, 20).join('\n')}`);
  process.exit(1);
}
console.log('\nload tests passed');
