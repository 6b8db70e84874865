// "auto" routing while the adapters change under it (generation.ts resolveTarget): the router
// scores the adapters that were ready when it started, then awaits their examples' embeddings, so
// its choice may be unloading (or gone) by the time the request resolves it. The request is then
// routed again without it, rather than failing for an adapter the client never named; and it fails
// with the adapter's own error only when that keeps happening.
import { describe, expect, it, vi } from 'vitest';
import { resolveTarget } from '../../src/server/generation.ts';
import type { GenerationDeps } from '../../src/server/generation.ts';
import { SemanticRouter } from '../../src/server/semantic-routing.ts';
import type { GenerationJob } from '../../src/server/openai-request.ts';
import { LoraserveError } from '../../src/runtime/errors.ts';

type Status = 'ready' | 'unloading' | 'failed';

// Three adapters with one example each; the prompt sits nearest a, then b.
const EXAMPLES: Record<string, number[]> = { a: [1, 0, 0], b: [0.7, 0.7, 0], c: [0, 0, 1] };
const QUERY = [0.95, 0.3, 0];

function setup(opts: { onEmbed?: (name: string) => void; routerSees?: () => string[]; only?: string[]; get?: (name: string) => unknown } = {}) {
  const status = new Map<string, Status>((opts.only ?? ['a', 'b', 'c']).map((n) => [n, 'ready']));
  const decided: string[] = [];
  const embedCalls: string[] = [];
  const ready = (): string[] => [...status].filter(([, s]) => s === 'ready').map(([n]) => n);
  const router = new SemanticRouter(
    async (texts) => {
      await new Promise((r) => setImmediate(r)); // the embedding runs on the engine: the request waits
      return texts.map((t) => { embedCalls.push(t); opts.onEmbed?.(t); return EXAMPLES[t]; });
    },
    () => (opts.routerSees ?? ready)().map((n) => ({ name: n, version: `${n}@1`, examples: [n], mixable: true })),
    { threshold: -1, mixTopK: 2, mixTemperature: 0.05 },
  );
  const deps = {
    modelName: 'base',
    maxMixture: 4,
    registry: { has: (n: string) => status.has(n), get: opts.get ?? ((n: string) => (status.has(n) ? { name: n, status: status.get(n) } : undefined)) },
    router,
    embedText: async () => QUERY,
    metrics: { routingDecisions: { inc: (l: { adapter: string }) => { decided.push(l.adapter); } } },
  } as unknown as GenerationDeps;
  const job = { model: 'auto', adapters: null, routingText: 'a prompt' } as unknown as GenerationJob;
  const decide = vi.spyOn(router, 'decide');
  return { status, deps, job, decided, embedCalls, decide };
}

describe('"auto" routing while adapters change', () => {
  it('routes to a when nothing changes', async () => {
    const { deps, job, decided } = setup();
    expect((await resolveTarget(job, deps)).adapter).toBe('a');
    expect(decided).toEqual(['a']);
  });

  it('a choice that starts unloading while its examples embed is routed again, to the next best', async () => {
    let s: Map<string, Status> | null = null;
    const t = setup({ onEmbed: (name) => { if (name === 'a') s!.set('a', 'unloading'); } });
    s = t.status;
    const target = await resolveTarget(t.job, t.deps);
    expect(target.adapter).toBe('b');
    expect(target.routed?.scores.map((x) => x.name)).not.toContain('a');
    expect(t.decided).toEqual(['b']); // one decision counted: the one served
  });

  it('a choice deleted meanwhile (404) is routed again as well', async () => {
    let s: Map<string, Status> | null = null;
    const t = setup({ onEmbed: (name) => { if (name === 'a') s!.delete('a'); } });
    s = t.status;
    expect((await resolveTarget(t.job, t.deps)).adapter).toBe('b');
  });

  it('when every decision meets an adapter that cannot serve, the request fails with its 503 after three decisions', async () => {
    const t = setup({ routerSees: () => ['a', 'b', 'c'] }); // a router whose view never catches up
    t.status.set('a', 'unloading');
    const err = await resolveTarget(t.job, t.deps).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LoraserveError);
    expect((err as LoraserveError).code).toBe('unavailable');
    expect((err as LoraserveError).message).toContain("adapter 'a' is being unloaded");
    expect(t.decide).toHaveBeenCalledTimes(3);
    expect(t.decided).toEqual([]);
  });

  it('when the choice was the last adapter with examples, the request fails with its 503, not the 400 of "no examples"', async () => {
    let s: Map<string, Status> | null = null;
    const t = setup({ only: ['a'], onEmbed: (name) => { if (name === 'a') s!.set('a', 'unloading'); } });
    s = t.status;
    const err = await resolveTarget(t.job, t.deps).catch((e: unknown) => e);
    expect((err as LoraserveError).code).toBe('unavailable');
    expect((err as LoraserveError).retryAfterSeconds).toBe(1);
    expect(t.decide).toHaveBeenCalledTimes(2);
  });

  it('any other failure resolving the choice is not retried', async () => {
    const t = setup({ get: () => { throw new LoraserveError('internal', 'registry broke'); } });
    const err = await resolveTarget(t.job, t.deps).catch((e: unknown) => e);
    expect((err as LoraserveError).code).toBe('internal');
    expect(t.decide).toHaveBeenCalledTimes(1);
  });

  it('auto:mix: a blend part that starts unloading after the blend was chosen is blended again without it', async () => {
    const view = ['a', 'b', 'c']; // what the router sees: b leaves it only after the first decision
    const t = setup({ routerSees: () => view });
    t.decide.mockImplementationOnce(async function (this: SemanticRouter, ...args: Parameters<SemanticRouter['decide']>) {
      const d = await SemanticRouter.prototype.decide.apply(this, args);
      t.status.set('b', 'unloading');
      view.splice(view.indexOf('b'), 1);
      return d;
    });
    t.job.model = 'auto:mix';
    const target = await resolveTarget(t.job, t.deps);
    expect(target.mixture?.map((p) => p.name)).not.toContain('b');
    expect(target.mixture?.length).toBeGreaterThan(0);
    expect(t.decide).toHaveBeenCalledTimes(2);
    expect(t.decided).toEqual(['mixture']);
  });
});
