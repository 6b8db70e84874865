// Semantic routing for `model: "auto"` / "auto:mix" and POST /v1/route (issue 14): the prompt's
// base-model embedding (embedder.ts) against each adapter's example prompts (adapters/semantic-router.ts
// for the math). Example embeddings are computed on first use, a few at a time, and cached per
// adapter version (a replaced adapter or new examples make a new entry; the cache keeps only the
// versions routable at the last scoring, and at most MAX_CACHED).
import { mixRoute, pickRoute, scoreRoutes } from '../adapters/semantic-router.ts';
import type { RouteScore } from '../adapters/semantic-router.ts';
import { LoraserveError } from '../runtime/errors.ts';

export interface RoutingOptions {
  threshold: number;       // --route-threshold: the least score that routes to an adapter (else base)
  mixTopK: number;         // --route-mix-k: auto:mix blends this many adapters at most
  mixTemperature: number;  // --route-mix-temperature: τ of softmax(score / τ)
}

export const DEFAULT_ROUTING: RoutingOptions = { threshold: 0.25, mixTopK: 2, mixTemperature: 0.05 };

export interface RoutableAdapter {
  name: string;
  version: string;         // the adapter's version and its examples' hash: the cache key
  examples: string[];
  mixable: boolean;        // may be part of an auto:mix blend (not DoRA, not merged weights only: mixture.ts)
}

export interface RouteDecision {
  adapter: string | null;                  // auto: the choice (null: the base model)
  mixture: { name: string; weight: number }[] | null; // auto:mix: the blend (null: none reached the threshold)
  scores: RouteScore[];
}

const MAX_CACHED = 4096;
// Examples are embedded a few at a time, one adapter's chunk after another: each embedding takes a
// place in the server's queue (embedder.ts), and an adapter's 256 examples at once (or every
// adapter's at once after a restart) would fill it and turn requests away with 429s.
const EXAMPLE_CHUNK = 8;

export class SemanticRouter {
  private readonly cache = new Map<string, Promise<number[][]>>();
  private examplesQueue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly embedTexts: (texts: string[]) => Promise<number[][]>,
    private readonly adapters: () => RoutableAdapter[],
    readonly options: RoutingOptions,
  ) {}

  // Scores of every adapter with examples for this prompt embedding; 400 when none has examples.
  async scores(query: number[]): Promise<RouteScore[]> {
    const routable = this.adapters().filter((a) => a.examples.length > 0);
    // only the versions routable now stay cached: a replaced, re-described or deleted adapter's
    // example embeddings go (they would otherwise stay until MAX_CACHED entries)
    const current = new Set(routable.map((a) => a.version));
    for (const key of this.cache.keys()) if (!current.has(key)) this.cache.delete(key);
    if (routable.length === 0) throw new LoraserveError('invalid_request', 'no adapter has example prompts to route by: add them with PATCH /v1/adapters/{name} {"examples": […]} (or loraserve.json beside the adapter)', { param: 'model' });
    const candidates = await Promise.all(routable.map(async (a) => ({ name: a.name, examples: await this.examplesOf(a) })));
    return scoreRoutes(query, candidates);
  }

  async decide(query: number[], mix: boolean): Promise<RouteDecision> {
    const scores = await this.scores(query);
    const o = this.options;
    if (!mix) return { adapter: pickRoute(scores, o.threshold), mixture: null, scores };
    const blend = this.mixture(scores);
    return { adapter: null, mixture: blend.length ? blend : null, scores };
  }

  // The auto:mix blend of these scores, among the adapters that can be blended (a DoRA adapter, or
  // one kept as merged weights only, would fail the request: mixture.ts); empty when none reaches
  // the threshold.
  mixture(scores: RouteScore[]): { name: string; weight: number }[] {
    const mixable = new Set(this.adapters().filter((a) => a.mixable).map((a) => a.name));
    const o = this.options;
    return mixRoute(scores.filter((s) => mixable.has(s.name)), o.mixTopK, o.mixTemperature, o.threshold);
  }

  private examplesOf(a: RoutableAdapter): Promise<number[][]> {
    let p = this.cache.get(a.version);
    if (!p) {
      p = this.embedExamples(a.examples);
      p.catch(() => this.cache.delete(a.version)); // a failure is not cached
      this.cache.set(a.version, p);
      if (this.cache.size > MAX_CACHED) this.cache.delete(this.cache.keys().next().value!);
    }
    return p;
  }

  // EXAMPLE_CHUNK texts at a time, after any other adapter's examples already queued.
  private embedExamples(texts: string[]): Promise<number[][]> {
    const run = async (): Promise<number[][]> => {
      const out: number[][] = [];
      for (let i = 0; i < texts.length; i += EXAMPLE_CHUNK) out.push(...await this.embedTexts(texts.slice(i, i + EXAMPLE_CHUNK)));
      return out;
    };
    const p = this.examplesQueue.then(run, run);
    this.examplesQueue = p.catch(() => undefined);
    return p;
  }
}
