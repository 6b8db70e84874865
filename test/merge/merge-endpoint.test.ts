// POST /v1/adapters/merge over real HTTP (127.0.0.1, stories260K): merges with ties, dare_linear and
// ties_delta are stored with their recipe and served; the stored factors are mergeAdapters' output on
// the decoded inputs; served unmerged and merged (--lora-mode merged, after a restart) they give the
// same log-probs; each differs from its inputs. Bad requests get a 4xx naming the field and leave
// the adapters and the store as they were.
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { adapterFiles, startTestServer, upload } from '../helpers/server.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';
import { loadModel, loadModelFiles } from '../../src/runtime/model-loader.ts';
import { encodeSafetensors } from '../../src/runtime/safetensors.ts';
import { buildAdapter } from '../../scripts/make-test-adapters.ts';
import { parseSafetensors } from '../../src/runtime/safetensors.ts';
import { decodeAdapter } from '../../src/adapters/lora-adapter.ts';
import type { AdapterFiles } from '../../src/adapters/lora-adapter.ts';
import { mergeAdapters, mergeInputFromAdapter } from '../../src/merge/index.ts';
import type { MergeOptions } from '../../src/merge/index.ts';
import { peftTensorName } from '../../src/adapters/lora-adapter.ts';
import type { Target } from '../../src/runtime/model-targets.ts';
import type { AdapterSpec } from '../../scripts/make-test-adapters.ts';

const cfg = loadModelFiles(STORIES_DIR).config;
const MODEL = 'stories260K';
const SPECS: Record<string, AdapterSpec> = {
  a: { rank: 4, seed: 101, scaleB: 2 },
  b: { rank: 4, seed: 102, scaleB: 2, alpha: 8, targets: ['q_proj', 'v_proj', 'o_proj', 'down_proj'] },
  c: { rank: 8, seed: 103, scaleB: 2, rslora: true, alpha: 4 },
};

const post = (url: string, body: unknown) => fetch(`${url}/v1/adapters/merge`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

async function logprobs(url: string, model: string): Promise<{ tokens: string[]; lp: number[] }> {
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt: 'Once upon a time there was', max_tokens: 12, temperature: 0, logprobs: 1, ignore_eos: true }),
  });
  expect(r.status).toBe(200);
  const lp = (await r.json()).choices[0].logprobs;
  return { tokens: lp.tokens, lp: lp.token_logprobs };
}

const maxAbs = (x: number[], y: number[]) => Math.max(...x.map((v, i) => Math.abs(v - y[i])));
const differs = (x: { tokens: string[]; lp: number[] }, y: { tokens: string[]; lp: number[] }) => x.tokens.join('|') !== y.tokens.join('|') || maxAbs(x.lp, y.lp) > 1e-3;

const MERGES: { name: string; body: Record<string, unknown>; options: MergeOptions; inputs: string[]; weights: number[] }[] = [
  { name: 'm-ties', inputs: ['a', 'b'], weights: [0.7, 0.5], options: { combination_type: 'ties', density: 0.5 } },
  { name: 'm-dare', inputs: ['a', 'b'], weights: [0.6, 0.6], options: { combination_type: 'dare_linear', density: 0.7, seed: 5 } },
  { name: 'm-delta', inputs: ['a', 'b', 'c'], weights: [0.6, 0.5, -0.4], options: { combination_type: 'ties_delta', density: 0.6, svd_rank: 6, majority_sign_method: 'frequency' } },
].map((m) => ({ ...m, options: m.options as MergeOptions, body: { name: m.name, adapters: m.inputs, weights: m.weights, ...m.options } }));

describe('POST /v1/adapters/merge', () => {
  it('stores and serves merges with their recipe; same tensors as mergeAdapters; unmerged = merged path; survives a restart', async () => {
    const adapters = mkdtempSync(join(tmpdir(), 'loraserve-merge-'));
    const files: Record<string, AdapterFiles> = {};
    let server = await startTestServer({ adapters, loraMode: 'unmerged' });
    const unmerged: Record<string, { tokens: string[]; lp: number[] }> = {};
    const recipes: Record<string, unknown> = {};
    const versions: Record<string, string> = {};
    try {
      for (const [n, spec] of Object.entries(SPECS)) {
        files[n] = adapterFiles(spec);
        const up = await upload(server.url, n, adapterFiles(spec)); // the registry takes its files over: upload a copy
        expect(up.status).toBe(201);
        versions[n] = (await up.json()).version;
      }
      for (const m of MERGES) {
        const r = await post(server.url, m.body);
        const body = await r.json();
        expect(r.status, JSON.stringify(body)).toBe(201);
        expect(body).toMatchObject({ name: m.name, status: 'ready', source: 'store', object: 'adapter' });
        expect(body.recipe).toMatchObject({
          combination_type: m.options.combination_type, combination_applied: m.options.combination_type, weights: m.weights,
          inputs: m.inputs.map((n, i) => ({ name: n, version: versions[n], weight: m.weights[i] })),
          density: m.options.density, seed: m.options.seed ?? 0, output: 'factored',
        });
        recipes[m.name] = body.recipe;

        // the stored adapter: a plain PEFT LoRA whose factors are mergeAdapters' on the decoded inputs
        const dir = join(adapters, m.name);
        const config = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
        const expected = mergeAdapters(m.inputs.map((n, i) => mergeInputFromAdapter(decodeAdapter(files[n], cfg, { maxRank: 64, modelName: MODEL }).adapter!, SPECS[n].rank, i)), m.weights, m.options);
        expect(config).toMatchObject({ peft_type: 'LORA', r: expected.plan.rank, lora_alpha: expected.plan.rank, use_rslora: false, use_dora: false });
        expect(config.rank_pattern ?? {}).toEqual({});
        expect(config.target_modules).toEqual(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']); // the union (every merge has a)
        expect(body.rank).toBe(expected.plan.rank);
        expect(body.recipe.relative_error).toBe(expected.maxRelError);
        const tensors = parseSafetensors(new Uint8Array(readFileSync(join(dir, 'adapter_model.safetensors'))), 'merged').tensors;
        expect(tensors.size).toBe(2 * expected.targets.size);
        for (const [key, t] of expected.targets) {
          if (t.kind !== 'factors') throw new Error('factored expected');
          const [layer, target] = key.split('.');
          for (const [part, want] of [['lora_A', t.a], ['lora_B', t.b]] as const) {
            const got = tensors.get(peftTensorName(Number(layer), target as Target, part))!;
            expect(got.dtype).toBe('F32');
            expect(new Float32Array(got.bytes.slice().buffer)).toEqual(want);
          }
        }
        expect(JSON.parse(readFileSync(join(dir, 'merge_recipe.json'), 'utf8'))).toEqual(body.recipe);
      }
      const delta = recipes['m-delta'] as { relative_error: number; rank: number };
      expect(delta.rank).toBe(6);
      expect(delta.relative_error).toBeGreaterThan(0);
      expect(delta.relative_error).toBeLessThan(1);

      // served (unmerged path); each merge differs from each of its inputs
      for (const n of ['a', 'b', 'c', ...MERGES.map((m) => m.name)]) unmerged[n] = await logprobs(server.url, n);
      for (const m of MERGES) for (const n of m.inputs) expect(differs(unmerged[m.name], unmerged[n]), `${m.name} vs ${n}`).toBe(true);
      const list = (await (await fetch(`${server.url}/v1/adapters`)).json()).data as { name: string; recipe: unknown }[];
      expect(list.find((x) => x.name === 'a')!.recipe).toBeNull();
      expect(list.find((x) => x.name === 'm-ties')!.recipe).toEqual(recipes['m-ties']);

      // restart with the merged path forced: same adapters and recipes; the same log-probs within 1e-4
      await server.close();
      server = await startTestServer({ adapters, loraMode: 'merged' });
      for (const m of MERGES) {
        const info = await (await fetch(`${server.url}/v1/adapters/${m.name}`)).json();
        expect(info.recipe).toEqual(recipes[m.name]);
        await logprobs(server.url, m.name); // the first steps build the merged session
        const again = await logprobs(server.url, m.name);
        expect((await (await fetch(`${server.url}/v1/adapters/${m.name}`)).json()).merged).toBe(true);
        expect(again.tokens).toEqual(unmerged[m.name].tokens);
        expect(maxAbs(again.lp, unmerged[m.name].lp)).toBeLessThan(1e-4);
      }
      expect((await server.engine.stats()).merged.hits).toBeGreaterThan(0);
    } finally {
      await server.close();
    }
  }, 60_000);

  it('refuses bad requests with a 4xx naming the field, leaving no adapter behind', async () => {
    const adapters = mkdtempSync(join(tmpdir(), 'loraserve-merge-bad-'));
    const server = await startTestServer({ adapters });
    try {
      for (const [n, spec] of Object.entries({ ...SPECS, x1: { rank: 4, seed: 7, baseModel: 'org/stories260K' }, x2: { rank: 4, seed: 8, baseModel: 'org/other-model' } })) {
        expect((await upload(server.url, n, adapterFiles(spec))).status).toBe(201);
      }
      const dora = buildAdapter(cfg, { rank: 4, seed: 9, scaleB: 2, dora: true }, loadModel(STORIES_DIR).weights);
      expect((await upload(server.url, 'd', { config: new TextEncoder().encode(JSON.stringify(dora.config)), weights: encodeSafetensors(dora.tensors) })).status).toBe(201);
      const listing = () => readdirSync(adapters).sort();
      const served = async () => ((await (await fetch(`${server.url}/v1/adapters`)).json()).data as { name: string; version: string }[]).map((a) => `${a.name}@${a.version}`);
      const storeBefore = listing();
      const servedBefore = await served();
      const ok = { name: 'new', adapters: ['a', 'b'], weights: [0.5, 0.5], combination_type: 'ties', density: 0.5 };
      const cases: [string, Record<string, unknown>, number, string, RegExp][] = [
        ['density 0', { ...ok, density: 0 }, 400, 'density', /density/],
        ['density 1.5', { ...ok, density: 1.5 }, 400, 'density', /density/],
        ['unequal lists', { ...ok, weights: [1] }, 400, 'weights', /weights/],
        ['empty list', { ...ok, adapters: [], weights: [] }, 400, 'adapters', /at least one/],
        ['name conflict', { ...ok, name: 'c' }, 409, 'name', /'c'/],
        ['name of the base model', { ...ok, name: MODEL }, 409, 'name', /base model/],
        ['different bases', { ...ok, adapters: ['x1', 'x2'] }, 400, 'adapters', /"x1".*"x2".*different base/],
        ['svd_rank 0', { ...ok, combination_type: 'ties_svd', svd_rank: 0 }, 400, 'svd_rank', /svd_rank/],
        ['unknown input', { ...ok, adapters: ['a', 'nope'] }, 404, 'adapters', /'nope'/],
        ['unequal ranks (ties)', { ...ok, adapters: ['a', 'c'] }, 400, 'adapters', /same r/],
        ['a DoRA input (refused in the merge worker)', { ...ok, adapters: ['a', 'd'] }, 400, 'adapters', /adapters\[1\] is a DoRA adapter/],
        ['output merged for a PEFT type', { ...ok, output: 'merged' }, 400, 'output', /only for the delta combination types/],
        ['unknown field', { ...ok, densty: 0.5 }, 400, 'densty', /unknown field/],
        ['bad name', { ...ok, name: '../x' }, 400, 'name', /name/],
      ];
      for (const [what, body, status, param, message] of cases) {
        const r = await post(server.url, body);
        const e = (await r.json()).error;
        expect(r.status, what).toBe(status);
        expect(e.param, what).toBe(param);
        expect(e.message, what).toMatch(message);
        expect(listing(), what).toEqual(storeBefore);
        expect(await served(), what).toEqual(servedBefore);
      }
      // a body that is not a JSON object
      const text = await fetch(`${server.url}/v1/adapters/merge`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'x' });
      expect(text.status).toBe(400);
      expect((await text.json()).error.param).toBe('body');
      expect(listing()).toEqual(storeBefore);
      // a body over the 64 KiB limit: refused before it is parsed
      const huge = await post(server.url, { ...ok, adapters: Array.from({ length: 20_000 }, (_, i) => `a${i}`) });
      expect(huge.status).toBe(413);
      expect(listing()).toEqual(storeBefore);
      // the same merge sent twice at once: one is stored, the other is a 409, and one adapter results
      const [x, y] = await Promise.all([post(server.url, { ...ok, name: 'twice' }), post(server.url, { ...ok, name: 'twice' })]);
      expect([x.status, y.status].sort()).toEqual([201, 409]);
      expect(listing()).toEqual([...storeBefore, 'twice'].sort());
      expect((await served()).filter((a) => a.startsWith('twice@'))).toHaveLength(1);
    } finally {
      await server.close();
    }
    // without the admin key
    const keyed = await startTestServer({ adminKey: 'secret', enableLocalAdmin: false });
    try {
      expect((await post(keyed.url, { name: 'n', adapters: ['a'], weights: [1], combination_type: 'linear' })).status).toBe(401);
    } finally {
      await keyed.close();
    }
  }, 60_000);
});
