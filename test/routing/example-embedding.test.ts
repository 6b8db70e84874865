// Adapters' example prompts are embedded a few at a time, one adapter's chunk after another, so
// that routing never holds more than a handful of the server's queue places (each embedding takes
// one: a 256-example adapter used to fill the queue and turn requests away with 429s); the cache of
// example embeddings keeps only the versions routable now.
import { describe, expect, it } from 'vitest';
import { SemanticRouter } from '../../src/server/semantic-routing.ts';
import type { RoutableAdapter } from '../../src/server/semantic-routing.ts';

function vectorOf(text: string): number[] {
  const h = [...text].reduce((a, c) => (a * 31 + c.charCodeAt(0)) % 1009, 7);
  return [Math.sin(h), Math.cos(h), Math.sin(2 * h)];
}

function setup(adapters: RoutableAdapter[]) {
  let inFlight = 0;
  let maxInFlight = 0;
  const embedded: string[] = [];
  const router = new SemanticRouter(async (texts) => {
    inFlight += texts.length;
    maxInFlight = Math.max(maxInFlight, inFlight);
    await new Promise((r) => setTimeout(r, 1));
    inFlight -= texts.length;
    embedded.push(...texts);
    return texts.map(vectorOf);
  }, () => adapters, { threshold: -1, mixTopK: 2, mixTemperature: 0.05 });
  return { router, stats: () => ({ maxInFlight, embedded }) };
}

const adapter = (name: string, n: number, version = `${name}@1`): RoutableAdapter => ({ name, version, examples: Array.from({ length: n }, (_, i) => `${name} example ${i}`), mixable: true });

describe('example embeddings', () => {
  it('three adapters of 100 examples each: at most 8 texts in flight, every example embedded once, in order', async () => {
    const list = [adapter('a', 100), adapter('b', 100), adapter('c', 100)];
    const { router, stats } = setup(list);
    const [s1, s2] = await Promise.all([router.scores(vectorOf('a example 3')), router.scores(vectorOf('b example 9'))]);
    expect(stats().maxInFlight).toBeLessThanOrEqual(8);
    expect(stats().embedded).toHaveLength(300);
    expect(new Set(stats().embedded).size).toBe(300);
    expect(s1[0].name).toBe('a');
    expect(s2[0].name).toBe('b');
    const again = await router.scores(vectorOf('c example 1'));
    expect(stats().embedded).toHaveLength(300); // cached
    expect(again[0].name).toBe('c');
  });

  it('a version no longer routable leaves the cache: when it comes back it is embedded again', async () => {
    const list = [adapter('a', 3), adapter('b', 3)];
    const { router, stats } = setup(list);
    await router.scores([1, 0, 0]);
    expect(stats().embedded).toHaveLength(6);
    list[1] = adapter('b', 3, 'b@2'); // replaced
    await router.scores([1, 0, 0]);
    expect(stats().embedded).toHaveLength(9);
    list[1] = adapter('b', 3, 'b@1'); // the old version back: its entry was dropped
    await router.scores([1, 0, 0]);
    expect(stats().embedded).toHaveLength(12);
    await router.scores([1, 0, 0]);
    expect(stats().embedded).toHaveLength(12);
  });

  it('a failed chunk fails that adapter\'s scoring, is not cached, and does not block the next', async () => {
    let fail = true;
    const router = new SemanticRouter(async (texts) => {
      if (fail) { fail = false; throw new Error('engine busy'); }
      return texts.map(vectorOf);
    }, () => [adapter('a', 10)], { threshold: -1, mixTopK: 2, mixTemperature: 0.05 });
    await expect(router.scores([1, 0, 0])).rejects.toThrow('engine busy');
    expect((await router.scores(vectorOf('a example 1')))[0].name).toBe('a');
  });
});
