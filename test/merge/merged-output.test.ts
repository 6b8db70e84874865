// Delta-space merges kept as merged weights only (issue 13, `output: "merged"`): the stored adapter holds
// each target's ΔW (delta_weight, equal to mergeAdapters' output) and no factors; it is served on the
// merged path whatever --lora-mode says, with log-probs equal to an independent float64 forward pass
// over W0 + ΔW (test/reference/llama-reference.ts) within 1e-4; its rows step apart from others in
// a batch with the same results as alone; it survives a restart, exports to a full checkpoint, is
// refused as a merge input, and a merged-weights cache too small for it fails its requests alone.
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { adapterFiles, startTestServer, upload } from '../helpers/server.ts';
import { STORIES_DIR, storiesExpected } from '../helpers/fixtures.ts';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { parseSafetensors } from '../../src/runtime/safetensors.ts';
import { targetPath } from '../../src/runtime/model-targets.ts';
import type { Target } from '../../src/runtime/model-targets.ts';
import { decodeAdapter, deltaTensorName } from '../../src/adapters/lora-adapter.ts';
import type { AdapterFiles } from '../../src/adapters/lora-adapter.ts';
import { mergeAdapters, mergeInputFromAdapter } from '../../src/merge/index.ts';
import type { MergeOptions } from '../../src/merge/index.ts';
import { exportCommand } from '../../src/merge/export-command.ts';
import { greedyReference, ReferenceLlama } from '../reference/llama-reference.ts';
import type { AdapterSpec } from '../../scripts/make-test-adapters.ts';

const root = mkdtempSync(join(tmpdir(), 'loraserve-merged-output-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const base = loadModel(STORIES_DIR);
const cfg = base.config;
const rawConfig = JSON.parse(readFileSync(join(STORIES_DIR, 'config.json'), 'utf8'));
const SPECS: Record<string, AdapterSpec> = {
  a: { rank: 4, seed: 101, scaleB: 2 },
  b: { rank: 4, seed: 102, scaleB: 2, alpha: 8, targets: ['q_proj', 'v_proj', 'o_proj', 'down_proj'] },
  c: { rank: 8, seed: 103, scaleB: 2, rslora: true, alpha: 4 },
};
const OPTIONS: MergeOptions = { combination_type: 'ties_delta', density: 0.6, majority_sign_method: 'frequency', output: 'merged' };
const WEIGHTS = [0.6, 0.5, -0.4];
const BODY = { name: 'exact', adapters: ['a', 'b', 'c'], weights: WEIGHTS, ...OPTIONS };

const c0 = storiesExpected().generation_cases[0];
const PROMPT = [...c0.prompt_ids, ...c0.greedy_ids].slice(0, 24);
const GEN = 10;

interface Run { ids: number[]; lp: number[] }

// Greedy continuation of PROMPT with each chosen token's log-prob (token ids from the top-1 alternatives' order).
async function served(url: string, model: string): Promise<{ text: string; lp: number[] }> {
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt: PROMPT, max_tokens: GEN, temperature: 0, logprobs: 1, ignore_eos: true }),
  });
  const body = await r.json();
  expect(r.status, JSON.stringify(body)).toBe(200);
  return { text: body.choices[0].text, lp: body.choices[0].logprobs.token_logprobs };
}

// The float64 reference over W0 + ΔW: greedy ids and their log-probs.
function reference(deltas: Map<string, Float64Array>): Run {
  return greedyReference(new ReferenceLlama(rawConfig, base.weights, deltas), PROMPT, GEN);
}

const maxAbs = (x: number[], y: number[]) => Math.max(...x.map((v, i) => Math.abs(v - y[i])));

describe('output "merged": ΔW kept as merged weights only', () => {
  it('stores ΔW, serves it on the merged path in any mode (= float64 reference), apart in mixed batches, across a restart and as an export', async () => {
    const store = join(root, 'store');
    const files: Record<string, AdapterFiles> = {};
    let alone: { text: string; lp: number[] } = { text: '', lp: [] };
    let server = await startTestServer({ adapters: store, loraMode: 'unmerged' });
    try {
      for (const [n, spec] of Object.entries(SPECS)) {
        files[n] = adapterFiles(spec);
        expect((await upload(server.url, n, adapterFiles(spec))).status).toBe(201);
      }
      const r = await fetch(`${server.url}/v1/adapters/merge`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(BODY) });
      const body = await r.json();
      expect(r.status, JSON.stringify(body)).toBe(201);
      expect(body.recipe).toMatchObject({ output: 'merged', relative_error: 0, combination_applied: 'ties_delta' });

      // the stored tensors: exactly mergeAdapters' ΔW per target, and nothing else
      const expected = mergeAdapters(['a', 'b', 'c'].map((n, i) => mergeInputFromAdapter(decodeAdapter(files[n], cfg, { maxRank: 64, modelName: 'stories260K' }).adapter!, SPECS[n].rank, i)), WEIGHTS, OPTIONS);
      const tensors = parseSafetensors(new Uint8Array(readFileSync(join(store, 'exact', 'adapter_model.safetensors'))), 'exact').tensors;
      expect(tensors.size).toBe(expected.targets.size);
      const deltas = new Map<string, Float64Array>();
      for (const [key, t] of expected.targets) {
        if (t.kind !== 'delta') throw new Error('a full ΔW expected');
        const [layer, target] = key.split('.');
        const got = tensors.get(deltaTensorName(Number(layer), target as Target))!;
        expect(got.shape).toEqual([t.out, t.in]);
        expect(new Float32Array(got.bytes.slice().buffer)).toEqual(t.delta);
        deltas.set(`${targetPath(Number(layer), target as Target)}.weight`, Float64Array.from(t.delta));
      }

      // served on its merged session although --lora-mode is unmerged; = the float64 reference
      const ref = reference(deltas);
      alone = await served(server.url, 'exact');
      const err = maxAbs(alone.lp, ref.lp);
      console.log(`merged-only adapter: max |Δ log-prob| vs the float64 reference over W0 + ΔW ${err.toExponential(2)}`);
      expect(err).toBeLessThan(1e-4);
      const stats = await server.engine.stats();
      expect(stats.merged.builds).toBe(1);
      expect(stats.merged.hits).toBeGreaterThan(0);
      const info = await (await fetch(`${server.url}/v1/adapters/exact`)).json();
      expect(info.merged).toBe(true);
      // it differs from each input and from the base model
      for (const n of ['a', 'b', 'c', server.engine.info.name]) expect(maxAbs((await served(server.url, n)).lp, alone.lp), n).toBeGreaterThan(1e-3);

      // in a mixed batch (base, a factored adapter, itself twice): each as alone
      const solo = { base: await served(server.url, server.engine.info.name), a: await served(server.url, 'a') };
      const together = await Promise.all([served(server.url, 'exact'), served(server.url, server.engine.info.name), served(server.url, 'exact'), served(server.url, 'a')]);
      for (const [got, want] of [[together[0], alone], [together[1], solo.base], [together[2], alone], [together[3], solo.a]] as const) {
        expect(got.text).toBe(want.text);
        expect(maxAbs(got.lp, want.lp)).toBeLessThan(1e-4);
      }

      // it cannot be an input to another merge (it has no factors)
      const again = await fetch(`${server.url}/v1/adapters/merge`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'again', adapters: ['a', 'exact'], weights: [1, 1], combination_type: 'linear_delta' }) });
      const e = (await again.json()).error;
      expect(again.status).toBe(400);
      expect(e.param).toBe('adapters');
      expect(e.message).toMatch(/adapters\[1\] is kept as merged weights only/);

      // after a restart (merged mode this time): the same
      await server.close();
      server = await startTestServer({ adapters: store, loraMode: 'merged' });
      expect(maxAbs((await served(server.url, 'exact')).lp, alone.lp)).toBeLessThan(1e-4);
    } finally {
      await server.close();
    }

    // an export of it, served as a plain model: the same log-probs
    const out = join(root, 'export');
    await exportCommand(['--model', STORIES_DIR, '--adapter', join(store, 'exact'), '--out', out]);
    const plain = await startTestServer({ model: out, adapters: join(root, 'empty') });
    try {
      expect(maxAbs((await served(plain.url, plain.engine.info.name)).lp, alone.lp)).toBeLessThan(1e-4);
    } finally {
      await plain.close();
    }
  }, 120_000);

  it('with a merged-weights cache too small for it, its requests fail with a 503 naming --merged-cache-mb; others are served', async () => {
    const store = join(root, 'small');
    const server = await startTestServer({ adapters: store, mergedCacheBytes: 0 });
    try {
      for (const [n, spec] of Object.entries(SPECS)) expect((await upload(server.url, n, adapterFiles(spec))).status).toBe(201);
      const r = await fetch(`${server.url}/v1/adapters/merge`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(BODY) });
      expect(r.status).toBe(201);
      const [bad, good] = await Promise.all([
        fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'exact', prompt: PROMPT, max_tokens: 4 }) }),
        served(server.url, 'a'),
      ]);
      const e = (await bad.json()).error;
      expect(bad.status).toBe(503);
      expect(e.message).toMatch(/merged weights only.*--merged-cache-mb/);
      expect(good.lp).toHaveLength(GEN);
    } finally {
      await server.close();
    }
  }, 60_000);
});
