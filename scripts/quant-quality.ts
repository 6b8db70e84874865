// Issue 18's quality figures (npm run quant-quality), through the engine, for F32, int8 and int4
// (the served schemes: block 32, asymmetric, accuracy level 4):
//   - stories260K (real weights): perplexity over held-out text (models/routing-eval.jsonl's plain
//     prompts: the model's own stories, not its training data) and top-1 agreement with F32 along
//     F32's greedy continuations (teacher-forced: at each position, does the quantized model's
//     argmax equal F32's token?) of EXPECTED.json's five prompts, 40 tokens each;
//   - the 110M synthetic model: mean |Δ log-prob| of F32's top-5 tokens at every position of four
//     random 128-token prompts;
//   - an adapter's contribution: ‖logp(base + adapter) − logp(base)‖ over the same positions, with
//     an F32 and an int4 base, and the relative change between the two.
// Writes docs/figures/quant-quality.json; bench/quant-report.ts puts it in docs/quantization.md.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { startEngine } from '../src/start-engine.ts';
import type { EngineClient } from '../src/runtime/engine-client.ts';
import { DEFAULT_SAMPLING } from '../src/runtime/sampler.ts';
import type { AdapterRef, PromptLogprob } from '../src/runtime/generate-request.ts';
import type { GraphQuant } from '../src/runtime/llama-graph.ts';
import { loadModelFiles } from '../src/runtime/model-loader.ts';
import { TextTokenizer } from '../src/runtime/tokenizer.ts';
import { buildAdapter, writeAdapter } from './make-test-adapters.ts';
import { adapterVersion } from '../src/adapters/lora-adapter.ts';
import { randomPrompts, specialIdsOf } from '../bench/serving-bench.ts';
import { llama110mDir } from '../bench/bench-models.ts';
import { tmpdir } from 'node:os';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const STORIES = join(ROOT, '..', 'shared', 'fixtures', 'stories260K');
const OUT = join(ROOT, 'docs', 'figures', 'quant-quality.json');
const MODES: { name: string; quant: GraphQuant | null }[] = [
  { name: 'f32', quant: null },
  { name: 'int8', quant: { bits: 8, block: 32, symmetric: false, accuracyLevel: 4 } },
  { name: 'int4', quant: { bits: 4, block: 32, symmetric: false, accuracyLevel: 4 } },
];

// Prompt log-probs of `tokens` (all positions but the first), with the top k alternatives.
async function promptLogprobs(engine: EngineClient, tokens: number[], k: number, adapter: AdapterRef | null = null): Promise<PromptLogprob[]> {
  for await (const ev of engine.generate({ promptTokens: tokens, maxTokens: 0, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: null, promptLogprobs: k, adapter })) {
    if (ev.type === 'prompt') return ev.logprobs.slice(1);
    if (ev.type === 'error') throw new Error(ev.error.message);
  }
  throw new Error('no prompt log-probs');
}

async function greedy(engine: EngineClient, prompt: number[], n: number): Promise<number[]> {
  const ids: number[] = [];
  for await (const ev of engine.generate({ promptTokens: prompt, maxTokens: n, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, seed: null, stop: [], stopTokenIds: [], ignoreEos: true, logprobs: null, adapter: null })) {
    if (ev.type === 'token') ids.push(ev.id);
    if (ev.type === 'error') throw new Error(ev.error.message);
  }
  return ids;
}

async function stories(): Promise<Record<string, { perplexity: number; top1_agreement: number }>> {
  const files = loadModelFiles(STORIES);
  const tok = new TextTokenizer(files.tokenizerJson, files.tokenizerConfig);
  const texts = readFileSync(join(ROOT, 'models', 'routing-eval.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { prompt: string; label: string | null }).filter((e) => e.label === null).map((e) => tok.encode(e.prompt));
  const E = JSON.parse(readFileSync(join(STORIES, 'EXPECTED.json'), 'utf8')) as { generation_cases: { prompt_ids: number[] }[] };
  const f32 = await startEngine({ runtime: { modelDir: STORIES, intraOpThreads: 1 } });
  const sequences: { prompt: number; ids: number[] }[] = [];
  try {
    for (const c of E.generation_cases) sequences.push({ prompt: c.prompt_ids.length, ids: [...c.prompt_ids, ...(await greedy(f32, c.prompt_ids, 40))] });
  } finally {
    await f32.close();
  }
  const out: Record<string, { perplexity: number; top1_agreement: number }> = {};
  for (const m of MODES) {
    const engine = await startEngine({ runtime: { modelDir: STORIES, intraOpThreads: 1, quantize: m.quant } });
    try {
      let nll = 0, count = 0;
      for (const t of texts) for (const e of await promptLogprobs(engine, t, 0)) { nll -= e.logprob!; count++; }
      let agree = 0, positions = 0;
      for (const s of sequences) {
        const lps = await promptLogprobs(engine, s.ids, 1);
        // entry i predicts token i + 1; the continuation starts at the prompt's length
        for (let i = s.prompt - 1; i < s.ids.length - 1; i++) { positions++; if (lps[i].top[0].id === s.ids[i + 1]) agree++; }
      }
      out[m.name] = { perplexity: Math.exp(nll / count), top1_agreement: agree / positions };
    } finally {
      await engine.close();
    }
  }
  return out;
}

async function synthetic(): Promise<Record<string, { top5_mean_abs_dlogprob: number; adapter_effect: number; adapter_effect_rel_change: number }>> {
  const dir = llama110mDir();
  const files = loadModelFiles(dir);
  const prompts = randomPrompts(4, 128, files.config.vocabSize, specialIdsOf(dir), 5);
  const adapterDir = join(mkdtempSync(join(tmpdir(), 'loraserve-quant-quality-')), 'a');
  const ref: AdapterRef = { name: 'a', version: adapterVersion(writeAdapter(adapterDir, buildAdapter(files.config, { rank: 16, alpha: 32, seed: 77 }))), dir: adapterDir };
  const runs: Record<string, { base: PromptLogprob[][]; adapted: PromptLogprob[][] }> = {};
  for (const m of MODES) {
    const engine = await startEngine({ runtime: { modelDir: dir, quantize: m.quant } });
    try {
      const base: PromptLogprob[][] = [];
      const adapted: PromptLogprob[][] = [];
      for (const p of prompts) { base.push(await promptLogprobs(engine, p, 5)); adapted.push(await promptLogprobs(engine, p, 0, ref)); }
      runs[m.name] = { base, adapted };
    } finally {
      await engine.close();
    }
  }
  const f32 = runs.f32;
  const effect = (r: typeof f32): number[] => r.base.flatMap((seq, i) => seq.map((e, j) => r.adapted[i][j].logprob! - e.logprob!));
  const f32Effect = effect(f32);
  const norm = (v: number[]) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
  const out: Record<string, { top5_mean_abs_dlogprob: number; adapter_effect: number; adapter_effect_rel_change: number }> = {};
  for (const m of MODES) {
    const r = runs[m.name];
    let sum = 0, n = 0;
    f32.base.forEach((seq, i) => seq.forEach((e, j) => {
      // F32's top-5 at this position, looked up in this mode's distribution (its top-5 and the chosen token)
      const mine = new Map(r.base[i][j].top.map((t) => [t.id, t.logprob]));
      for (const t of e.top) { const v = mine.get(t.id); if (v !== undefined) { sum += Math.abs(v - t.logprob); n++; } }
    }));
    const eff = effect(r);
    out[m.name] = {
      top5_mean_abs_dlogprob: n ? sum / n : NaN,
      adapter_effect: norm(eff) / Math.sqrt(eff.length),
      adapter_effect_rel_change: norm(eff.map((x, i) => x - f32Effect[i])) / norm(f32Effect),
    };
  }
  return out;
}

const result = { date: new Date().toISOString(), stories260K: await stories(), llama110m: await synthetic() };
writeFileSync(OUT, `${JSON.stringify(result, null, 2)}\n`);
console.log(JSON.stringify(result, null, 2));
