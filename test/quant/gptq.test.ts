// Pre-quantized GPTQ checkpoints (issue 18): an independent float64 dequantizer written from the
// format's statement agrees with gptq.ts' dequant and with its repacked MatMulNBits layout
// (permutation undone), over bits, group sizes, sym/asym zeros, act-order and both checkpoint
// formats (fast-check); stories260K made into GPTQ 4-bit is served within 1e-4 in log-prob of a
// float64 forward pass over its dequantized weights (accuracy level 0); the real server serves one
// with a LoRA adapter batched beside base requests; and what is not read is refused at start-up.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { blockForRuns, dequantizeGptq, parseGptqConfig, repackGptq } from '../../src/runtime/gptq.ts';
import type { GptqConfig } from '../../src/runtime/gptq.ts';
import { dequantizeMatrix } from '../../src/runtime/quantize.ts';
import { f16ToF32 } from '../../src/runtime/dtype.ts';
import { tensorToF32 } from '../../src/runtime/dtype.ts';
import { encodeSafetensors, readSafetensorsFile } from '../../src/runtime/safetensors.ts';
import type { TensorToWrite } from '../../src/runtime/safetensors.ts';
import { loadModel, loadModelFiles } from '../../src/runtime/model-loader.ts';
import { TARGETS, targetPath, targetShape } from '../../src/runtime/model-targets.ts';
import { WeightReader } from '../../src/runtime/weight-reader.ts';
import { startEngine } from '../../src/start-engine.ts';
import { DEFAULT_SAMPLING } from '../../src/runtime/sampler.ts';
import { ReferenceLlama } from '../reference/llama-reference.ts';
import { STORIES_DIR, storiesExpected } from '../helpers/fixtures.ts';
import { makeGptqCheckpoint } from '../../scripts/make-gptq-checkpoint.ts';
import type { GptqCheckpointOptions } from '../../scripts/make-gptq-checkpoint.ts';

// The format, in float64, from its statement: W[n, k] = scales[g[k], n] · (q[k, n] − zero[g[k], n]),
// q packed along K in qweight's rows, zeros along N in qzeros' columns, 32/bits to an int32, low
// bits first; v1 ("gptq") stores zero − 1.
function referenceDequant(bits: number, groupSize: number, format: string, qweight: Int32Array, qzeros: Int32Array, scales: Float32Array, gIdx: Int32Array | null, n: number, k: number): Float64Array {
  const per = 32 / bits;
  const zeroCols = Math.ceil(n / per);
  const field = (word: number, j: number) => Number((BigInt.asUintN(32, BigInt(word)) >> BigInt(j * bits)) % BigInt(2 ** bits));
  const w = new Float64Array(n * k);
  for (let col = 0; col < n; col++) {
    for (let row = 0; row < k; row++) {
      const g = gIdx ? gIdx[row] : groupSize === -1 ? 0 : Math.floor(row / groupSize);
      const q = field(qweight[Math.floor(row / per) * n + col], row % per);
      const zero = field(qzeros[g * zeroCols + Math.floor(col / per)], col % per) + (format === 'gptq' ? 1 : 0);
      w[col * k + row] = scales[g * n + col] * (q - zero);
    }
  }
  return w;
}

// A random linear in the format, as integers (q, zeros, half-precision scales): exact in float32.
const linear = fc.record({
  bits: fc.constantFrom(4 as const, 8 as const),
  groupSize: fc.constantFrom(16, 32, 48, 64, 128, 512, -1),
  n: fc.integer({ min: 1, max: 24 }),
  kExtra: fc.integer({ min: 0, max: 100 }),
  sym: fc.boolean(),
  descAct: fc.boolean(),
  format: fc.constantFrom('gptq' as const, 'gptq_v2' as const),
  withGIdx: fc.boolean(),
  seed: fc.integer({ min: 1, max: 2 ** 30 }),
}).map((s) => {
  let x = s.seed;
  const rand = (m: number) => { x = (x * 1103515245 + 12345) % 2 ** 31; return x % m; };
  const k = (s.groupSize === -1 ? 16 : Math.min(s.groupSize, 64)) + s.kExtra;
  const per = 32 / s.bits;
  const maxq = 2 ** s.bits - 1;
  const G = s.groupSize === -1 ? 1 : Math.ceil(k / s.groupSize);
  const order = Array.from({ length: k }, (_, i) => i);
  if (s.descAct) for (let i = k - 1; i > 0; i--) { const j = rand(i + 1); [order[i], order[j]] = [order[j], order[i]]; }
  const gIdx = new Int32Array(k);
  order.forEach((kk, i) => { gIdx[kk] = s.groupSize === -1 ? 0 : Math.floor(i / s.groupSize); });
  const qweight = new Int32Array(Math.ceil(k / per) * s.n);
  for (let i = 0; i < k; i++) for (let j = 0; j < s.n; j++) qweight[Math.floor(i / per) * s.n + j] |= rand(maxq + 1) << ((i % per) * s.bits);
  const qzeros = new Int32Array(G * Math.ceil(s.n / per));
  const half = 2 ** (s.bits - 1);
  for (let g = 0; g < G; g++) for (let j = 0; j < s.n; j++) {
    const zero = s.sym ? half : rand(maxq) + (s.format === 'gptq' ? 1 : rand(2)); // v1: zero in [1, maxq]
    qzeros[g * Math.ceil(s.n / per) + Math.floor(j / per)] |= (zero - (s.format === 'gptq' ? 1 : 0)) << ((j % per) * s.bits);
  }
  const scales = Float32Array.from({ length: G * s.n }, () => f16ToF32(0x0400 + rand(0x7000) + (rand(2) ? 0x8000 : 0))); // normal halves, either sign
  const config: GptqConfig = { bits: s.bits, groupSize: s.groupSize, sym: s.sym, descAct: s.descAct, format: s.format };
  return { config, k, n: s.n, t: { qweight, qzeros, scales, gIdx: s.withGIdx || s.descAct ? gIdx : null } };
});

describe('GPTQ tensors', () => {
  it('dequant and the repacked MatMulNBits layout (permutation undone) equal the float64 statement of the format', () => {
    fc.assert(fc.property(linear, ({ config, k, n, t }) => {
      const ref = referenceDequant(config.bits, config.groupSize, config.format, t.qweight, t.qzeros, t.scales, t.gIdx, n, k);
      const got = dequantizeGptq(config, t, n, k);
      for (let i = 0; i < ref.length; i++) expect(got[i]).toBe(ref[i]); // small integers × halves: exact
      const { matrix, perm } = repackGptq(config, t, n, k);
      expect(matrix.scheme.symmetric).toBe(false);
      const order = perm ?? Int32Array.from({ length: k }, (_, i) => i);
      expect([...order].sort((a, b) => a - b)).toEqual(Array.from({ length: k }, (_, i) => i));
      if (!config.descAct) expect(perm).toBeNull();
      const dq = dequantizeMatrix(matrix);
      for (let j = 0; j < n; j++) for (let i = 0; i < k; i++) expect(dq[j * k + i]).toBe(ref[j * k + order[i]]);
    }), { numRuns: 300 });
  });

  it('the block: the group size, else the largest power of two in 16..256 dividing every run but the last', () => {
    expect(blockForRuns(32, [32, 32, 12], 76)).toBe(32);
    expect(blockForRuns(-1, [172], 172)).toBe(128);
    expect(blockForRuns(512, [512, 512], 1024)).toBe(256);
    expect(blockForRuns(48, [48, 48, 10], 106)).toBe(16);
    expect(blockForRuns(8, [8, 8], 16)).toBeNull();
    expect(blockForRuns(100, [100, 100], 200)).toBeNull();
  });

  it("v1's wrapped zero (a stored 2^bits − 1) repacks losslessly when no q of the block is 0, and is refused by name when one is", () => {
    const config: GptqConfig = { bits: 4, groupSize: 16, sym: false, descAct: false, format: 'gptq' };
    const qweight = new Int32Array(2 * 1).fill(0x11111111); // q = 1 everywhere
    const t = { qweight, qzeros: Int32Array.of(15), scales: Float32Array.of(0.5), gIdx: null };
    const dq = dequantizeMatrix(repackGptq(config, t, 1, 16).matrix);
    expect(Array.from(dq)).toEqual(Array.from(dequantizeGptq(config, t, 1, 16)));
    expect(dq[0]).toBe(0.5 * (1 - 16));
    qweight[1] = 0x11111110; // one q of 0
    expect(() => repackGptq(config, t, 1, 16, 'layer.x')).toThrow(/layer\.x\.qzeros: group 0, output 0 has zero 16 .* convert the checkpoint to gptq_v2/);
  });

  it('quantization_config: unknown methods, widths and formats are refused by key', () => {
    expect(parseGptqConfig(undefined)).toBeNull();
    expect(parseGptqConfig({ quant_method: 'gptq', bits: 4, group_size: 128, damp_percent: 0.1, true_sequential: true, static_groups: false, model_name_or_path: 'x' })).toEqual({ bits: 4, groupSize: 128, sym: true, descAct: false, format: 'gptq' });
    expect(() => parseGptqConfig({ quant_method: 'awq', bits: 4 })).toThrow(/"quant_method" "awq" is not supported/);
    expect(() => parseGptqConfig({ quant_method: 'gptq', bits: 3 })).toThrow(/"bits" must be 4 or 8/);
    expect(() => parseGptqConfig({ quant_method: 'gptq', bits: 4, checkpoint_format: 'marlin' })).toThrow(/"checkpoint_format" "marlin" is not supported/);
    expect(() => parseGptqConfig({ quant_method: 'gptq', bits: 4, group_size: 0 })).toThrow(/"group_size" must be a positive integer or -1/);
  });
});

const tmp = mkdtempSync(join(tmpdir(), 'loraserve-gptq-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const BASE = { model: STORIES_DIR, bits: 4 as const, sym: false, format: 'gptq' as const, seed: 7 };
function checkpoint(name: string, o: Partial<GptqCheckpointOptions> & { groupSize: number; descAct: boolean }): string {
  const out = join(tmp, name);
  makeGptqCheckpoint({ ...BASE, ...o, out, overwrite: true });
  return out;
}

// W as the checkpoint states it (the reference dequantizer), and its other tensors as stored.
function referenceWeights(dir: string): Map<string, Float32Array> {
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  const q = cfg.quantization_config;
  const st = readSafetensorsFile(join(dir, 'model.safetensors')).tensors;
  const i32 = (name: string) => new Int32Array(new Uint8Array(st.get(name)!.bytes).buffer);
  const weights = new Map<string, Float32Array>();
  for (const [name, t] of st) if (!/\.(qweight|qzeros|scales|g_idx)$/.test(name)) weights.set(name, tensorToF32(t));
  const model = loadModelFiles(dir).config;
  for (let l = 0; l < model.numLayers; l++) for (const tg of TARGETS) {
    const p = targetPath(l, tg);
    const [n, k] = targetShape(model, tg);
    const w = referenceDequant(q.bits, q.group_size, q.checkpoint_format, i32(`${p}.qweight`), i32(`${p}.qzeros`), tensorToF32(st.get(`${p}.scales`)!), i32(`${p}.g_idx`), n, k);
    weights.set(`${p}.weight`, Float32Array.from(w)); // exact: integers × halves
  }
  return weights;
}

describe('a GPTQ checkpoint served', () => {
  const E = storiesExpected();
  const cases: [string, Partial<GptqCheckpointOptions> & { groupSize: number; descAct: boolean }][] = [
    ['group 32', { groupSize: 32, descAct: false }],
    ['group 32, desc_act', { groupSize: 32, descAct: true }],
    ['group -1, desc_act, sym, gptq_v2', { groupSize: -1, descAct: true, sym: true, format: 'gptq_v2' }],
  ];
  for (const [label, o] of cases) {
    it(`4-bit ${label}, float activations (accuracy level 0) = a float64 forward pass over the dequantized weights; readBase gives the same W`, async () => {
      const dir = checkpoint(label.replace(/[^a-z0-9]+/gi, '-'), o);
      const weights = referenceWeights(dir);
      const cfgJson = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
      // readBase (merges, DoRA norms) reads dequant(W0) back from disk
      const files = loadModelFiles(dir);
      const reader = new WeightReader(dir, { quantization: files.quantization!, config: files.config });
      for (const name of ['model.layers.0.self_attn.q_proj.weight', 'model.layers.4.mlp.down_proj.weight', 'model.norm.weight']) expect(Array.from(reader.read(name))).toEqual(Array.from(weights.get(name)!));
      const engine = await startEngine({ runtime: { modelDir: dir, intraOpThreads: 1, prequantizedAccuracyLevel: 0 } });
      let worst = 0;
      try {
        for (const c of E.generation_cases) {
          const ids: number[] = [];
          const lps: number[] = [];
          for await (const ev of engine.generate({ promptTokens: c.prompt_ids, maxTokens: 12, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: 0, adapter: null })) {
            if (ev.type === 'token') { ids.push(ev.id); lps.push(ev.logprob!); }
            if (ev.type === 'error') throw new Error(ev.error.message);
          }
          const ref = new ReferenceLlama(cfgJson, weights);
          let logits = ref.forward(c.prompt_ids).at(-1)!;
          ids.forEach((id, j) => {
            const max = Math.max(...logits);
            const lse = max + Math.log(logits.reduce((s, x) => s + Math.exp(x - max), 0));
            worst = Math.max(worst, Math.abs(lps[j] - (logits[id] - lse)));
            logits = ref.forward([id])[0];
          });
        }
      } finally {
        await engine.close();
      }
      console.log(`GPTQ 4-bit ${label} served (accuracy level 0) vs the float64 reference over its dequantized weights: max |Δ log-prob| ${worst.toExponential(2)}`);
      expect(worst).toBeLessThan(1e-4);
    }, 120_000);
  }
});

describe('a GPTQ checkpoint behind the server', () => {
  let dir = '';
  beforeAll(() => { dir = checkpoint('served', { groupSize: 32, descAct: true }); });

  const ask = async (url: string, model: string): Promise<{ text: string; lps: number[]; generated: number[] }> => {
    const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, prompt: 'Once upon a time, there was a little girl named Lily. She loved to play outside.', max_tokens: 8, temperature: 0, logprobs: 0, echo: true }) });
    expect(r.status).toBe(200);
    const body = await r.json();
    const lps = body.choices[0].logprobs.token_logprobs as number[];
    return { text: body.choices[0].text, lps: lps.slice(1, 17), generated: lps.slice(-8) }; // the prompt's (prefill), the 8 generated (decode)
  };
  const diff = (x: number[], y: number[]) => Math.max(...x.map((v, i) => Math.abs(v - y[i])));
  const metric = async (url: string, name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(await (await fetch(`${url}/metrics`)).text())?.[1] ?? 0);

  it('serves completions (accuracy level 4), a LoRA adapter batched beside base requests; --lora-mode merged re-quantizes dequant(W0) + ΔW', async () => {
    const { startTestServer, upload, adapterFiles } = await import('../helpers/server.ts');
    const server = await startTestServer({ model: dir, loraMode: 'merged' });
    try {
      expect((await upload(server.url, 'a', adapterFiles({ rank: 4, seed: 301, scaleB: 2 }))).status).toBe(201);
      const base = await ask(server.url, server.engine.info.name);
      const a = await ask(server.url, 'a'); // unmerged: its merged weights are being built meanwhile
      const [b2, a2] = await Promise.all([ask(server.url, server.engine.info.name), ask(server.url, 'a')]);
      expect(base.text.length).toBeGreaterThan(0);
      expect(diff(a.lps, base.lps)).toBeGreaterThan(0.05);
      for (const [x, y] of [[b2, base], [a2, a]] as const) expect(diff(x.lps, y.lps)).toBeLessThan(0.02);
      for (let i = 0; i < 200 && (await metric(server.url, 'loraserve_merged_cache_builds_total')) < 1; i++) await new Promise((r) => setTimeout(r, 50));
      const hits = await metric(server.url, 'loraserve_merged_cache_hits_total');
      const merged = await ask(server.url, 'a');
      expect(await metric(server.url, 'loraserve_merged_cache_hits_total')).toBeGreaterThan(hits);
      console.log(`GPTQ 4-bit group 32 desc_act behind the server: adapter vs base ${diff(a.lps, base.lps).toFixed(3)}; alone vs mixed batch: base ${diff(b2.lps, base.lps).toExponential(1)}, adapter ${diff(a2.lps, a.lps).toExponential(1)}; merged (re-quantized) vs unmerged adapter over the generated tokens ${diff(merged.generated, a.generated).toFixed(3)} (${merged.text === a.text ? 'same' : 'other'} text)`);
      expect(diff(merged.generated, a.generated)).toBeLessThan(0.5 * diff(a.lps, base.lps));
    } finally {
      await server.close();
    }
  }, 60_000);
});

describe('refused at start-up', () => {
  let good = '';
  beforeAll(() => { good = checkpoint('refusals', { groupSize: 32, descAct: false }); });

  // a copy of the good checkpoint with config.json's quantization_config and/or its tensors edited
  function variant(name: string, edit: { config?: (q: Record<string, unknown>) => void; tensors?: (t: Record<string, TensorToWrite>) => void }): string {
    const out = join(tmp, name);
    makeGptqCheckpoint({ ...BASE, groupSize: 32, descAct: false, out, overwrite: true });
    if (edit.config) {
      const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
      edit.config(cfg.quantization_config);
      writeFileSync(join(out, 'config.json'), JSON.stringify(cfg));
    }
    if (edit.tensors) {
      const t: Record<string, TensorToWrite> = {};
      for (const [name, e] of readSafetensorsFile(join(out, 'model.safetensors')).tensors) t[name] = { dtype: e.dtype, shape: e.shape, data: e.dtype === 'I32' ? new Int32Array(new Uint8Array(e.bytes).buffer) : new Uint8Array(e.bytes) };
      edit.tensors(t);
      writeFileSync(join(out, 'model.safetensors'), encodeSafetensors(t));
    }
    return out;
  }

  it('bits 3, an unknown checkpoint_format or quant_method: named by key before any weight is read', () => {
    expect(() => loadModelFiles(variant('bits3', { config: (q) => { q.bits = 3; } }))).toThrow(/quantization_config: "bits" must be 4 or 8 .*got 3/);
    expect(() => loadModelFiles(variant('format', { config: (q) => { q.checkpoint_format = 'gptq_v3'; } }))).toThrow(/"checkpoint_format" "gptq_v3" is not supported \(gptq or gptq_v2\)/);
    expect(() => loadModelFiles(variant('awq', { config: (q) => { q.quant_method = 'awq'; } }))).toThrow(/"quant_method" "awq" is not supported/);
  });

  it('a missing qzeros, a misshapen scales, g_idx out of range, groups MatMulNBits cannot lay out', () => {
    const p = 'model.layers.0.self_attn.q_proj';
    expect(() => loadModel(variant('no-qzeros', { tensors: (t) => { delete t[`${p}.qzeros`]; } }))).toThrow(new RegExp(`missing weight ${p}\\.qzeros \\[2,8\\]`));
    expect(() => loadModel(variant('bad-scales', { tensors: (t) => { t[`${p}.scales`] = { dtype: 'F16', shape: [1, 64], data: new Uint16Array(64) }; } }))).toThrow(new RegExp(`weight ${p}\\.scales has shape \\[1,64\\], expected \\[2,64\\]`));
    expect(() => loadModel(variant('stray', { tensors: (t) => { t['model.layers.0.mlp.foo.qzeros'] = { dtype: 'I32', shape: [1], data: new Int32Array(1) }; } }))).toThrow(/unexpected weight model\.layers\.0\.mlp\.foo\.qzeros/);
    const gOut = variant('g-idx', { tensors: (t) => { (t[`${p}.g_idx`].data as Int32Array)[5] = 2; } });
    expect(() => loadModel(gOut)).toThrow(new RegExp(`${p}\\.g_idx: input 5 is in group 2, outside \\[0, 2\\)`));
    // group_size 8: runs of 8 inputs, narrower than MatMulNBits' smallest block
    const narrow = join(tmp, 'group8');
    makeGptqCheckpoint({ ...BASE, groupSize: 8, descAct: false, out: narrow, overwrite: true });
    expect(() => loadModel(narrow, { keepQuantized: true })).toThrow(/cannot be laid out in MatMulNBits blocks/);
  });

  it('loraserve export (merging into the checkpoint) over a GPTQ checkpoint: refused by name, nothing written', async () => {
    const { exportMerged, parseExportArgs } = await import('../../src/merge/export-command.ts');
    const { adapterFiles } = await import('../helpers/server.ts');
    const adapterDir = join(tmp, 'export-adapter');
    mkdirSync(adapterDir, { recursive: true });
    const f = adapterFiles({ rank: 2, seed: 3 });
    writeFileSync(join(adapterDir, 'adapter_config.json'), f.config);
    writeFileSync(join(adapterDir, 'adapter_model.safetensors'), f.weights);
    const out = join(tmp, 'exported');
    await expect(exportMerged(parseExportArgs(['--model', good, '--adapter', adapterDir, '--out', out]))).rejects.toThrow(/is a GPTQ checkpoint \(4-bit.*export merges into a float checkpoint only/);
    expect(existsSync(out)).toBe(false);
  });

  it('--quantize with a GPTQ checkpoint', async () => {
    const { startTestServer } = await import('../helpers/server.ts');
    await expect(startTestServer({ model: good, quantize: { bits: 4, block: 32, symmetric: false, accuracyLevel: 4 } })).rejects.toThrow(/--quantize int4: .* is a GPTQ checkpoint, already quantized .*serve it without --quantize/);
  }, 60_000);
});
