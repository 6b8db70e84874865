// node --import tsx load-tests/adapter-admission.ts [--streams N] [--rounds N] [--flags="--quantize int4 ..."]
// When N requests on N freshly uploaded distinct adapters arrive at once, when does each start?
// Starts a server on the synthetic 110M model (bench/bench-models.ts; `npm run bench` makes it),
// uploads N rank-16 adapters, and sends N streaming completions of 16 → 48 tokens at once, ROUNDS
// times; prints each stream's first and last token, in seconds after the earliest first token.
// Bounded: N ≤ 64 requests a round, ROUNDS ≤ 5, each with a 300 s timeout; 127.0.0.1 only.
import { parseArgs } from 'node:util';
import { startServer } from './harness.ts';
import { runServing, benchModel110m, uploadSyntheticAdapter, warmUp } from '../bench/serving-bench.ts';

const { values } = parseArgs({ options: { streams: { type: 'string', default: '32' }, rounds: { type: 'string', default: '2' }, flags: { type: 'string', default: '' } } });
const streams = Math.min(64, Math.max(1, Number(values.streams)));
const rounds = Math.min(5, Math.max(1, Number(values.rounds)));
const { dir, cfg, special } = benchModel110m();
const server = await startServer(dir, ['--model-name', 'llama-110m', '--max-queue', '512', ...values.flags!.split(' ').filter(Boolean)]);
try {
  const names = Array.from({ length: streams }, (_, i) => `a${i}`);
  for (const [i, n] of names.entries()) await uploadSyntheticAdapter(server.url, cfg, n, 16, 1300 + i);
  await warmUp(server.url, ['llama-110m'], cfg.vocabSize, special);
  for (let round = 0; round < rounds; round++) {
    const { requests } = await runServing({ url: server.url, model: 'llama-110m', adapters: names, popularity: 'round-robin', inputLen: 16, outputLen: 48, numPrompts: streams, requestRate: Infinity, maxConcurrency: null, seed: 5 + round, vocab: cfg.vocabSize, specialIds: special, logprobs: true, timeoutMs: 300_000 });
    const bad = requests.filter((r) => !r.ok);
    if (bad.length) throw new Error(`${bad.length} request(s) failed: ${bad[0].status} ${bad[0].error}`);
    const t0 = Math.min(...requests.map((r) => r.tokenAt[0]));
    const s = (t: number): string => ((t - t0) / 1000).toFixed(1);
    console.log(`round ${round + 1}: first token s: ${requests.map((r) => s(r.tokenAt[0])).join(' ')}`);
    console.log(`round ${round + 1}: last token s:  ${requests.map((r) => s(r.tokenAt.at(-1)!)).join(' ')}`);
  }
} finally {
  await server.stop();
}
