// Unmerged (batched factors) vs merged weights vs an independent float64 reference that adds ΔW
// to the weights explicitly, on the real stories260K model.
import { describe, expect, it } from 'vitest';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { decodeAdapter } from '../../src/adapters/lora-adapter.ts';
import { prepareAdapter } from '../../src/adapters/host-cache.ts';
import { mergedWeights } from '../../src/merge/merged-sessions.ts';
import { buildLlamaGraph } from '../../src/runtime/llama-graph.ts';
import { targetShape, targetPath } from '../../src/runtime/model-targets.ts';
import { createSession } from '../../src/runtime/session.ts';
import { buildAdapter } from '../../scripts/make-test-adapters.ts';
import type { AdapterSpec } from '../../scripts/make-test-adapters.ts';
import { encodeSafetensors } from '../../src/runtime/safetensors.ts';
import { ReferenceLlama } from '../reference/llama-reference.ts';
import { makeRunner, maxAbsDiff } from '../helpers/runtime.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';
import { readFileSync } from 'node:fs';
import { bytesToF32 } from '../../src/runtime/dtype.ts';

const model = loadModel(STORIES_DIR);
const cfg = model.config;
const cfgJson = JSON.parse(readFileSync(`${STORIES_DIR}/config.json`, 'utf8'));
const readBase = (n: string) => model.weights.get(n)!;
const PROMPT = [1, 403, 407, 261, 378, 432, 383];
const V = cfg.vocabSize;

function decode(spec: AdapterSpec) {
  const files = buildAdapter(cfg, spec, model.weights);
  const r = decodeAdapter({ config: new TextEncoder().encode(JSON.stringify(files.config)), weights: encodeSafetensors(files.tensors) }, cfg, { maxRank: 64, modelName: 'stories260K' });
  if (!r.adapter) throw new Error(r.problems.join('; '));
  return { files, adapter: r.adapter };
}

// ΔW per weight name in float64, computed here from the raw files (independent of src/merge).
function referenceDeltas(files: ReturnType<typeof buildAdapter>, scaleOf: (key: string, r: number) => number): Map<string, Float64Array> {
  const deltas = new Map<string, Float64Array>();
  for (const [name, t] of Object.entries(files.tensors)) {
    if (!name.endsWith('lora_A.weight')) continue;
    const key = name.slice('base_model.model.'.length, -'.lora_A.weight'.length);
    const target = key.split('.').at(-1) as Parameters<typeof targetShape>[1];
    const [out, inDim] = targetShape(cfg, target);
    const A = bytesToF32(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), t.dtype as 'F32', name);
    const Bt = files.tensors[`base_model.model.${key}.lora_B.weight`];
    const B = bytesToF32(new Uint8Array(Bt.data.buffer, Bt.data.byteOffset, Bt.data.byteLength), Bt.dtype as 'F32', name);
    const r = t.shape[0];
    const s = scaleOf(key, r);
    const W0 = model.weights.get(`${key}.weight`)!;
    const merged = new Float64Array(out * inDim);
    for (let o = 0; o < out; o++) for (let i = 0; i < inDim; i++) {
      let acc = 0;
      for (let k = 0; k < r; k++) acc += B[o * r + k] * A[k * inDim + i];
      merged[o * inDim + i] = W0[o * inDim + i] + s * acc;
    }
    const Mt = files.tensors[`base_model.model.${key}.lora_magnitude_vector`];
    if (Mt) {
      const m = bytesToF32(new Uint8Array(Mt.data.buffer, Mt.data.byteOffset, Mt.data.byteLength), Mt.dtype as 'F32', 'm');
      for (let o = 0; o < out; o++) {
        let n = 0;
        for (let i = 0; i < inDim; i++) n += merged[o * inDim + i] ** 2;
        const g = m[o] / Math.sqrt(n);
        for (let i = 0; i < inDim; i++) merged[o * inDim + i] *= g;
      }
    }
    deltas.set(`${key}.weight`, merged.map((v, j) => v - W0[j]));
  }
  return deltas;
}

async function logitsFor(spec: AdapterSpec | null): Promise<{ unmerged: Float32Array; merged: Float32Array | null; base: Float32Array }> {
  const { runner, newRow } = await makeRunner(cfgJson, model.weights, 128, { lora: true });
  const seqLogits = async (row: number, opts: { session?: Awaited<ReturnType<typeof createSession>> } = {}) => {
    const pre = await runner.run([{ row, tokens: PROMPT, allLogits: true }], opts);
    const parts = [pre.logits];
    for (const t of [300, 301, 302]) parts.push((await runner.run([{ row, tokens: [t] }], opts)).logits);
    return Float32Array.from(parts.flatMap((p) => [...p]));
  };
  const base = await seqLogits(newRow());
  if (!spec) return { unmerged: base, merged: null, base };
  const { adapter } = decode(spec);
  const prepared = prepareAdapter(adapter, cfg, readBase);
  const row = newRow();
  runner.lora!.setRow(row, prepared);
  const unmerged = await seqLogits(row);
  const session = await createSession(buildLlamaGraph(cfg, mergedWeights(cfg, readBase, prepared), { maxPositions: 128 }), { intraOpThreads: 1 });
  const merged = await seqLogits(newRow(), { session });
  return { unmerged, merged, base };
}

function referenceLogits(deltas: Map<string, Float64Array>): Float64Array {
  const ref = new ReferenceLlama(cfgJson, model.weights, deltas);
  return Float64Array.from([...ref.forward(PROMPT), ...ref.forward([300]), ...ref.forward([301]), ...ref.forward([302])].flatMap((r) => [...r]));
}

const CASES: [string, AdapterSpec, (key: string, r: number) => number][] = [
  ['plain LoRA r=8 alpha=16, all seven targets', { rank: 8, alpha: 16, seed: 11, scaleB: 0.2 }, (_k, r) => 16 / r],
  ['rsLoRA r=16 alpha=8', { rank: 16, alpha: 8, rslora: true, seed: 12, scaleB: 0.2 }, (_k, r) => 8 / Math.sqrt(r)],
  ['rank_pattern and alpha_pattern', { rank: 4, alpha: 8, rankPattern: { q_proj: 8 }, alphaPattern: { v_proj: 32 }, seed: 13, scaleB: 0.2 }, (k, r) => (k.endsWith('v_proj') ? 32 : 8) / r],
  ['layers_to_transform [1, 3] on the attention projections', { rank: 8, alpha: 8, layers: [1, 3], targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj'], seed: 14 }, (_k, r) => 8 / r],
  ['DoRA r=4', { rank: 4, alpha: 8, dora: true, seed: 15 }, (_k, r) => 8 / r],
  ['BF16 tensors', { rank: 8, alpha: 8, dtype: 'BF16', seed: 16 }, (_k, r) => 8 / r],
];

describe('LoRA paths agree', () => {
  it.each(CASES)('%s: unmerged = merged = float64 reference (1e-4), and differs from the base model', async (_n, spec, scaleOf) => {
    const { unmerged, merged, base } = await logitsFor(spec);
    expect(maxAbsDiff(unmerged, merged!)).toBeLessThan(1e-4);
    const { files } = decode(spec);
    const ref = referenceLogits(referenceDeltas(files, scaleOf));
    expect(maxAbsDiff(unmerged, ref)).toBeLessThan(1e-4);
    expect(maxAbsDiff(merged!, ref)).toBeLessThan(1e-4);
    expect(maxAbsDiff(unmerged, base)).toBeGreaterThan(1e-2); // not a silent no-op
  });

  it('an adapter whose B is zero gives exactly the base logits; so does lora_alpha 0', async () => {
    const zero = await logitsFor({ rank: 8, zeroB: true, seed: 3 });
    expect(maxAbsDiff(zero.unmerged, zero.base)).toBe(0);
    expect(maxAbsDiff(zero.merged!, zero.base)).toBe(0);
    const alpha0 = await logitsFor({ rank: 8, alpha: 0, seed: 4 });
    expect(maxAbsDiff(alpha0.unmerged, alpha0.base)).toBe(0);
  });

  it('layers_to_transform leaves the other layers untouched (merged weights equal W0 there)', () => {
    const { adapter } = decode({ rank: 8, layers: [1, 3], targets: ['q_proj'], seed: 14 });
    const w = mergedWeights(cfg, readBase, prepareAdapter(adapter, cfg, readBase));
    expect(w.get(`${targetPath(0, 'q_proj')}.weight`)).toEqual(model.weights.get(`${targetPath(0, 'q_proj')}.weight`));
    expect(maxAbsDiff(w.get(`${targetPath(1, 'q_proj')}.weight`)!, model.weights.get(`${targetPath(1, 'q_proj')}.weight`)!)).toBeGreaterThan(0);
  });
});

describe('mixed batch', () => {
  it('adapter A (rank 4), adapter B (rank 64) and no adapter in one batch: each row as when run alone', async () => {
    const A = prepareAdapter(decode({ rank: 4, targets: ['q_proj', 'v_proj'], seed: 21 }).adapter, cfg, readBase);
    const B = prepareAdapter(decode({ rank: 64, alpha: 32, seed: 22 }).adapter, cfg, readBase);
    const prompts = [PROMPT, [1, 317, 269, 274, 287], [1, 403]];
    const adapters = [A, B, null];
    const alone: Float32Array[][] = [];
    for (let i = 0; i < 3; i++) {
      const { runner, newRow } = await makeRunner(cfgJson, model.weights, 128, { lora: true });
      const row = newRow();
      runner.lora!.setRow(row, adapters[i]);
      const out = [(await runner.run([{ row, tokens: prompts[i] }])).logits];
      for (const t of [300, 301, 302, 303]) out.push((await runner.run([{ row, tokens: [t] }])).logits);
      alone.push(out);
    }
    // rank 4 first (the arena grows its rank under a filled row), or rank 64 first (rank 4 is
    // padded into the wider rows as it is set)
    for (const order of [[0, 1, 2], [1, 0, 2]]) {
      const { runner, newRow } = await makeRunner(cfgJson, model.weights, 128, { lora: true });
      const rows = [newRow(), newRow(), newRow()];
      for (const i of order) runner.lora!.setRow(rows[i], adapters[i]);
      // prefill each alone (as the scheduler does), then decode all three together
      for (let i = 0; i < 3; i++) expect(maxAbsDiff((await runner.run([{ row: rows[i], tokens: prompts[i] }])).logits, alone[i][0])).toBeLessThan(1e-5);
      for (const [s, t] of [300, 301, 302, 303].entries()) {
        const r = await runner.run(rows.map((row) => ({ row, tokens: [t] })));
        for (let i = 0; i < 3; i++) expect(maxAbsDiff(r.logits.subarray(i * V, (i + 1) * V), alone[i][s + 1])).toBeLessThan(1e-5);
      }
    }
  });
});
