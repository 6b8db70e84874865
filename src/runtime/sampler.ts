// Pure sampling over one logits row. Order (HF generation, shared/reference §5.6):
// logit_bias → repetition/frequency/presence penalties → temperature → top-k → top-p → min-p → draw.
// Greedy (temperature 0) is the argmax after bias and penalties.
import { drawNucleus, drawUnfiltered, greedyToken } from './sampling-fast-paths.ts';

export { greedyToken };

export interface SamplingParams {
  temperature: number;        // 0 = greedy
  topP: number;               // 1 = off
  topK: number;               // 0 = off
  minP: number;               // 0 = off
  repetitionPenalty: number;  // 1 = off; applies to prompt and output tokens
  frequencyPenalty: number;   // 0 = off; output tokens only
  presencePenalty: number;    // 0 = off; output tokens only
  logitBias: Map<number, number>;
}

export const DEFAULT_SAMPLING: SamplingParams = {
  temperature: 1, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1, frequencyPenalty: 0, presencePenalty: 0, logitBias: new Map(),
};

// Token history a penalty needs: which ids occurred in prompt or output, and output counts.
export interface PenaltyState {
  seen: Set<number>;                 // prompt ∪ output
  outputCounts: Map<number, number>; // output only
}

// logits[j] += bias[j]; repetition: l>0 ? l/p : l·p over seen; then −= freq·c_j + pres·[c_j>0].
export function applyBiasAndPenalties(logits: Float32Array, p: SamplingParams, state: PenaltyState): void {
  for (const [id, b] of p.logitBias) if (id >= 0 && id < logits.length) logits[id] += b;
  if (p.repetitionPenalty !== 1) {
    for (const id of state.seen) {
      const l = logits[id];
      logits[id] = l > 0 ? l / p.repetitionPenalty : l * p.repetitionPenalty;
    }
  }
  if (p.frequencyPenalty !== 0 || p.presencePenalty !== 0) {
    for (const [id, c] of state.outputCounts) logits[id] -= p.frequencyPenalty * c + p.presencePenalty * (c > 0 ? 1 : 0);
  }
}

// A copy of a logits row to bias, penalise and sanitize: one buffer per thread, reused until the
// next call (a fresh 128–512 KB array per token costs 20–130 µs of allocation here).
let workBuffer = new Float32Array(0);
export function workingCopy(row: Float32Array): Float32Array {
  if (workBuffer.length < row.length) workBuffer = new Float32Array(row.length);
  const w = workBuffer.subarray(0, row.length);
  w.set(row);
  return w;
}

export function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

// The candidates that survive top-k / top-p / min-p, with their normalised probabilities,
// sorted by probability descending (ties by id). `logits` must already be biased and penalised.
// Only the candidates that can matter are sorted: the k best with top-k, with top-p the tokens
// above a threshold whose mass already reaches p (the nucleus lies within them), and with min-p
// alone those at or above its floor (at vocab 32000: ~1 ms instead of ~15 ms for the full sort).
export function candidateDistribution(logits: Float32Array, p: SamplingParams): { ids: Int32Array; probs: Float64Array } {
  const V = logits.length;
  let max = -Infinity;
  for (let i = 0; i < V; i++) if (logits[i] > max) max = logits[i];
  const prob = new Float64Array(V);
  let total = 0;
  for (let i = 0; i < V; i++) total += prob[i] = Math.exp((logits[i] - max) / p.temperature);
  const byProb = (a: number, b: number): number => prob[b] - prob[a] || a - b;
  let ids: number[];
  let nucleusOf: number | undefined; // top-p's whole: the k best's mass with top-k, else the total
  if (p.topK > 0 && p.topK < V) {
    // the k best, and every token tied with the k-th (HF's `scores < kth` mask, vLLM's too)
    const best = topK(prob, p.topK);
    const kth = best[best.length - 1].value;
    ids = best.map((t) => t.id);
    const taken = new Set(ids);
    for (let i = 0; i < V; i++) if (prob[i] === kth && !taken.has(i)) ids.push(i);
    if (ids.length > best.length) ids.sort(byProb);
  } else if (p.topP < 1) {
    nucleusOf = total;
    ids = [];
    for (const tau of [1e-3, 1e-6, 1e-9, 1e-12, 0]) { // bounded: at tau 0 every token with mass is in
      let mass = 0;
      const above: number[] = [];
      for (let i = 0; i < V; i++) if (prob[i] >= tau && prob[i] > 0) { above.push(i); mass += prob[i]; }
      if (mass >= p.topP * total || tau === 0) { ids = above; break; }
    }
    ids.sort(byProb);
  } else {
    // min-p's floor is min_p × the best token's probability, and that is exp(0) = 1 here: only
    // the tokens at or above it need sorting
    const floor = p.minP > 0 ? p.minP : 0;
    ids = [];
    for (let i = 0; i < V; i++) if (prob[i] > 0 && prob[i] >= floor) ids.push(i);
    if (p.minP > 0) ids.sort(byProb);
  }
  if (ids.length === 0) ids = [argmax(logits)]; // no mass anywhere (cannot follow sanitize): the best logit
  return finishCandidates(ids, prob, p, nucleusOf);
}

// The rest of candidateDistribution once the candidates are in order: top-p's prefix, min-p's
// floor, renormalised. `prob[id]` is exp((logit − max) / temperature); topKDistribution calls it
// over its own k candidates, so both do the same arithmetic. `ids` is not empty. `nucleusOf` is
// the mass that top_p is a fraction of: the whole distribution's (the default, the mass of `ids`,
// is right only when `ids` are top-k's candidates: top-p then applies to the top-k distribution,
// as in vLLM and Hugging Face). Without top-k, candidateDistribution passes only the tokens that
// can be in the nucleus, so it passes the total.
export function finishCandidates(ids: number[], prob: Float64Array, p: SamplingParams, nucleusOf?: number): { ids: Int32Array; probs: Float64Array } {
  let keptMass = 0;
  for (const id of ids) keptMass += prob[id];
  if (p.topP < 1) {
    // the smallest prefix whose mass reaches top_p of the (top-k) distribution; always ≥ 1 token
    const whole = nucleusOf ?? keptMass;
    let cum = 0;
    let n = 0;
    while (n < ids.length) {
      cum += prob[ids[n]] / whole;
      n++;
      if (cum >= p.topP) break;
    }
    ids = ids.slice(0, n);
  }
  if (p.minP > 0) {
    const threshold = p.minP * prob[ids[0]];
    ids = ids.filter((id, i) => i === 0 || prob[id] >= threshold);
  }
  let mass = 0;
  for (const id of ids) mass += prob[id];
  if (!(mass > 0)) { mass = 1; prob[ids[0]] = 1; }
  const probs = new Float64Array(ids.length);
  ids.forEach((id, i) => { probs[i] = prob[id] / mass; });
  return { ids: Int32Array.from(ids), probs };
}

// top_k's candidates without a pass of exp over the vocabulary: the k best logits (one pass of
// comparisons, topK), their probabilities, then finishCandidates: the same ids, probabilities and
// order as candidateDistribution (a property test). Where the order by logit could differ from
// the order by probability (an underflow to 0, or two logits whose probabilities round equal),
// it returns null and the caller takes the general path. Call on a sanitized row, top_k < V.
export function topKDistribution(logits: Float32Array, p: SamplingParams): { ids: Int32Array; probs: Float64Array } | null {
  const best = topK(logits, p.topK + 1); // one more: the first token left out
  const max = best[0].value;
  const k = Math.min(p.topK, best.length);
  const prob = new Float64Array(best.length);
  for (let i = 0; i < best.length; i++) prob[i] = Math.exp((best[i].value - max) / p.temperature);
  for (let i = 1; i < best.length; i++) {
    if (!(prob[i] > 0) || (prob[i] === prob[i - 1] && best[i].value !== best[i - 1].value)) return null;
  }
  // a tie at the k-th place keeps every tied token: the general path gathers them
  if (best.length > k && prob[k] === prob[k - 1]) return null;
  const local = finishCandidates(Array.from({ length: k }, (_, i) => i), prob, p);
  return { ids: Int32Array.from(local.ids, (i) => best[i].id), probs: local.probs };
}

// Draw from a candidate distribution with a uniform coin in [0, 1).
export function drawFrom(dist: { ids: Int32Array; probs: Float64Array }, coin: number): number {
  let cum = 0;
  for (let i = 0; i < dist.ids.length; i++) {
    cum += dist.probs[i];
    if (coin < cum) return dist.ids[i];
  }
  return dist.ids[dist.ids.length - 1];
}

export function sampleToken(logits: Float32Array, p: SamplingParams, coin: () => number): number {
  if (p.temperature === 0) return greedyToken(logits);
  sanitize(logits);
  // the common cases without a sort of the whole vocabulary (sampling-fast-paths.ts)
  const topK = p.topK > 0 && p.topK < logits.length;
  if (!topK && p.minP <= 0) return p.topP < 1 ? drawNucleus(logits, p.temperature, p.topP, coin()) : drawUnfiltered(logits, p.temperature, coin());
  const dist = (topK && topKDistribution(logits, p)) || candidateDistribution(logits, p);
  return drawFrom(dist, coin());
}


// Extreme penalties or biases can push a logit to ±Infinity (or NaN from ∞ − ∞): NaN becomes
// −∞ (never drawn), +∞ the largest float, so the distribution stays defined and some token wins.
export function sanitize(logits: Float32Array): void {
  let finite = false;
  for (let i = 0; i < logits.length; i++) {
    const l = logits[i];
    if (Number.isNaN(l)) logits[i] = -Infinity;
    else if (l === Infinity) logits[i] = 3.4e38;
    if (logits[i] !== -Infinity) finite = true;
  }
  if (!finite) logits.fill(0); // nothing left: uniform rather than no token at all
}

// log_softmax of the raw model logits (before bias, penalties and temperature, as vLLM reports them).
export function logSoftmax(logits: Float32Array): Float64Array {
  const lse = logSumExp(logits);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - lse;
  return out;
}

// log Σ exp(logits), stably. A token's logprob is logits[id] − logSumExp(logits): a sampled token
// needs that and the top-k of the logits (same order as the logprobs'), not the whole
// log-softmax (a third pass and a vocabulary-sized allocation per row, ~half the cost).
export function logSumExp(logits: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return max + Math.log(sum);
}

// The k largest entries, descending (ties by id).
export function topK(values: ArrayLike<number>, k: number): { id: number; value: number }[] {
  const best: { id: number; value: number }[] = [];
  if (!(k > 0)) return best; // logprobs: 0 asks for the chosen token's logprob and no alternatives
  let floor = -Infinity; // the k-th value once there are k (kept in a local: read for every entry)
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (best.length < k || v > floor) {
      let j = best.length < k ? best.length : best.length - 1;
      if (best.length < k) best.push({ id: i, value: v });
      while (j > 0 && best[j - 1].value < v) { best[j] = best[j - 1]; j--; }
      best[j] = { id: i, value: v };
      if (best.length === k) floor = best[k - 1].value;
    }
  }
  return best;
}
