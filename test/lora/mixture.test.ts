// Per-request mixtures (issue 14) below the server: the blend's factors give exactly Σ wᵢ·sᵢ·Bᵢ·Aᵢ
// (checked in float64 against the inputs' raw factors, for random ranks, targets and weights), and
// the host cache composes a blend once its inputs are loaded, pinning them meanwhile, and fails it
// clearly when an input cannot blend.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostCache, prepareAdapter } from '../../src/adapters/host-cache.ts';
import { mixPrepared, mixtureRef } from '../../src/adapters/mixture.ts';
import { adapterVersion, decodeAdapter } from '../../src/adapters/lora-adapter.ts';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { TARGETS, targetShape } from '../../src/runtime/model-targets.ts';
import type { Target } from '../../src/runtime/model-targets.ts';
import type { PreparedAdapter } from '../../src/runtime/lora-arena.ts';
import { encodeSafetensors } from '../../src/runtime/safetensors.ts';
import { buildAdapter, writeAdapter } from '../../scripts/make-test-adapters.ts';
import type { AdapterSpec } from '../../scripts/make-test-adapters.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const model = loadModel(STORIES_DIR);
const cfg = model.config;
const limits = { maxRank: 64, modelName: 'stories260K' };
const readBase = (n: string) => model.weights.get(n)!;

function decoded(spec: AdapterSpec) {
  const files = buildAdapter(cfg, spec, model.weights);
  return decodeAdapter({ config: new TextEncoder().encode(JSON.stringify(files.config)), weights: encodeSafetensors(files.tensors) }, cfg, limits).adapter!;
}

// s·B·A of one decoded target in float64, from the file's factors and the config's scale.
function delta(adapter: ReturnType<typeof decoded>, layer: number, target: Target): Float64Array | null {
  const t = adapter.targets.find((x) => x.layer === layer && x.target === target);
  const [out, inDim] = targetShape(cfg, target);
  if (!t) return null;
  const d = new Float64Array(out * inDim);
  for (let o = 0; o < out; o++) for (let i = 0; i < inDim; i++) {
    let acc = 0;
    for (let k = 0; k < t.rank; k++) acc += t.b[o * t.rank + k] * t.a[k * inDim + i];
    d[o * inDim + i] = t.scale * acc;
  }
  return d;
}

// b·a of a prepared target (b carries the scale), float64.
function preparedDelta(p: PreparedAdapter, layer: number, target: Target): Float64Array | null {
  const t = p.targets.find((x) => x.layer === layer && x.target === target);
  if (!t) return null;
  const [out, inDim] = targetShape(cfg, target);
  const d = new Float64Array(out * inDim);
  for (let o = 0; o < out; o++) for (let i = 0; i < inDim; i++) {
    let acc = 0;
    for (let k = 0; k < t.rank; k++) acc += t.b[o * t.rank + k] * t.a[k * inDim + i];
    d[o * inDim + i] = acc;
  }
  return d;
}

describe('mixtures', () => {
  it('a blend\'s factors give Σ wᵢ·sᵢ·Bᵢ·Aᵢ for any ranks, targets and weights (rank Σ rᵢ)', () => {
    fc.assert(fc.property(
      fc.array(fc.record({
        rank: fc.integer({ min: 1, max: 6 }),
        seed: fc.integer({ min: 1, max: 1000 }),
        rslora: fc.boolean(),
        targets: fc.subarray([...TARGETS], { minLength: 1 }),
        weight: fc.double({ min: -4, max: 4, noNaN: true }),
      }), { minLength: 1, maxLength: 4 }),
      (parts) => {
        const inputs = parts.map((p) => decoded({ rank: p.rank, seed: p.seed, rslora: p.rslora, alpha: 2 * p.rank, targets: p.targets as Target[], scaleB: 1 }));
        const expected = (layer: number, target: Target) => inputs.reduce<Float64Array | null>((acc, a, i) => {
          const d = delta(a, layer, target);
          if (!d) return acc;
          const sum = acc ?? new Float64Array(d.length);
          for (let j = 0; j < d.length; j++) sum[j] += parts[i].weight * d[j];
          return sum;
        }, null);
        // prepareAdapter scales B in place: decode again for the blend's inputs
        const prepared = parts.map((p, i) => ({ adapter: prepareAdapter(decoded({ rank: p.rank, seed: p.seed, rslora: p.rslora, alpha: 2 * p.rank, targets: p.targets as Target[], scaleB: 1 }), cfg, readBase), weight: p.weight, name: `in${i}` }));
        const mix = mixPrepared('mix-test', prepared, cfg);
        for (let layer = 0; layer < cfg.numLayers; layer++) for (const target of TARGETS) {
          const want = expected(layer, target);
          const got = preparedDelta(mix, layer, target);
          if (!want) { expect(got).toBeNull(); continue; }
          const t = mix.targets.find((x) => x.layer === layer && x.target === target)!;
          expect(t.rank).toBe(parts.reduce((s, p, i) => s + (inputs[i].targets.some((x) => x.layer === layer && x.target === target) ? p.rank : 0), 0));
          let err = 0, norm = 0;
          for (let j = 0; j < want.length; j++) { err = Math.max(err, Math.abs(got![j] - want[j])); norm = Math.max(norm, Math.abs(want[j])); }
          expect(err).toBeLessThanOrEqual(1e-5 * Math.max(1, norm));
        }
      },
    ), { numRuns: 25 });
  });

  it('a blend\'s version changes with any input version or weight; its name is canonical', () => {
    const ref = (name: string, version: string) => ({ name, version, dir: `/x/${name}` });
    const m = mixtureRef([{ ref: ref('a', '1'), weight: 0.7 }, { ref: ref('b', '2'), weight: 0.3 }]);
    expect(m.name).toBe('a*0.7+b*0.3');
    expect(m.version).toMatch(/^mix-[0-9a-f]{16}$/);
    expect(mixtureRef([{ ref: ref('a', '1'), weight: 0.7 }, { ref: ref('b', '3'), weight: 0.3 }]).version).not.toBe(m.version);
    expect(mixtureRef([{ ref: ref('a', '1'), weight: 0.6 }, { ref: ref('b', '2'), weight: 0.3 }]).version).not.toBe(m.version);
  });

  it('the host cache composes a blend once its inputs load (pinned meanwhile), and fails it when an input cannot blend', async () => {
    const root = mkdtempSync(join(tmpdir(), 'loraserve-mix-'));
    const write = (name: string, spec: AdapterSpec) => {
      const dir = join(root, name);
      return { name, version: adapterVersion(writeAdapter(dir, buildAdapter(cfg, spec, model.weights))), dir };
    };
    const a = write('a', { rank: 4, seed: 1 });
    const b = write('b', { rank: 8, seed: 2, targets: ['q_proj', 'v_proj'] });
    const d = write('d', { rank: 4, seed: 3, dora: true });
    const cache = new HostCache(cfg, readBase, limits, 1); // an LRU that holds nothing: only pins keep adapters
    const settle = () => new Promise<void>((r) => cache.onSettled(r));
    const mix = mixtureRef([{ ref: a, weight: 0.7 }, { ref: b, weight: -0.3 }]);
    cache.pin(mix.version); // as the scheduler does on submit
    for (let i = 0; i < 4 && !cache.acquire(mix); i++) await settle();
    const got = cache.acquire(mix)!;
    expect(got.version).toBe(mix.version);
    expect(got.targets.find((t) => t.layer === 0 && t.target === 'q_proj')!.rank).toBe(12);
    expect(got.targets.find((t) => t.layer === 0 && t.target === 'k_proj')!.rank).toBe(4);
    expect(cache.snapshot().pinnedBytes).toBe(got.bytes); // the inputs were let go once blended

    const bad = mixtureRef([{ ref: a, weight: 1 }, { ref: d, weight: 1 }]);
    for (let i = 0; i < 4 && !cache.failure(bad); i++) { cache.acquire(bad); if (!cache.failure(bad)) await settle(); }
    expect(cache.failure(bad)?.message).toMatch(/'d' is a DoRA adapter/);
  });
});
