// Merging over a quantized base (issue 18): a merged session serves dequant(Q(W0 + ΔW)) where the
// unmerged path serves dequant(Q(W0)) + ΔW. requantizationError measures the difference against ΔW
// (checked against the float64 definition), and --lora-mode auto declines to merge an adapter
// version whose error passes --merged-quant-error, while merged mode builds and reports it.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { dequantizeMatrix, quantizeMatrix, requantizationError } from '../../src/runtime/quantize.ts';
import { TARGETS, targetPath, targetShape } from '../../src/runtime/model-targets.ts';
import type { QuantScheme } from '../../src/runtime/quantize.ts';
import { MergedSessions, mergedRequantError, mergedWeights } from '../../src/merge/merged-sessions.ts';
import type { LoraMode } from '../../src/merge/merged-sessions.ts';
import type { GraphQuant } from '../../src/runtime/llama-graph.ts';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { decodeAdapter } from '../../src/adapters/lora-adapter.ts';
import { prepareAdapter } from '../../src/adapters/host-cache.ts';
import type { PreparedAdapter } from '../../src/runtime/lora-arena.ts';
import { adapterFiles, startTestServer, upload } from '../helpers/server.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';
import { quantReference } from '../reference/quant-reference.ts';

describe('re-quantization error of a merge', () => {
  it('equals ‖deq(Q(W0 + ΔW)) − deq(Q(W0)) − ΔW‖² and ‖ΔW‖² from the float64 definition', () => {
    const scheme = fc.record({ bits: fc.constantFrom(4 as const, 8 as const), block: fc.constantFrom(16, 32), symmetric: fc.boolean() });
    fc.assert(fc.property(scheme, fc.integer({ min: 1, max: 4 }), fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 2 ** 31 }), fc.constantFrom(0, 1e-4, 1e-2, 1), (s: QuantScheme, n, extra, seed, size) => {
      const k = s.block + extra;
      let x = seed;
      const rand = (): number => { x = (x * 1103515245 + 12345) % 2 ** 31; return x / 2 ** 31 - 0.5; };
      const w0 = Float32Array.from({ length: n * k }, () => rand() * 2);
      const merged = Float32Array.from(w0, (v) => v + rand() * size);
      const a = quantReference(w0, n, k, s).deq;
      const got = requantizationError(w0, merged, Float32Array.from(a), n, k, s);
      const b = quantReference(merged, n, k, s).deq;
      let errSq = 0;
      let deltaSq = 0;
      for (let i = 0; i < n * k; i++) {
        const d = merged[i] - w0[i];
        errSq += (b[i] - a[i] - d) ** 2;
        deltaSq += d * d;
      }
      expect(got.deltaSq).toBeCloseTo(deltaSq, 10);
      // the kernel's dequantized values are float32: each of the two may round by 2^-24 of itself
      let rounding = 0;
      for (let i = 0; i < n * k; i++) rounding += ((Math.abs(a[i]) + Math.abs(b[i])) * 2 ** -24) ** 2;
      expect(Math.abs(Math.sqrt(got.errSq) - Math.sqrt(errSq))).toBeLessThanOrEqual(Math.sqrt(rounding) * 1.01 + 1e-300);
      if (size === 0) expect(got.errSq).toBe(0);
    }), { numRuns: 150 });
  });
});

describe('--lora-mode auto over a quantized base', () => {
  const model = loadModel(STORIES_DIR);
  const cfg = model.config;
  const readBase = (name: string): Float32Array => model.weights.get(name)!;
  const adapter = (scaleB: number, seed: number): PreparedAdapter =>
    prepareAdapter(decodeAdapter(adapterFiles({ rank: 8, alpha: 16, seed, scaleB }), cfg, { maxRank: 64, modelName: 'stories260K' }).adapter!, cfg, readBase);
  const int = (bits: 4 | 8): GraphQuant => ({ bits, block: 32, symmetric: false, accuracyLevel: 4 });
  // W0 as the unmerged path serves it: dequant(Q(W0)) for the projections
  const servedBy = (quant: GraphQuant) => (name: string): Float32Array => {
    const t = TARGETS.find((x) => Array.from({ length: cfg.numLayers }, (_, l) => `${targetPath(l, x)}.weight`).includes(name));
    if (!t) return readBase(name);
    const [n, k] = targetShape(cfg, t);
    return dequantizeMatrix(quantizeMatrix(readBase(name), n, k, quant));
  };

  // Makes the adapter hot enough for auto's cost model (a 1 MB "model" builds in ~25 ms, and every
  // step saves 2 ms), steps it, and waits for whatever build that starts to settle.
  async function run(mode: LoraMode, quant: GraphQuant, a: PreparedAdapter, maxError?: number): Promise<MergedSessions> {
    const m = new MergedSessions(mode, cfg, 64, readBase, () => a, 1 << 30, { intraOpThreads: 1 }, 1e6, { scheme: quant, readServed: servedBy(quant), maxError: maxError ?? 0.05 });
    for (let i = 0; i < 20; i++) { m.observe('base', 1, 10); m.observe('unmerged', 1, 12); }
    const settled = new Promise<void>((r) => m.onSettled(r));
    for (let i = 0; i < 40; i++) m.sessionFor(a.version, 1);
    await settled;
    for (let i = 0; i < 40; i++) m.sessionFor(a.version, 1); // a declined version is not tried again
    return m;
  }

  it('declines an adapter whose delta int4 re-quantization would mostly round away, and says so', async () => {
    const a = adapter(0.01, 5);
    const m = await run('auto', int(4), a);
    expect(m.stats.lastRequantError).toBeGreaterThan(1); // ΔW below the int4 step: more error than signal
    expect(m.stats.declined).toBe(1);
    expect(m.stats.builds).toBe(0);
    expect(m.isMerged(a.version)).toBe(false);
    expect(m.stats.lastRequantError).toBeCloseTo(mergedRequantError(cfg, readBase, servedBy(int(4)), mergedWeights(cfg, readBase, a), a, int(4)), 12);
  });

  it('merges when the error is within the bound: a large delta at int8, or a bound raised by the operator', async () => {
    const big = adapter(0.5, 6);
    const m8 = await run('auto', int(8), big);
    expect(m8.stats.lastRequantError).toBeLessThan(0.05);
    expect(m8.isMerged(big.version)).toBe(true);
    expect(m8.stats.declined).toBe(0);

    const small = adapter(0.01, 7);
    const loose = await run('auto', int(4), small, 1000);
    expect(loose.stats.lastRequantError).toBeGreaterThan(1);
    expect(loose.isMerged(small.version)).toBe(true);
  });

  it('merged mode builds whatever the error, and reports it', async () => {
    const a = adapter(0.01, 8);
    const m = await run('merged', int(4), a);
    expect(m.isMerged(a.version)).toBe(true);
    expect(m.stats.declined).toBe(0);
    expect(m.stats.lastRequantError).toBeGreaterThan(1);
  });

  it('over a float base nothing is measured or declined', async () => {
    const a = adapter(0.01, 9);
    const m = new MergedSessions('auto', cfg, 64, readBase, () => a, 1 << 30, { intraOpThreads: 1 }, 1e6, null);
    for (let i = 0; i < 20; i++) { m.observe('base', 1, 10); m.observe('unmerged', 1, 12); }
    const settled = new Promise<void>((r) => m.onSettled(r));
    for (let i = 0; i < 40; i++) m.sessionFor(a.version, 1);
    await settled;
    expect(m.isMerged(a.version)).toBe(true);
    expect(Number.isNaN(m.stats.lastRequantError)).toBe(true);
  });

  it('over HTTP, loraserve_merged_requant_error_ratio is absent until a merged build measures one, then reports it', async () => {
    const server = await startTestServer({ quantize: int(8), loraMode: 'merged' });
    try {
      const metric = async (): Promise<string | undefined> => /^loraserve_merged_requant_error_ratio (\S+)$/m.exec(await (await fetch(`${server.url}/metrics`)).text())?.[1];
      expect(await metric()).toBeUndefined();
      expect((await upload(server.url, 'hot', adapterFiles({ rank: 8, seed: 12, scaleB: 1 }))).status).toBe(201);
      let value: string | undefined;
      for (let i = 0; i < 100 && value === undefined; i++) {
        const r = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'hot', prompt: 'Once', max_tokens: 4 }) });
        expect(r.status).toBe(200);
        value = await metric();
      }
      expect(Number(value)).toBeGreaterThan(0);
      expect(Number(value)).toBeLessThan(1);
    } finally {
      await server.close();
    }
  }, 60_000);
});
