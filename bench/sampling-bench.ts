// `npm run bench -- --only sampling`: what the engine thread spends per generated token choosing it,
// for a row of 32000 logits (the 110M model's vocabulary) and of 128256 (Llama 3's), with the
// sampling fields users send. Each case is timed on the path a sequence takes (a reused working
// copy of the row, then sampleToken: the fast paths of sampling-fast-paths.ts where they apply) and
// on the path before them (a fresh copy, then candidateDistribution and a sort), which drew the
// same tokens; a logprob's log Σ exp in JS (float64) against reading the
// graph's logits_lse. Interleaved in one run; µs per token, median of the rounds.
import { DEFAULT_SAMPLING, argmax, candidateDistribution, drawFrom, finishCandidates, logSumExp, sampleToken, sanitize, workingCopy } from '../src/runtime/sampler.ts';
import type { SamplingParams } from '../src/runtime/sampler.ts';
import { Rng } from '../src/runtime/random.ts';
import { median, printTable } from './stats.ts';

interface Case { name: string; params: Partial<SamplingParams> }
const CASES: Case[] = [
  { name: 'greedy', params: { temperature: 0 } },
  { name: 'temperature 0.8', params: { temperature: 0.8 } },
  { name: 'temperature 1, top_p 0.9', params: { temperature: 1, topP: 0.9 } },
  { name: 'temperature 0.7, top_p 0.95', params: { temperature: 0.7, topP: 0.95 } },
  { name: 'temperature 1, top_k 40', params: { temperature: 1, topK: 40 } },
  { name: 'temperature 1, min_p 0.05', params: { temperature: 1, minP: 0.05 } },
];

// min-p alone as candidateDistribution ran it before it filtered by min-p's floor first: every
// token with mass, sorted, then finishCandidates (the same candidates and probabilities)
function sortAllDistribution(logits: Float32Array, p: SamplingParams): { ids: Int32Array; probs: Float64Array } {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  const prob = new Float64Array(logits.length);
  const ids: number[] = [];
  for (let i = 0; i < logits.length; i++) if ((prob[i] = Math.exp((logits[i] - max) / p.temperature)) > 0) ids.push(i);
  ids.sort((a, b) => prob[b] - prob[a] || a - b);
  return finishCandidates(ids, prob, p);
}

// A row shaped like a language model's: a few strong candidates over a broad tail (normal-ish
// logits, sd 2.5, plus 20 tokens 6–10 above).
function logitsRow(vocab: number, rng: Rng): Float32Array {
  const x = new Float32Array(vocab);
  for (let i = 0; i < vocab; i++) x[i] = 2.5 * (rng.next() + rng.next() + rng.next() - 1.5) * 2;
  for (let j = 0; j < 20; j++) x[Math.floor(rng.next() * vocab)] += 6 + 4 * rng.next();
  return x;
}

// µs per call of each function, the median over rounds that time them in turn (so the VM's drift
// lands on both alike)
function timeUs(rounds: number, fs: (() => unknown)[], calls = 100): number[] {
  const samples = fs.map(() => [] as number[]);
  for (let r = 0; r < rounds; r++) {
    fs.forEach((f, j) => {
      const t0 = performance.now();
      for (let i = 0; i < calls; i++) f();
      samples[j].push(((performance.now() - t0) / calls) * 1000);
    });
  }
  return samples.map(median);
}

export async function samplingBench(opts: { quick: boolean }): Promise<unknown> {
  const rounds = opts.quick ? 5 : 25;
  const rows: Record<string, string | number>[] = [];
  for (const vocab of [32000, 128256]) {
    const rng = new Rng(7);
    const raw = logitsRow(vocab, rng);
    for (const c of CASES) {
      const p: SamplingParams = { ...DEFAULT_SAMPLING, ...c.params };
      const coin = new Rng(11);
      const general = (): number => {
        const w = raw.slice();
        sanitize(w);
        if (p.temperature === 0) return argmax(w);
        return drawFrom(p.minP > 0 && !p.topK && p.topP >= 1 ? sortAllDistribution(w, p) : candidateDistribution(w, p), coin.next());
      };
      const served = (): number => sampleToken(workingCopy(raw), p, () => coin.next());
      timeUs(3, [general, served]); // warm-up (JIT)
      const [generalUs, servedUs] = timeUs(rounds, [general, served], vocab > 50_000 ? 20 : 100);
      rows.push({ vocab, case: c.name, general_path_us: generalUs, served_path_us: servedUs, speedup: generalUs / servedUs });
    }
    const [lseJs] = timeUs(rounds, [() => logSumExp(raw)]);
    rows.push({ vocab, case: 'a logprob\'s log Σ exp (JS, float64; the graph returns it)', general_path_us: lseJs, served_path_us: 0, speedup: Infinity });
  }
  printTable('sampling: µs per token on the engine thread (served path: what sampleToken runs; general path: candidateDistribution and a sort, which drew the same tokens before; for min-p alone, a sort of the whole row)', rows.map((r) => ({ ...r, speedup: Number.isFinite(r.speedup as number) ? `${(r.speedup as number).toFixed(1)}×` : '—' })));
  return { rounds, rows };
}
