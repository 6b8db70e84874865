// Serving benchmark in the form of vLLM's `vllm bench serve --dataset-name random`, over HTTP.
//
//   npm run bench -- --only serving [--quick]     issue 10's suite (serving-suite.ts): starts its own
//                                                  server on the synthetic 110M model
//   node --import tsx bench/serving-bench.ts --url http://127.0.0.1:8080 [--model NAME]
//        [--adapters a,b,c] [--input-len 512] [--output-len 128] [--num-prompts N]
//        [--request-rate inf|R] [--max-concurrency C] [--popularity uniform|zipf|round-robin]
//        [--seed S] [--vocab V] [--model-dir DIR] [--api-key KEY] [--no-logprobs] [--save FILE]
//
// What it does, as vLLM does it:
//   - random dataset: each request has its own prompt of exactly input-len token ids (sent as the
//     `prompt` array), drawn with a seeded RNG from the vocabulary minus the special ids;
//     max_tokens = output-len, ignore_eos, temperature 0, streamed with include_usage.
//   - arrivals: a Poisson process at request-rate req/s (exponential gaps, seeded; the first request
//     at t = 0), or all at once (inf); max-concurrency caps requests in flight (a semaphore).
//   - metrics: successful requests, duration, request / output / total token throughput, mean,
//     median and p99 (numpy's linear interpolation) of TTFT, TPOT = (latency − TTFT)/(tokens − 1)
//     (requests with more than one token) and ITL (every gap between consecutive token chunks),
//     and the largest ITL. Token counts come from the usage chunk.
// Two differences from vLLM's client, both about counting token chunks:
//   - `logprobs: 0` is sent (unless --no-logprobs): a server sends no chunk for a token whose text
//     is empty (an incomplete UTF-8 sequence, or an id the tokenizer cannot spell, which is most of
//     the synthetic 110M model's 32000 ids), and asking for the chosen token's logprob makes every
//     token a chunk, so TTFT and ITL are per token.
//   - the closing chunk that carries only finish_reason (empty text, no logprobs) is not a token,
//     so it adds no ~0 ms gap to ITL (vLLM counts it when a server sends it separately).
// It also reads the server's loraserve_batch_size and loraserve_step_duration_seconds histograms
// from /metrics before and after each case (skipped when /metrics does not answer 200).
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { Rng } from '../src/runtime/random.ts';
import { sseData, zipf } from '../load-tests/harness.ts';
import { printTable } from './stats.ts';
import type { ModelConfig } from '../src/runtime/model-config.ts';
import { parseModelConfig } from '../src/runtime/model-config.ts';
import { llama110mDir } from './bench-models.ts';
import { buildAdapter } from '../scripts/make-test-adapters.ts';
import { encodeSafetensors } from '../src/runtime/safetensors.ts';

export type Popularity = 'uniform' | 'zipf' | 'round-robin';

export interface ServingOptions {
  url: string;
  model: string;                 // the base model's id
  adapters: string[];            // when non-empty, every request goes to one of these
  popularity: Popularity;
  inputLen: number;
  outputLen: number;
  numPrompts: number;
  requestRate: number;           // req/s; Infinity: all at once
  maxConcurrency: number | null;
  seed: number;
  vocab: number;
  specialIds: number[];          // never drawn into prompts
  apiKey?: string;
  logprobs: boolean;             // send logprobs: 0 so that every token is a chunk
  timeoutMs: number;
  label?: string;
}

export interface RequestResult {
  ok: boolean;
  status: number;
  error?: string;
  model: string;
  promptTokens: number;
  outputTokens: number;          // usage.completion_tokens (else the chunks counted)
  chunks: number;                // token chunks seen
  ttftMs: number;
  latencyMs: number;             // to the last token chunk
  itlMs: number[];
  tokenAt: number[];             // performance.now() of each token chunk (this process's clock)
}

interface Hist { sum: number; count: number }
export interface ServerSnapshot { batch: Hist; steps: Record<'prefill' | 'decode' | 'mixed', Hist>; mergedBuilds: number; loraArenaBytes: number }

export interface ServingMetrics {
  label: string;
  model: string;
  adapters: number;
  input_len: number;
  output_len: number;
  num_prompts: number;
  request_rate: number | 'inf';
  max_concurrency: number | null;
  successful: number;
  failed: number;
  errors: string[];
  duration_s: number;
  total_input_tokens: number;
  total_output_tokens: number;
  request_throughput: number;
  output_throughput: number;
  total_token_throughput: number;
  mean_ttft_ms: number; median_ttft_ms: number; p99_ttft_ms: number;
  mean_tpot_ms: number; median_tpot_ms: number; p99_tpot_ms: number;
  mean_itl_ms: number; median_itl_ms: number; p99_itl_ms: number; max_itl_ms: number;
  chunks_per_token: number;      // < 1: the server merged or skipped token chunks
  server: null | {
    mean_decode_batch: number;   // loraserve_batch_size sum/count over the case (pure decode steps)
    decode_steps: number; mixed_steps: number; prefill_steps: number;
    mean_decode_step_ms: number;
    decode_tok_s: number;        // batch sum / decode step time: tokens/s of the decode steps
    step_s: number;              // the engine's time in steps of every kind over the case (wall minus it: between steps)
    merged_builds: number;       // merged-weight copies built meanwhile (a build blocks the engine)
  };
}

// ---- statistics as numpy computes them (linear interpolation between closest ranks)
export function npPercentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = Float64Array.from(xs).sort();
  const h = (s.length - 1) * (p / 100);
  const lo = Math.floor(h);
  const hi = Math.min(s.length - 1, lo + 1);
  return s[lo] + (h - lo) * (s[hi] - s[lo]);
}
const mean = (xs: number[]): number => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
const max = (xs: number[]): number => xs.reduce((a, b) => Math.max(a, b), xs.length ? -Infinity : NaN);

// ---- the random dataset
export function randomPrompts(n: number, len: number, vocab: number, special: number[], seed: number): number[][] {
  const rng = new Rng(seed);
  const skip = new Set(special.filter((id) => id >= 0 && id < vocab));
  const allowed: number[] = [];
  for (let id = 0; id < vocab; id++) if (!skip.has(id)) allowed.push(id);
  if (allowed.length === 0) throw new Error('no token ids left to draw from');
  return Array.from({ length: n }, () => Array.from({ length: len }, () => allowed[rng.nextU32() % allowed.length]));
}

const authHeaders = (key?: string): Record<string, string> => (key ? { authorization: `Bearer ${key}` } : {});

// ---- one streamed completion, timed as vLLM's client does (st just before the POST)
export async function streamRequest(url: string, body: Record<string, unknown>, opts: { apiKey?: string; timeoutMs: number }): Promise<RequestResult> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), opts.timeoutMs);
  const model = String(body.model);
  const promptLen = Array.isArray(body.prompt) ? body.prompt.length : 0;
  const times: number[] = [];
  let usage: { prompt_tokens?: number; completion_tokens?: number } | null = null;
  const fail = (status: number, error: string): RequestResult => ({ ok: false, status, error, model, promptTokens: promptLen, outputTokens: times.length, chunks: times.length, ttftMs: NaN, latencyMs: NaN, itlMs: [], tokenAt: [] });
  const st = performance.now();
  try {
    const r = await fetch(`${url}/v1/completions`, { method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json', ...authHeaders(opts.apiKey) }, body: JSON.stringify(body) });
    if (!r.ok || !r.body) return fail(r.status, (await r.text()).slice(0, 300));
    let error: string | undefined;
    for await (const data of sseData(r.body)) {
      if (data === '[DONE]') continue;
      const now = performance.now();
      const j = JSON.parse(data) as { error?: { message?: string }; choices?: { text?: string; logprobs?: unknown; finish_reason?: string | null }[]; usage?: typeof usage };
      if (j.error) { error = j.error.message ?? 'error'; continue; }
      const c = j.choices?.[0];
      if (c) {
        // a token chunk: text, or a token's logprobs; a bare finish_reason chunk is not one
        if (c.text || c.logprobs || !c.finish_reason) times.push(now);
      } else if (j.usage) usage = j.usage;
    }
    if (error !== undefined) return fail(r.status, `in-band: ${error}`.slice(0, 300));
    if (times.length === 0) return fail(r.status, 'no token chunks');
    const u = usage as { prompt_tokens?: number; completion_tokens?: number } | null;
    return {
      ok: true, status: r.status, model,
      promptTokens: u?.prompt_tokens ?? promptLen,
      outputTokens: u?.completion_tokens ?? times.length,
      chunks: times.length,
      ttftMs: times[0] - st,
      latencyMs: times[times.length - 1] - st,
      itlMs: times.slice(1).map((t, k) => t - times[k]),
      tokenAt: times,
    };
  } catch (e) {
    return fail(0, ac.signal.aborted ? `timed out after ${opts.timeoutMs} ms` : (e as Error).message);
  } finally {
    clearTimeout(timer);
  }
}

// Decode throughput while every one of these streams was decoding: the token chunks all of them
// produced between the last stream's first token and the first stream's last, over that window.
// NaN when the window is empty (a stream ended before another began).
export function allRunningDecodeRate(rs: RequestResult[]): { tokS: number; windowS: number } {
  const ok = rs.filter((r) => r.ok && r.tokenAt.length > 0);
  if (ok.length === 0 || ok.length < rs.length) return { tokS: NaN, windowS: 0 };
  const from = Math.max(...ok.map((r) => r.tokenAt[0]));
  const to = Math.min(...ok.map((r) => r.tokenAt.at(-1)!));
  if (!(to > from)) return { tokS: NaN, windowS: 0 };
  // a token at `from` ends a gap that began before the window: count those after it, up to `to`
  const tokens = ok.reduce((n, r) => n + r.tokenAt.filter((t) => t > from && t <= to).length, 0);
  return { tokS: tokens / ((to - from) / 1000), windowS: (to - from) / 1000 };
}

// ---- the server's histograms from /metrics (Prometheus text), summed over label sets
export async function serverSnapshot(url: string, apiKey?: string): Promise<ServerSnapshot | null> {
  let text: string;
  try {
    const r = await fetch(`${url}/metrics`, { headers: authHeaders(apiKey), signal: AbortSignal.timeout(10_000) });
    if (!r.ok) return null;
    text = await r.text();
  } catch {
    return null;
  }
  const sum = (name: string, labels: Record<string, string> = {}): number => {
    let total = 0;
    let found = false;
    for (const line of text.split('\n')) {
      if (!line.startsWith(name)) continue;
      const rest = line.slice(name.length);
      if (!(rest.startsWith(' ') || rest.startsWith('{'))) continue;
      const labelText = rest.startsWith('{') ? rest.slice(1, rest.indexOf('}')) : '';
      if (!Object.entries(labels).every(([k, v]) => labelText.includes(`${k}="${v}"`))) continue;
      total += Number(line.trim().split(/\s+/).at(-1));
      found = true;
    }
    return found ? total : 0;
  };
  if (!text.includes('loraserve_batch_size')) return null;
  const step = (kind: string): Hist => ({ sum: sum('loraserve_step_duration_seconds_sum', { kind }), count: sum('loraserve_step_duration_seconds_count', { kind }) });
  return {
    batch: { sum: sum('loraserve_batch_size_sum'), count: sum('loraserve_batch_size_count') },
    steps: { prefill: step('prefill'), decode: step('decode'), mixed: step('mixed') },
    mergedBuilds: sum('loraserve_merged_cache_builds_total'),
    loraArenaBytes: text.includes('loraserve_lora_arena_bytes') ? sum('loraserve_lora_arena_bytes') : NaN,
  };
}

function snapshotDelta(a: ServerSnapshot | null, b: ServerSnapshot | null): ServingMetrics['server'] {
  if (!a || !b) return null;
  const d = (x: Hist, y: Hist): Hist => ({ sum: y.sum - x.sum, count: y.count - x.count });
  const batch = d(a.batch, b.batch);
  const dec = d(a.steps.decode, b.steps.decode);
  return {
    mean_decode_batch: batch.count ? batch.sum / batch.count : NaN,
    decode_steps: dec.count,
    mixed_steps: b.steps.mixed.count - a.steps.mixed.count,
    prefill_steps: b.steps.prefill.count - a.steps.prefill.count,
    mean_decode_step_ms: dec.count ? (dec.sum * 1000) / dec.count : NaN,
    decode_tok_s: dec.sum > 0 ? batch.sum / dec.sum : NaN,
    step_s: dec.sum + d(a.steps.prefill, b.steps.prefill).sum + d(a.steps.mixed, b.steps.mixed).sum,
    merged_builds: b.mergedBuilds - a.mergedBuilds,
  };
}

// ---- one benchmark run (one "case")
export async function runServing(o: ServingOptions): Promise<{ metrics: ServingMetrics; requests: RequestResult[] }> {
  const prompts = randomPrompts(o.numPrompts, o.inputLen, o.vocab, o.specialIds, o.seed);
  const rng = new Rng(o.seed + 0x5eed);
  const pickZipf = o.adapters.length ? zipf(o.adapters.length, 1.0, () => rng.next()) : () => 0;
  const modelFor = (i: number): string => {
    if (o.adapters.length === 0) return o.model;
    if (o.popularity === 'round-robin') return o.adapters[i % o.adapters.length];
    if (o.popularity === 'zipf') return o.adapters[pickZipf()];
    return o.adapters[rng.nextU32() % o.adapters.length];
  };
  const models = prompts.map((_, i) => modelFor(i));
  // arrival times (s after the start): exponential gaps, the first request at once (vLLM's order)
  const arrivals: number[] = [];
  let t = 0;
  for (let i = 0; i < o.numPrompts; i++) {
    arrivals.push(t);
    if (Number.isFinite(o.requestRate)) t += -Math.log(1 - rng.next()) / o.requestRate;
  }
  // max-concurrency: a semaphore
  let inFlight = 0;
  const waiters: (() => void)[] = [];
  const acquire = async (): Promise<void> => {
    if (o.maxConcurrency === null || inFlight < o.maxConcurrency) { inFlight++; return; }
    await new Promise<void>((res) => waiters.push(res));
  };
  const release = (): void => { const w = waiters.shift(); if (w) w(); else inFlight--; };

  const before = await serverSnapshot(o.url, o.apiKey);
  const start = performance.now();
  const results = await Promise.all(prompts.map(async (prompt, i) => {
    const wait = start + arrivals[i] * 1000 - performance.now();
    if (wait > 0) await new Promise((res) => setTimeout(res, wait));
    await acquire();
    try {
      const body: Record<string, unknown> = {
        model: models[i], prompt, max_tokens: o.outputLen, temperature: 0, ignore_eos: true,
        stream: true, stream_options: { include_usage: true },
      };
      if (o.logprobs) body.logprobs = 0;
      return await streamRequest(o.url, body, { apiKey: o.apiKey, timeoutMs: o.timeoutMs });
    } finally {
      release();
    }
  }));
  const durationS = (performance.now() - start) / 1000;
  const after = await serverSnapshot(o.url, o.apiKey);

  const ok = results.filter((r) => r.ok);
  const inTok = ok.reduce((a, r) => a + r.promptTokens, 0);
  const outTok = ok.reduce((a, r) => a + r.outputTokens, 0);
  const ttft = ok.map((r) => r.ttftMs);
  const tpot = ok.filter((r) => r.outputTokens > 1).map((r) => (r.latencyMs - r.ttftMs) / (r.outputTokens - 1));
  const itl = ok.flatMap((r) => r.itlMs);
  const metrics: ServingMetrics = {
    label: o.label ?? (o.adapters.length ? `${new Set(models).size} adapter(s)` : 'base'),
    model: o.model, adapters: new Set(models.filter((m) => m !== o.model)).size,
    input_len: o.inputLen, output_len: o.outputLen, num_prompts: o.numPrompts,
    request_rate: Number.isFinite(o.requestRate) ? o.requestRate : 'inf', max_concurrency: o.maxConcurrency,
    successful: ok.length, failed: results.length - ok.length,
    errors: [...new Set(results.filter((r) => !r.ok).map((r) => `${r.status}: ${r.error ?? ''}`))].slice(0, 5),
    duration_s: durationS,
    total_input_tokens: inTok, total_output_tokens: outTok,
    request_throughput: ok.length / durationS,
    output_throughput: outTok / durationS,
    total_token_throughput: (inTok + outTok) / durationS,
    mean_ttft_ms: mean(ttft), median_ttft_ms: npPercentile(ttft, 50), p99_ttft_ms: npPercentile(ttft, 99),
    mean_tpot_ms: mean(tpot), median_tpot_ms: npPercentile(tpot, 50), p99_tpot_ms: npPercentile(tpot, 99),
    mean_itl_ms: mean(itl), median_itl_ms: npPercentile(itl, 50), p99_itl_ms: npPercentile(itl, 99), max_itl_ms: max(itl),
    chunks_per_token: outTok ? ok.reduce((a, r) => a + r.chunks, 0) / outTok : NaN,
    server: snapshotDelta(before, after),
  };
  return { metrics, requests: results };
}

export function tableRow(m: ServingMetrics, name = m.label): Record<string, string | number> {
  return {
    case: name, ok: `${m.successful}/${m.num_prompts}`, dur_s: m.duration_s,
    req_s: m.request_throughput, out_tok_s: m.output_throughput, tot_tok_s: m.total_token_throughput,
    ttft_mean: m.mean_ttft_ms, ttft_med: m.median_ttft_ms, ttft_p99: m.p99_ttft_ms,
    tpot_mean: m.mean_tpot_ms, tpot_med: m.median_tpot_ms, tpot_p99: m.p99_tpot_ms,
    itl_mean: m.mean_itl_ms, itl_med: m.median_itl_ms, itl_p99: m.p99_itl_ms, itl_max: m.max_itl_ms,
    mean_batch: m.server?.mean_decode_batch ?? '-',
    merges: m.server?.merged_builds ?? '-',
  };
}

// vLLM's printed block
export function printVllmStyle(m: ServingMetrics): void {
  const line = (k: string, v: string | number): void => console.log(`${k.padEnd(40)} ${typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(2)) : v}`);
  console.log(`${'='.repeat(12)} Serving Benchmark Result ${'='.repeat(12)}`);
  line('Successful requests:', m.successful);
  if (m.failed) line('Failed requests:', m.failed);
  line('Maximum request concurrency:', m.max_concurrency ?? 'none');
  line('Request rate (req/s):', m.request_rate);
  line('Benchmark duration (s):', m.duration_s);
  line('Total input tokens:', m.total_input_tokens);
  line('Total generated tokens:', m.total_output_tokens);
  line('Request throughput (req/s):', m.request_throughput);
  line('Output token throughput (tok/s):', m.output_throughput);
  line('Total Token throughput (tok/s):', m.total_token_throughput);
  const section = (t: string): void => { const pad = 50 - t.length; console.log(`${'-'.repeat(Math.floor(pad / 2))}${t}${'-'.repeat(Math.ceil(pad / 2))}`); };
  section('Time to First Token');
  line('Mean TTFT (ms):', m.mean_ttft_ms); line('Median TTFT (ms):', m.median_ttft_ms); line('P99 TTFT (ms):', m.p99_ttft_ms);
  section('Time per Output Token (excl. 1st token)');
  line('Mean TPOT (ms):', m.mean_tpot_ms); line('Median TPOT (ms):', m.median_tpot_ms); line('P99 TPOT (ms):', m.p99_tpot_ms);
  section('Inter-token Latency');
  line('Mean ITL (ms):', m.mean_itl_ms); line('Median ITL (ms):', m.median_itl_ms); line('P99 ITL (ms):', m.p99_itl_ms); line('Max ITL (ms):', m.max_itl_ms);
  if (m.server) {
    section('Server (/metrics)');
    line('Mean decode batch:', m.server.mean_decode_batch);
    line('Decode / mixed / prefill steps:', `${m.server.decode_steps} / ${m.server.mixed_steps} / ${m.server.prefill_steps}`);
    line('Mean decode step (ms):', m.server.mean_decode_step_ms);
    line('Merged-weight builds:', m.server.merged_builds);
  }
  if (m.chunks_per_token < 0.999) console.log(`note: ${(m.chunks_per_token * 100).toFixed(1)}% of tokens arrived as their own chunk`);
  for (const e of m.errors) console.log(`error: ${e}`);
  console.log('='.repeat(50));
}

// Special ids of a local model: config.json's bos/eos/pad and tokenizer.json's special added tokens.
// The synthetic 110M model the serving-type benches load (generated on first use), as they need it:
// its directory, served name, config and the special token ids their random prompts avoid.
export function benchModel110m(): { dir: string; modelName: string; cfg: ModelConfig; special: number[] } {
  const dir = llama110mDir();
  const cfg = parseModelConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>);
  return { dir, modelName: 'llama-110m', cfg, special: specialIdsOf(dir) };
}

export function specialIdsOf(dir: string): number[] {
  const ids = new Set<number>();
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  for (const k of ['bos_token_id', 'eos_token_id', 'pad_token_id']) {
    for (const v of [cfg[k]].flat()) if (typeof v === 'number') ids.add(v);
  }
  const tokFile = join(dir, 'tokenizer.json');
  if (existsSync(tokFile)) {
    const tok = JSON.parse(readFileSync(tokFile, 'utf8')) as { added_tokens?: { id: number; special?: boolean }[] };
    for (const t of tok.added_tokens ?? []) if (t.special) ids.add(t.id);
  }
  return [...ids].sort((a, b) => a - b);
}

// A short request per target before measuring (vLLM sends one test prompt), so that no case pays
// for a first use (an adapter's first load, a graph's first run).
export async function warmUp(url: string, models: string[], vocab: number, special: number[], apiKey?: string): Promise<void> {
  const prompts = randomPrompts(models.length, 16, vocab, special, 999);
  const rs = await Promise.all(models.map((model, i) => streamRequest(url, { model, prompt: prompts[i], max_tokens: 2, temperature: 0, ignore_eos: true, stream: true, logprobs: 0 }, { apiKey, timeoutMs: 120_000 })));
  const bad = rs.find((r) => !r.ok);
  if (bad) throw new Error(`warm-up request for ${bad.model} failed: ${bad.status} ${bad.error}`);
}

// ---- standalone: against any URL
async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    url: { type: 'string' },
    model: { type: 'string' },
    adapters: { type: 'string' },
    'input-len': { type: 'string', default: '512' },
    'output-len': { type: 'string', default: '128' },
    'num-prompts': { type: 'string', default: '8' },
    'request-rate': { type: 'string', default: 'inf' },
    'max-concurrency': { type: 'string' },
    popularity: { type: 'string', default: 'uniform' },
    seed: { type: 'string', default: '0' },
    vocab: { type: 'string' },
    'model-dir': { type: 'string' },
    'api-key': { type: 'string', default: process.env.LORASERVE_API_KEY },
    'no-logprobs': { type: 'boolean', default: false },
    'timeout-s': { type: 'string', default: '600' },
    save: { type: 'string' },
  } });
  if (!values.url) throw new Error('--url is required (e.g. --url http://127.0.0.1:8080)');
  const url = values.url.replace(/\/+$/, '');
  const apiKey = values['api-key'];
  const int = (name: string, v: string | undefined, min = 1): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer ≥ ${min}, got ${v}`);
    return n;
  };
  const popularity = values.popularity as Popularity;
  if (!['uniform', 'zipf', 'round-robin'].includes(popularity)) throw new Error('--popularity must be uniform, zipf or round-robin');
  const rateText = values['request-rate']!;
  const requestRate = rateText === 'inf' ? Infinity : Number(rateText);
  if (!(requestRate > 0)) throw new Error('--request-rate must be inf or a positive number');

  const listed = await fetch(`${url}/v1/models`, { headers: authHeaders(apiKey) });
  if (!listed.ok) throw new Error(`GET /v1/models: ${listed.status} ${await listed.text()}`);
  const cards = ((await listed.json()) as { data: { id: string; parent?: string | null; max_model_len?: number }[] }).data;
  const model = values.model ?? cards.find((c) => !c.parent)?.id ?? cards[0]?.id;
  if (!model) throw new Error('the server lists no models; pass --model');
  const adapters = values.adapters ? values.adapters.split(',').map((s) => s.trim()).filter(Boolean) : [];
  const inputLen = int('input-len', values['input-len']);
  const outputLen = int('output-len', values['output-len']);
  const maxLen = cards.find((c) => c.id === model)?.max_model_len;
  if (maxLen && inputLen + outputLen > maxLen) throw new Error(`input-len + output-len = ${inputLen + outputLen} exceeds the model's max_model_len ${maxLen}`);

  // vocabulary: --vocab, else the local config.json, else loraserve's 400 for an out-of-range id,
  // else 512 for stories260K and 32000 otherwise (the 110M benchmark model)
  let vocab = values.vocab ? int('vocab', values.vocab) : NaN;
  let special = [0, 1, 2]; // Llama's <unk> <s> </s>
  if (values['model-dir']) {
    const cfg = JSON.parse(readFileSync(join(values['model-dir'], 'config.json'), 'utf8')) as { vocab_size?: number };
    if (Number.isNaN(vocab) && cfg.vocab_size) vocab = cfg.vocab_size;
    special = specialIdsOf(values['model-dir']);
  }
  if (Number.isNaN(vocab)) {
    const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...authHeaders(apiKey) }, body: JSON.stringify({ model, prompt: [2 ** 30], max_tokens: 1 }) }).catch(() => null);
    const m = r && r.status === 400 ? /outside \[0, (\d+)\)/.exec(await r.text()) : null;
    vocab = m ? Number(m[1]) : /stories/i.test(model) ? 512 : 32000;
  }
  const o: ServingOptions = {
    url, model, adapters, popularity, inputLen, outputLen,
    numPrompts: int('num-prompts', values['num-prompts']), requestRate,
    maxConcurrency: values['max-concurrency'] ? int('max-concurrency', values['max-concurrency']) : null,
    seed: int('seed', values.seed, 0), vocab, specialIds: special, apiKey,
    logprobs: !values['no-logprobs'], timeoutMs: int('timeout-s', values['timeout-s']) * 1000,
  };
  console.log(`${url}: model ${model}${adapters.length ? `, adapters ${adapters.join(',')} (${popularity})` : ''}, vocab ${vocab}, ${o.numPrompts} prompts of ${inputLen} → ${outputLen} tokens, rate ${rateText}, max concurrency ${o.maxConcurrency ?? 'none'}`);
  const { metrics } = await runServing(o);
  printVllmStyle(metrics);
  printTable(`serving benchmark, ${model}`, [tableRow(metrics)]);
  if (values.save) writeFileSync(values.save, JSON.stringify(metrics, null, 2));
  if (metrics.successful === 0) process.exitCode = 1;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e: unknown) => { console.error((e as Error).message); process.exit(1); });
}

// Uploads a synthetic adapter (make-test-adapters: all seven targets, alpha = 2·rank) to a server.
export async function uploadSyntheticAdapter(url: string, cfg: ModelConfig, name: string, rank: number, seed: number): Promise<void> {
  const f = buildAdapter(cfg, { rank, alpha: 2 * rank, seed });
  const fd = new FormData();
  fd.append('name', name);
  fd.append('adapter_config.json', new Blob([JSON.stringify(f.config)]), 'adapter_config.json');
  fd.append('adapter_model.safetensors', new Blob([encodeSafetensors(f.tensors) as Uint8Array<ArrayBuffer>]), 'adapter_model.safetensors');
  const r = await fetch(`${url}/v1/adapters`, { method: 'POST', body: fd });
  if (r.status !== 201) throw new Error(`upload of ${name} failed: ${r.status} ${await r.text()}`);
}
