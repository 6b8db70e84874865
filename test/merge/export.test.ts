// loraserve export (issue 13): a checkpoint with the adapter merged in, served as a plain model, gives
// the adapter's log-probs (served unmerged on the base model) within 1e-4; plain LoRA and DoRA;
// sharded output loads to the same weights; the stored dtype is kept; bad flags are refused by name.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportCommand, exportMerged, parseExportArgs } from '../../src/merge/export-command.ts';
import { mergeLora } from '../../src/merge/merge-lora.ts';
import { loadModel, loadModelFiles } from '../../src/runtime/model-loader.ts';
import { encodeSafetensors, readSafetensorsFile } from '../../src/runtime/safetensors.ts';
import type { TensorToWrite } from '../../src/runtime/safetensors.ts';
import { f32ToDtypeBytes, bytesToF32 } from '../../src/runtime/dtype.ts';
import { targetPath, targetShape } from '../../src/runtime/model-targets.ts';
import { buildAdapter, writeAdapter } from '../../scripts/make-test-adapters.ts';
import { startTestServer } from '../helpers/server.ts';
import { STORIES_DIR, storiesExpected } from '../helpers/fixtures.ts';

const root = mkdtempSync(join(tmpdir(), 'loraserve-export-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const base = loadModel(STORIES_DIR);
const cfg = base.config;
// the strengths of test/lora/lora-equivalence.test.ts's cases
const plainSpec = { rank: 8, alpha: 16, seed: 11, scaleB: 0.2 };
const doraSpec = { rank: 4, alpha: 8, seed: 15, dora: true };
const plainDir = join(root, 'adapters-src', 'plain');
const doraDir = join(root, 'adapters-src', 'dora');
writeAdapter(plainDir, buildAdapter(cfg, plainSpec));
writeAdapter(doraDir, buildAdapter(cfg, doraSpec, base.weights));

// A prompt long enough to cover many positions: a case's prompt and its greedy continuation.
const c0 = storiesExpected().generation_cases[0];
const PROMPT = [...c0.prompt_ids, ...c0.greedy_ids].slice(0, 40);

async function promptLogprobs(url: string, model: string): Promise<number[]> {
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt: PROMPT, max_tokens: 1, temperature: 0, logprobs: 0, echo: true }),
  });
  expect(r.status).toBe(200);
  const body = await r.json() as { choices: { logprobs: { token_logprobs: (number | null)[] } }[] };
  return body.choices[0].logprobs.token_logprobs.slice(1, PROMPT.length).map((x) => x!);
}

const u8 = (b: ArrayBufferView): Uint8Array => Uint8Array.from(new Uint8Array(b.buffer, b.byteOffset, b.byteLength));
const maxDiff = (a: number[], b: number[]): number => { expect(a.length).toBe(b.length); return Math.max(...a.map((x, i) => Math.abs(x - b[i]))); };

// The adapters served unmerged on the base model, and the base model itself.
const reference = new Map<string, number[]>();
beforeAll(async () => {
  const store = join(root, 'store');
  for (const n of ['plain', 'dora']) {
    mkdirSync(join(store, n), { recursive: true });
    for (const f of ['adapter_config.json', 'adapter_model.safetensors']) copyFileSync(join(root, 'adapters-src', n, f), join(store, n, f));
  }
  const server = await startTestServer({ adapters: store, loraMode: 'unmerged' });
  try {
    reference.set('base', await promptLogprobs(server.url, server.engine.info.name));
    reference.set('plain', await promptLogprobs(server.url, 'plain'));
    reference.set('dora', await promptLogprobs(server.url, 'dora'));
  } finally {
    await server.close();
  }
});

async function servedExport(dir: string): Promise<number[]> {
  const server = await startTestServer({ model: dir, adapters: mkdtempSync(join(root, 'empty-store-')) });
  try {
    return await promptLogprobs(server.url, server.engine.info.name);
  } finally {
    await server.close();
  }
}

describe('loraserve export', () => {
  it('a plain LoRA export served as a plain model gives the adapter\'s log-probs within 1e-4', async () => {
    const out = join(root, 'export-plain');
    await exportCommand(['--model', STORIES_DIR, '--adapter', plainDir, '--out', out]);
    expect(readdirSync(out).sort()).toEqual(readdirSync(STORIES_DIR).filter((f) => f !== 'llama2c').sort()); // same files, one model.safetensors
    for (const f of ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json']) {
      expect(readFileSync(join(out, f)), f).toEqual(readFileSync(join(STORIES_DIR, f)));
    }
    const lp = await servedExport(out);
    console.log(`plain export: max |Δ log-prob| vs the adapter served unmerged ${maxDiff(lp, reference.get('plain')!).toExponential(2)}, vs the base model ${maxDiff(lp, reference.get('base')!).toFixed(3)}`);
    expect(maxDiff(lp, reference.get('plain')!)).toBeLessThanOrEqual(1e-4);
    expect(maxDiff(lp, reference.get('base')!)).toBeGreaterThan(1e-2); // the adapter did change the model
    // untouched tensors are copied byte for byte, merged ones are W0 + s·B·A
    const st = readSafetensorsFile(join(out, 'model.safetensors'));
    const src = readSafetensorsFile(join(STORIES_DIR, 'model.safetensors'));
    expect(st.metadata.format).toBe('pt');
    expect(u8(st.tensors.get('model.embed_tokens.weight')!.bytes)).toEqual(u8(src.tensors.get('model.embed_tokens.weight')!.bytes));
    expect(u8(st.tensors.get(`${targetPath(0, 'q_proj')}.weight`)!.bytes)).not.toEqual(u8(src.tensors.get(`${targetPath(0, 'q_proj')}.weight`)!.bytes));
    expect(readdirSync(root).filter((f) => f.includes('.tmp-') || f.includes('.old-'))).toEqual([]);
  }, 60_000);

  it('a DoRA export gives the DoRA adapter\'s log-probs within 1e-4', async () => {
    const out = join(root, 'export-dora');
    const r = await exportMerged(parseExportArgs(['--model', STORIES_DIR, '--adapter', doraDir, '--out', out]));
    expect(r.useDora).toBe(true);
    expect(r.mergedTargets).toBe(cfg.numLayers * 7);
    const lp = await servedExport(out);
    console.log(`DoRA export: max |Δ log-prob| vs the adapter served unmerged ${maxDiff(lp, reference.get('dora')!).toExponential(2)}, vs the base model ${maxDiff(lp, reference.get('base')!).toFixed(3)}`);
    expect(maxDiff(lp, reference.get('dora')!)).toBeLessThanOrEqual(1e-4);
    expect(maxDiff(lp, reference.get('base')!)).toBeGreaterThan(1e-2);
  }, 60_000);

  it('shards above --shard-mb with an index in huggingface_hub\'s format, and loads and serves the same', async () => {
    const single = join(root, 'export-plain');
    const out = join(root, 'export-sharded');
    const r = await exportMerged(parseExportArgs(['--model', STORIES_DIR, '--adapter', plainDir, '--out', out, '--shard-mb', '0.3']));
    expect(r.files.length).toBeGreaterThanOrEqual(3);
    expect(r.files).toEqual(r.files.map((_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(r.files.length).padStart(5, '0')}.safetensors`));
    expect(existsSync(join(out, 'model.safetensors'))).toBe(false);
    const index = JSON.parse(readFileSync(join(out, 'model.safetensors.index.json'), 'utf8')) as { metadata: { total_size: number }; weight_map: Record<string, string> };
    let total = 0;
    const seen = new Set<string>();
    for (const f of r.files) {
      const st = readSafetensorsFile(join(out, f));
      let bytes = 0;
      for (const [name, t] of st.tensors) { expect(index.weight_map[name]).toBe(f); seen.add(name); bytes += t.bytes.byteLength; }
      expect(bytes <= 0.3e6 || st.tensors.size === 1).toBe(true); // under the limit, or one tensor larger than it
      total += bytes;
    }
    expect(index.metadata.total_size).toBe(total);
    expect(Object.keys(index.weight_map).sort()).toEqual([...seen].sort());
    // our loader reads the shards to exactly the single-file export's weights
    const a = loadModel(out).weights;
    const b = loadModel(single).weights;
    expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
    for (const [name, w] of a) expect(w, name).toEqual(b.get(name));
    const lp = await servedExport(out);
    expect(maxDiff(lp, reference.get('plain')!)).toBeLessThanOrEqual(1e-4);
    // a sharded checkpoint is also read as --model: back into one file, the same tensors
    const again = join(root, 'export-from-sharded');
    const r2 = await exportMerged(parseExportArgs(['--model', out, '--adapter', plainDir, '--out', again]));
    expect(r2.files).toEqual(['model.safetensors']);
    expect(existsSync(join(again, 'model.safetensors.index.json'))).toBe(false);
    expect([...loadModel(again).weights.keys()].sort()).toEqual([...b.keys()].sort());
  }, 60_000);

  it('keeps the stored dtype: a BF16 base gives BF16 weights, the merged ones rounded once from float32', async () => {
    const bfModel = join(root, 'model-bf16');
    mkdirSync(bfModel);
    for (const f of readdirSync(STORIES_DIR)) if (f !== 'model.safetensors' && f !== 'llama2c') copyFileSync(join(STORIES_DIR, f), join(bfModel, f));
    const tensors: Record<string, TensorToWrite> = {};
    for (const [name, t] of readSafetensorsFile(join(STORIES_DIR, 'model.safetensors')).tensors) {
      tensors[name] = { dtype: 'BF16', shape: t.shape, data: f32ToDtypeBytes(bytesToF32(t.bytes, t.dtype, name), 'BF16') };
    }
    writeFileSync(join(bfModel, 'model.safetensors'), encodeSafetensors(tensors));
    const out = join(root, 'export-bf16');
    await exportMerged(parseExportArgs(['--model', bfModel, '--adapter', plainDir, '--out', out]));
    const st = readSafetensorsFile(join(out, 'model.safetensors'));
    for (const t of st.tensors.values()) expect(t.dtype, t.name).toBe('BF16');
    expect(u8(st.tensors.get('model.norm.weight')!.bytes)).toEqual(u8(tensors['model.norm.weight'].data));
    const adapter = buildAdapter(cfg, plainSpec);
    const name = targetPath(1, 'v_proj');
    const [rows, cols] = targetShape(cfg, 'v_proj');
    const f32 = (k: string): Float32Array => new Float32Array((adapter.tensors[k].data as Uint8Array).slice().buffer);
    const w0 = bytesToF32(tensors[`${name}.weight`].data as Uint8Array, 'BF16', name);
    const want = f32ToDtypeBytes(mergeLora(w0, { a: f32(`base_model.model.${name}.lora_A.weight`), b: f32(`base_model.model.${name}.lora_B.weight`), rank: 8, scale: 2, magnitude: null }, rows, cols), 'BF16');
    expect(u8(st.tensors.get(`${name}.weight`)!.bytes)).toEqual(u8(want));
    expect(loadModelFiles(out).config).toEqual(cfg);
    expect(loadModel(out).weightDtype).toBe('BF16');
  }, 60_000);

  it('takes an adapter name from the --adapters store', () => {
    const store = join(root, 'store');
    const o = parseExportArgs(['--model', STORIES_DIR, '--adapter', 'plain', '--adapters', store, '--out', join(root, 'x')]);
    expect(o.adapter).toBe(join(store, 'plain'));
  });

  it('refuses bad flags by name, and an existing --out unless --overwrite (then replaces it atomically)', async () => {
    const args = (over: Record<string, string | null>): string[] => {
      const a: Record<string, string | null> = { '--model': STORIES_DIR, '--adapter': plainDir, '--out': join(root, 'never'), ...over };
      return Object.entries(a).flatMap(([k, v]) => (v === null ? [] : v === '' ? [k] : [k, v]));
    };
    const refused = async (argv: string[], flag: string, re: RegExp): Promise<void> => {
      await expect(exportCommand(argv)).rejects.toMatchObject({ param: flag, message: expect.stringMatching(re) });
    };
    await refused(args({ '--adapter': null }), '--adapter', /--adapter is required/);
    await refused(args({ '--out': null }), '--out', /--out is required/);
    await refused(args({ '--model': join(root, 'nope') }), '--model', /--model .* is not a directory/);
    await refused(args({ '--adapter': 'no-such-adapter', '--adapters': join(root, 'store') }), '--adapter', /no adapter of that name/);
    await refused(args({ '--adapter': '../x/y' }), '--adapter', /neither an adapter directory nor an adapter name/);
    await refused(args({ '--shard-mb': '0' }), '--shard-mb', /positive number/);
    await refused(args({ '--shard-mb': 'lots' }), '--shard-mb', /positive number/);
    await refused(args({ '--out': STORIES_DIR }), '--out', /model directory/);
    await refused(args({ '--out': join(root, 'missing-parent', 'out') }), '--out', /parent directory/);
    expect(existsSync(join(root, 'never'))).toBe(false);

    const out = join(root, 'export-exists');
    mkdirSync(out);
    writeFileSync(join(out, 'keep.txt'), 'mine');
    await refused(args({ '--out': out }), '--out', /already exists; pass --overwrite/);
    expect(readdirSync(out)).toEqual(['keep.txt']);
    await exportCommand([...args({ '--out': out }), '--overwrite']);
    expect(existsSync(join(out, 'keep.txt'))).toBe(false);
    expect(existsSync(join(out, 'model.safetensors'))).toBe(true);
    expect(readdirSync(root).filter((f) => f.includes('.tmp-') || f.includes('.old-'))).toEqual([]);
  }, 60_000);

  it('leaves nothing behind when the adapter does not fit the model', async () => {
    const bad = join(root, 'adapters-src', 'bad');
    writeAdapter(bad, buildAdapter({ ...cfg, hiddenSize: cfg.hiddenSize * 2 }, { rank: 4, targets: ['q_proj'] }));
    const out = join(root, 'export-bad');
    await expect(exportCommand(['--model', STORIES_DIR, '--adapter', bad, '--out', out])).rejects.toThrow(/invalid/);
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(root).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });
});
