// node --import tsx load-tests/memory-churn.ts [--seconds N] [--model DIR] [--mode reload|churn|both]
//                                             [--rank R] [--clients N] [--adapters N]
// Memory under adapter reload churn: the server's RSS must stay within a stated bound.
//   reload  --host-cache-mb 1 and a rank-R adapter on all seven targets that does not fit in it,
//           so every request reads it back from disk; CLIENTS clients loop on completions for it
//           (with --adapters N, client c uses adapter c mod N)
//   churn   --host-cache-mb 1; upload / replace / delete three adapters in a loop, with one client
//           requesting them
// The server's RSS (/proc/<pid>/status VmRSS) is sampled every 500 ms. Prints peak and final RSS
// and the reloads (loraserve_adapter_host_cache_loads_total); JSON goes to
// load-tests/results/memory-churn.json. Exits non-zero on errors or when a scenario's peak RSS
// exceeds the stated bound:
//   peak RSS ≤ RSS once warm (adapters uploaded, 4 requests served)
//              + BOUND_SLACK_MB + (SPARE_FACTOR + HELD_FACTOR) × the adapter's file size
// i.e. per reading thread the warm spare and the buffer being touched (warm-buffers.ts: ≤ 2 files'
// worth), the adapters held outside the 1 MB cache for the clients' sequences (host-cache.ts: ≤ 2
// here, one per client), and V8 and allocator slack (garbage awaiting a GC: V8 collects once
// external memory grows by ~64 MB). Default model: the synthetic 110M Llama
// (bench/bench-models.ts), where a rank-64 adapter on all targets is ~43 MB; there, 60 s went
// from warm + 3.7 GB (reload) and + 2.1 GB (churn), still growing, to + 60 and + 98 MB.
// Bounded in time; traffic to 127.0.0.1 only.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { buildAdapter } from '../scripts/make-test-adapters.ts';
import { parseModelConfig } from '../src/runtime/model-config.ts';
import { encodeSafetensors } from '../src/runtime/safetensors.ts';
import { llama110mDir } from '../bench/bench-models.ts';
import { metricValue, printTable, startServer, streamCompletion } from './harness.ts';

const MB = 1024 * 1024;
export const BOUND_SLACK_MB = 160;
export const SPARE_FACTOR = 2; // warm-buffers.ts: spare + outstanding ≤ 2 × the largest file read
export const HELD_FACTOR = 2;  // host-cache.ts: adapters held outside the LRU for 2 clients' sequences
const SAMPLE_MS = 500;
let live: { proc: { kill(signal: NodeJS.Signals): boolean } } | null = null; // the server of the scenario running

export interface ScenarioResult {
  scenario: string;
  seconds: number;
  adapter_mb: number;
  warm_rss_mb: number;
  peak_rss_mb: number;
  final_rss_mb: number;
  bound_mb: number;
  reloads: number;
  requests: number;
  errors: number;
  ops: number;
  samples_mb: number[];
}

export function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

interface Files { config: Record<string, unknown>; weights: Uint8Array }

function adapterForm(name: string, f: Files, alpha: number): FormData {
  const fd = new FormData();
  fd.append('name', name);
  fd.append('replace', 'true');
  // a new lora_alpha is a new version (the version hashes both files) without rebuilding the weights
  fd.append('adapter_config.json', new Blob([JSON.stringify({ ...f.config, lora_alpha: alpha })]), 'adapter_config.json');
  fd.append('adapter_model.safetensors', new Blob([f.weights as Uint8Array<ArrayBuffer>]), 'adapter_model.safetensors');
  return fd;
}

async function uploadOk(url: string, fd: FormData): Promise<number> {
  const r = await fetch(`${url}/v1/adapters`, { method: 'POST', body: fd, signal: AbortSignal.timeout(120_000) });
  await r.arrayBuffer();
  return r.status;
}

export interface RunOptions {
  model: string;
  seconds: number;
  mode: 'reload' | 'churn';
  rank?: number;
  clients?: number;
  adapters?: number;  // reload: distinct adapters, the clients spread over them (default 1)
  slackMb?: number;   // the bound's slack (default BOUND_SLACK_MB)
  maxTokens?: number;
  log?: (s: string) => void;
}

// One scenario against a fresh server (child process). Returns the RSS samples and the bound.
export async function runScenario(opts: RunOptions): Promise<ScenarioResult> {
  const rank = opts.rank ?? 64;
  const clients = opts.clients ?? 2;
  const maxTokens = opts.maxTokens ?? 2;
  const log = opts.log ?? (() => undefined);
  const cfg = parseModelConfig(JSON.parse(readFileSync(join(opts.model, 'config.json'), 'utf8')));
  const built = buildAdapter(cfg, { rank, seed: 64 });
  const files: Files = { config: built.config, weights: encodeSafetensors(built.tensors) };
  const adapterMb = files.weights.byteLength / MB;
  const server = await startServer(opts.model, ['--host-cache-mb', '1', '--max-batch', '8', '--max-lora-rank', String(Math.max(64, rank))]);
  live = server;
  const pid = server.proc.pid!;
  let requests = 0;
  let errors = 0;
  let ops = 0;
  try {
    const body = (model: string) => ({ model, prompt: 'Once upon a time', max_tokens: maxTokens, temperature: 0, ignore_eos: true });
    const names = opts.mode === 'reload' ? Array.from({ length: opts.adapters ?? 1 }, (_, i) => `big-${i}`) : ['churn-0', 'churn-1', 'churn-2'];
    for (const [i, n] of names.entries()) {
      const s = await uploadOk(server.url, adapterForm(n, files, rank + i));
      if (s !== 201 && s !== 200) throw new Error(`upload of ${n} failed: ${s}`);
    }
    // warm: the engine's code, the arenas, the first reload
    for (let i = 0; i < 4; i++) await streamCompletion(server.url, body(names[i % names.length]));
    const warm = rssMb(pid);
    const loads0 = await metricValue(server.url, 'loraserve_adapter_host_cache_loads_total');
    const samples: number[] = [];
    const sampler = setInterval(() => { try { samples.push(rssMb(pid)); } catch { /* exited */ } }, SAMPLE_MS);
    const t0 = performance.now();
    const deadline = t0 + opts.seconds * 1000;
    let lastLog = t0;
    const progress = (): void => {
      if (performance.now() - lastLog < 5000) return;
      lastLog = performance.now();
      log(`  ${opts.mode} ${((lastLog - t0) / 1000).toFixed(0)} s: rss ${samples.at(-1)?.toFixed(0)} MB, peak ${Math.max(...samples).toFixed(0)} MB, requests ${requests}, ops ${ops}`);
    };
    const client = async (c: number): Promise<void> => {
      for (let k = 0; performance.now() < deadline; k++) {
        const name = opts.mode === 'reload' ? names[c % names.length] : names[(k + c) % names.length];
        const r = await streamCompletion(server.url, body(name), { timeoutMs: 60_000 });
        requests++;
        // in churn, a request may race a delete: 404 is expected there
        if (!r.ok && !(opts.mode === 'churn' && r.status === 404)) errors++;
        progress();
      }
    };
    const churn = async (): Promise<void> => {
      for (let k = 0; performance.now() < deadline; k++) {
        const name = names[k % names.length];
        if (k % 3 === 2) { const r = await fetch(`${server.url}/v1/adapters/${name}`, { method: 'DELETE', signal: AbortSignal.timeout(120_000) }); await r.arrayBuffer(); }
        const s = await uploadOk(server.url, adapterForm(name, files, rank + 1 + k));
        if (s >= 500) errors++;
        ops++;
        progress();
      }
    };
    await Promise.all(opts.mode === 'reload'
      ? Array.from({ length: clients }, (_, c) => client(c))
      : [churn(), client(0)]);
    clearInterval(sampler);
    samples.push(rssMb(pid));
    const reloads = (await metricValue(server.url, 'loraserve_adapter_host_cache_loads_total')) - loads0;
    const bound = warm + (opts.slackMb ?? BOUND_SLACK_MB) + (SPARE_FACTOR + HELD_FACTOR) * adapterMb;
    return {
      scenario: opts.mode, seconds: opts.seconds, adapter_mb: adapterMb, warm_rss_mb: warm,
      peak_rss_mb: Math.max(warm, ...samples), final_rss_mb: samples.at(-1)!, bound_mb: bound,
      reloads, requests, errors, ops, samples_mb: samples.map((x) => Math.round(x)),
    };
  } finally {
    await server.stop();
    live = null;
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    model: { type: 'string' },
    seconds: { type: 'string', default: '60' },
    mode: { type: 'string', default: 'both' },
    rank: { type: 'string', default: '64' },
    clients: { type: 'string', default: '2' },
    adapters: { type: 'string', default: '1' },
  } });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => { live?.proc.kill('SIGKILL'); process.exit(130); });
  const model = values.model ?? llama110mDir();
  const modes = values.mode === 'both' ? ['reload', 'churn'] as const : [values.mode as 'reload' | 'churn'];
  const results: ScenarioResult[] = [];
  for (const mode of modes) {
    console.log(`\n${mode}: ${values.seconds} s on ${model} …`);
    results.push(await runScenario({ model, seconds: Number(values.seconds), mode, rank: Number(values.rank), clients: Number(values.clients), adapters: Number(values.adapters), log: console.log }));
  }
  printTable('server RSS under adapter reload churn (--host-cache-mb 1)', results.map(({ samples_mb: _s, ...r }) => ({ ...r, within_bound: r.peak_rss_mb <= r.bound_mb ? 'yes' : 'NO' })));
  const dir = fileURLToPath(new URL('./results/', import.meta.url));
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'memory-churn.json'), JSON.stringify({ date: new Date().toISOString(), model, bound: { slackMb: BOUND_SLACK_MB, spareFactor: SPARE_FACTOR, heldFactor: HELD_FACTOR }, results }, null, 2));
  const over = results.filter((r) => r.peak_rss_mb > r.bound_mb || r.errors > 0);
  if (over.length) {
    for (const r of over) console.error(`FAILED ${r.scenario}: peak RSS ${r.peak_rss_mb.toFixed(0)} MB (bound ${r.bound_mb.toFixed(0)} MB), ${r.errors} errors`);
    process.exit(1);
  }
  console.log('\nmemory within bounds');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await main();
