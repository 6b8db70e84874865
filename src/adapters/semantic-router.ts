// Semantic routing (issue 14): which adapter's example prompts are nearest to a request's prompt, by
// cosine similarity of base-model embeddings (mean-pooled final hidden states, engine `embed`).
//
// Mean-pooled hidden states of a language model share a large common direction (every text looks
// alike to raw cosine: ~0.99 here) and a few dimensions of large variance, so vectors are first
// STANDARDIZED by the mean and standard deviation, per dimension, of all the adapters' example
// embeddings, then compared: an adapter's score is the mean cosine between the prompt and its K
// nearest examples (K = min(7, its examples)). On the in-repo set (scripts/make-routing-set.ts,
// docs/routing.md) this took accuracy from 0.74 (raw cosine, 8 examples, K = 3) to ≥ 0.9 (48, K = 7). `model: "auto"` takes the best adapter when its
// score reaches the threshold, else the base model; `auto:mix` blends the top k with softmax(score/τ).
// Pure functions over arrays; the server computes the embeddings and caches them per adapter version.

export interface RouteCandidate {
  name: string;
  examples: readonly (readonly number[])[]; // embeddings of its example prompts
}

export interface RouteScore { name: string; score: number }

export const NEAREST = 7;

export interface Standardizer { mean: number[]; std: number[] }

// The mean and standard deviation of every example embedding, per dimension (std 0 → 1).
export function standardizer(candidates: readonly RouteCandidate[]): Standardizer {
  const all = candidates.flatMap((c) => c.examples);
  if (all.length === 0) return { mean: [], std: [] };
  const D = all[0].length;
  const mean = new Array<number>(D).fill(0);
  for (const v of all) for (let j = 0; j < D; j++) mean[j] += v[j] / all.length;
  const std = new Array<number>(D).fill(0);
  for (const v of all) for (let j = 0; j < D; j++) std[j] += (v[j] - mean[j]) ** 2 / all.length;
  // a dimension whose spread is within rounding of its mean (fast-check: 9.99999999998630 and …331)
  // carries no signal, only cancellation noise: it is left unscaled (it standardizes to ≈ 0)
  return { mean, std: std.map((x, j) => { const sd = Math.sqrt(x); return sd > 1e-9 * Math.max(1, Math.abs(mean[j])) ? sd : 1; }) };
}

export function standardize(v: readonly number[], s: Standardizer): number[] {
  return v.map((x, j) => (x - (s.mean[j] ?? 0)) / (s.std[j] ?? 1));
}

export function cosine(a: readonly number[], b: readonly number[]): number {
  // each vector scaled by its largest |value| first: squares of tiny or huge values would under- or
  // overflow (fast-check found 1e-164 giving NaN, then 0.71 for two parallel vectors)
  let ma = 0, mb = 0;
  for (let j = 0; j < a.length; j++) { ma = Math.max(ma, Math.abs(a[j])); mb = Math.max(mb, Math.abs(b[j])); }
  if (!(ma > 0) || !(mb > 0) || !Number.isFinite(ma) || !Number.isFinite(mb)) return 0;
  let dot = 0, na = 0, nb = 0;
  for (let j = 0; j < a.length; j++) {
    const x = a[j] / ma, y = b[j] / mb;
    dot += x * y; na += x * x; nb += y * y;
  }
  return Math.max(-1, Math.min(1, dot / Math.sqrt(na * nb)));
}

// Every candidate with examples, best first (ties: by name, so a route is deterministic).
export function scoreRoutes(query: readonly number[], candidates: readonly RouteCandidate[]): RouteScore[] {
  const s = standardizer(candidates);
  const q = standardize(query, s);
  return candidates
    .filter((c) => c.examples.length > 0)
    .map((c) => {
      const sims = c.examples.map((e) => cosine(q, standardize(e, s))).sort((x, y) => y - x);
      const k = Math.min(NEAREST, sims.length);
      return { name: c.name, score: sims.slice(0, k).reduce((s, v) => s + v, 0) / k };
    })
    .sort((x, y) => y.score - x.score || (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
}

// auto: the best adapter when it reaches the threshold, else null (the base model).
export function pickRoute(scores: readonly RouteScore[], threshold: number): string | null {
  return scores.length > 0 && scores[0].score >= threshold ? scores[0].name : null;
}

// auto:mix: the top k (those reaching the threshold), weighted softmax(score / τ).
export function mixRoute(scores: readonly RouteScore[], k: number, temperature: number, threshold: number): { name: string; weight: number }[] {
  const top = scores.filter((s) => s.score >= threshold).slice(0, k);
  if (top.length === 0) return [];
  const max = top[0].score;
  const exps = top.map((s) => Math.exp((s.score - max) / temperature));
  const sum = exps.reduce((a, b) => a + b, 0);
  return top.map((s, i) => ({ name: s.name, weight: exps[i] / sum }));
}
