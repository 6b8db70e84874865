// The bundled trainer end to end, as users run it: `loraserve train` in a child process, real
// files on disk, the stories260K fixture and a pirate-speak dataset the repo makes itself.
//   - the exact call works, lowers held-out loss on the style by ≥ 30%, and writes a PEFT
//     directory the server's own reader takes
//   - the same seed gives the same bytes; N steps + resume for N more equals 2N steps
//   - the adapter, uploaded to a running server, gives the trainer's own log-probs (1e-4)
//   - bad input exits non-zero, names the problem, and leaves no output directory
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import OpenAI from 'openai';
import { makePirateData, toJsonl } from '../../scripts/make-style-data.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';
import { startTestServer } from '../helpers/server.ts';
import type { RunningServer } from '../../src/server/serve.ts';
import { loadModel } from '../../src/runtime/model-loader.ts';
import { readSafetensorsFile } from '../../src/runtime/safetensors.ts';
import { bytesToF32 } from '../../src/runtime/dtype.ts';
import { loraInputNames } from '../../src/runtime/llama-graph.ts';
import { readAdapterDir, decodeAdapter } from '../../src/adapters/lora-adapter.ts';
import { TrainSession } from '../../src/train/train-session.ts';
import { ExampleEncoder } from '../../src/train/examples.ts';
import { makeBatch } from '../../src/train/batches.ts';
import { loraSlots } from '../../src/train/trainer.ts';
import { parseTrainArgs } from '../../src/train/train-args.ts';
import { peftTensorName } from '../../src/adapters/lora-adapter.ts';
import { readMetrics } from '../../src/train/metrics-log.ts';
import { runLoraserve } from '../helpers/cli.ts';

const dir = mkdtempSync(join(tmpdir(), 'loraserve-train-'));
const trainFile = join(dir, 'train.jsonl');
const evalFile = join(dir, 'eval.jsonl');

const cli = (args: string[]) => runLoraserve(['train', ...args]);

// The exact call (held-out loss then comes from the default 5% eval split of --data).
const exactCall = (out: string, extra: string[] = []): string[] =>
  ['--model', STORIES_DIR, '--data', trainFile, '--out', out, '--rank', '4', '--alpha', '8', '--steps', '40', '--lr', '0.01', '--seed', '1', ...extra];


beforeAll(async () => {
  // stories the fixture writes itself, in pirate speak (scripts/make-style-data.ts), small for a test
  const data = await makePirateData({ modelDir: STORIES_DIR, count: 160, evalCount: 24, seed: 0, maxTokens: 160, maxExampleTokens: 256 });
  writeFileSync(trainFile, toJsonl(data.train));
  writeFileSync(evalFile, toJsonl(data.eval));
}, 120_000);

describe('loraserve train', () => {
  const outA = join(dir, 'pirate-a');
  let runA: { code: number; stdout: string; stderr: string };

  beforeAll(async () => {
    runA = await cli(exactCall(outA));
  }, 180_000);

  it('the exact call works and writes a PEFT directory the server reads, with metrics and a loss curve', async () => {
    expect(runA.code, runA.stderr).toBe(0);
    expect(runA.stdout).toContain(`adapter written to ${outA}`);
    expect(runA.stdout).toMatch(/peak RSS \d+ MiB/);
    for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'training_args.json', 'metrics.jsonl', 'loss.svg', 'loss.png']) expect(existsSync(join(outA, f)), f).toBe(true);
    expect(existsSync(`${outA}.partial`)).toBe(false);
    const cfg = JSON.parse(readFileSync(join(outA, 'adapter_config.json'), 'utf8'));
    expect(cfg).toMatchObject({ peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 4, lora_alpha: 8, use_rslora: false, bias: 'none', lora_dropout: 0, layers_to_transform: null });
    expect(cfg.target_modules).toEqual(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);
    const st = readSafetensorsFile(join(outA, 'adapter_model.safetensors'));
    expect(st.tensors.get('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight')).toMatchObject({ dtype: 'F32', shape: [4, 64] });
    expect(st.tensors.get('base_model.model.model.layers.4.mlp.down_proj.lora_B.weight')).toMatchObject({ dtype: 'F32', shape: [64, 4] });
    const model = loadModel(STORIES_DIR);
    const decoded = decodeAdapter(await readAdapterDir(outA), model.config, { maxRank: 64, modelName: 'stories260K' });
    expect(decoded.problems).toEqual([]);
    expect(decoded.adapter!.maxRank).toBe(4);
    expect(readFileSync(join(outA, 'loss.png')).subarray(1, 4).toString()).toBe('PNG');
  });

  it('it learns the style: held-out loss ≥ 30% lower than the base model\'s', () => {
    const records = readMetrics(join(outA, 'metrics.jsonl'));
    const base = records.find((r) => r.step === 0)!.eval_loss!;
    const final = records.at(-1)!;
    expect(final.step).toBe(40);
    expect(final.eval_loss!).toBeLessThan(0.7 * base);
    // and the train loss went down on the way
    expect(records.at(-1)!.loss).toBeLessThan(records[1].loss);
  });

  it('deterministic: the same call gives byte-identical weights and the same loss curve', async () => {
    const outB = join(dir, 'pirate-b');
    const runB = await cli(exactCall(outB));
    expect(runB.code, runB.stderr).toBe(0);
    expect(readFileSync(join(outB, 'adapter_model.safetensors')).equals(readFileSync(join(outA, 'adapter_model.safetensors')))).toBe(true);
    const losses = (d: string): number[] => readMetrics(join(d, 'metrics.jsonl')).map((r) => r.loss);
    expect(losses(outB)).toEqual(losses(outA));
  }, 180_000);

  it('resume: N steps, then resume for N more, equals 2N steps in one run (weights within 1e-6)', async () => {
    const common = ['--model', STORIES_DIR, '--data', trainFile, '--rank', '4', '--alpha', '8', '--lr', '0.01', '--seed', '3', '--steps', '12', '--eval-split', '0', '--batch-size', '4', '--grad-accum', '2', '--warmup-steps', '2'];
    const whole = join(dir, 'whole');
    const r1 = await cli([...common, '--out', whole, '--save-every', '6']);
    expect(r1.code, r1.stderr).toBe(0);
    expect(readdirSync(whole)).toContain('checkpoint-6');
    const resumed = join(dir, 'resumed');
    const r2 = await cli([...common, '--out', resumed, '--resume', join(whole, 'checkpoint-6')]);
    expect(r2.code, r2.stderr).toBe(0);
    const a = readSafetensorsFile(join(whole, 'adapter_model.safetensors'));
    const b = readSafetensorsFile(join(resumed, 'adapter_model.safetensors'));
    let maxDiff = 0;
    for (const [name, t] of a.tensors) {
      const x = bytesToF32(t.bytes, t.dtype, name);
      const y = bytesToF32(b.tensors.get(name)!.bytes, 'F32', name);
      for (let i = 0; i < x.length; i++) maxDiff = Math.max(maxDiff, Math.abs(x[i] - y[i]));
    }
    expect(maxDiff).toBeLessThanOrEqual(1e-6);
    // and the resumed run did train: its weights differ from the checkpoint's
    const ck = readSafetensorsFile(join(whole, 'checkpoint-6', 'adapter_model.safetensors'));
    const name = peftTensorName(0, 'q_proj', 'lora_B');
    expect(bytesToF32(ck.tensors.get(name)!.bytes, 'F32', name)).not.toEqual(bytesToF32(b.tensors.get(name)!.bytes, 'F32', name));
  }, 180_000);

  describe('round trip through a running server', () => {
    let server: RunningServer;
    beforeAll(async () => { server = await startTestServer(); }, 60_000);
    afterAll(async () => { await server?.close(); });

    it('uploaded, the adapter gives the trainer\'s own evaluation log-probs within 1e-4, and its greedy text shows the style', async () => {
      const form = new FormData();
      form.append('name', 'pirate');
      form.append('adapter_config.json', new Blob([readFileSync(join(outA, 'adapter_config.json'))]), 'adapter_config.json');
      form.append('adapter_model.safetensors', new Blob([readFileSync(join(outA, 'adapter_model.safetensors'))]), 'adapter_model.safetensors');
      const up = await fetch(`${server.url}/v1/adapters`, { method: 'POST', body: form });
      expect(up.status, await up.clone().text()).toBe(201);

      // the trainer's evaluation of the first held-out story, with the adapter's factors from disk
      const model = loadModel(STORIES_DIR);
      const args = parseTrainArgs(exactCall(outA));
      const slots = loraSlots(args, model.config);
      const st = readSafetensorsFile(join(outA, 'adapter_model.safetensors'));
      const lora = new Map<string, Float32Array>();
      for (const s of slots) {
        const n = loraInputNames(s.layer, s.target);
        const a = peftTensorName(s.layer, s.target, 'lora_A');
        const b = peftTensorName(s.layer, s.target, 'lora_B');
        lora.set(n.a, bytesToF32(st.tensors.get(a)!.bytes, 'F32', a));
        lora.set(n.b, bytesToF32(st.tensors.get(b)!.bytes, 'F32', b));
      }
      const text = JSON.parse(readFileSync(evalFile, 'utf8').split('\n')[0]).text as string;
      const example = ExampleEncoder.forModel(model).text(text);
      const batch = makeBatch([example], example.ids.length);
      const session = await TrainSession.create(model.config, model.weights, { slots, maxPositions: 256, gradients: false });
      const mine = await session.evaluate({ batchSize: 1, seqLen: batch.T, inputIds: batch.inputIds, labels: batch.labels, lossWeights: batch.lossWeights }, lora);
      await session.release();

      const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'none' });
      const r = await client.completions.create({ model: 'pirate', prompt: example.ids, max_tokens: 1, temperature: 0, logprobs: 0, echo: true });
      const served = r.choices[0].logprobs!.token_logprobs!;
      let maxDiff = 0;
      for (let t = 0; t + 1 < example.ids.length; t++) maxDiff = Math.max(maxDiff, Math.abs(served[t + 1]! - mine.tokenLogprobs[t]));
      expect(maxDiff).toBeLessThanOrEqual(1e-4);

      // greedy text from the base model and the adapter: the adapter's speaks pirate
      const markers = /\b(ta|an'|th'|ye|me|arr|ahoy|matey|lass|lad|aye|fer|o')(?=\W|$)/gi;
      const gen = async (m: string): Promise<string> => (await client.completions.create({ model: m, prompt: 'Once upon a time', max_tokens: 48, temperature: 0 })).choices[0].text;
      const base = await gen(server.engine.info.name);
      const pirate = await gen('pirate');
      expect((pirate.match(markers) ?? []).length, pirate).toBeGreaterThanOrEqual(3);
      expect((base.match(markers) ?? []).length, base).toBe(0);
    }, 120_000);
  });

  describe('bad input exits non-zero, names the problem, and leaves no output directory', () => {
    const bad = (name: string, contents: string): string => { const p = join(dir, name); writeFileSync(p, contents); return p; };
    const cases: [string, () => string[], RegExp][] = [
      ['a malformed JSONL line', () => ['--data', bad('malformed.jsonl', '{"text":"Once upon a time"}\n{"text": oops}\n')], /malformed\.jsonl:2/],
      ['empty data', () => ['--data', bad('empty.jsonl', '\n\n')], /empty\.jsonl.*no examples/],
      ['a sequence longer than the context', () => ['--data', bad('long.jsonl', `${JSON.stringify({ text: 'Once upon a time there was a dog. '.repeat(200) })}\n`)], /long\.jsonl:1.*longer than --seq-len/],
      ['an unknown target', () => ['--data', trainFile, '--targets', 'q_proj,lm_head'], /--targets.*lm_head/],
      ['rank 0', () => ['--data', trainFile, '--rank', '0'], /--rank/],
      ['a negative learning rate', () => ['--data', trainFile, '--lr=-0.01'], /--lr/],
      ['an output directory that exists', () => ['--data', trainFile, '--out', dir], /--out.*exists.*--overwrite/],
    ];
    for (const [what, argv, message] of cases) {
      it(what, async () => {
        const out = join(dir, `bad-${what.replace(/\W+/g, '-')}`);
        const args = argv();
        const r = await cli(['--model', STORIES_DIR, '--out', out, '--steps', '2', ...args]);
        expect(r.code).not.toBe(0);
        expect(r.stderr).toMatch(message);
        if (!args.includes(dir)) expect(existsSync(out)).toBe(false);
        expect(existsSync(`${out}.partial`)).toBe(false);
      }, 60_000);
    }
  });
});
