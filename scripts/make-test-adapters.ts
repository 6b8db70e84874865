// Builds PEFT LoRA adapters (good and malformed) for a model, as files on disk.
//   npm run make-test-adapters -- --model ../shared/fixtures/stories260K --out DIR
// Tests call the same functions to write their adapters into temporary directories.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { Rng } from '../src/runtime/random.ts';
import { encodeSafetensors } from '../src/runtime/safetensors.ts';
import type { TensorToWrite } from '../src/runtime/safetensors.ts';
import { f32ToDtypeBytes } from '../src/runtime/dtype.ts';
import { TARGETS, targetPath, targetShape } from '../src/runtime/model-targets.ts';
import type { Target } from '../src/runtime/model-targets.ts';
import type { ModelConfig } from '../src/runtime/model-config.ts';
import { parseModelConfig } from '../src/runtime/model-config.ts';
import { readFileSync } from 'node:fs';

export interface AdapterSpec {
  rank: number;
  alpha?: number;
  targets?: Target[];
  layers?: number[];                      // layers_to_transform
  rslora?: boolean;
  dora?: boolean;
  rankPattern?: Record<string, number>;
  alphaPattern?: Record<string, number>;
  seed?: number;
  dtype?: 'F32' | 'F16' | 'BF16';
  zeroB?: boolean;                        // B = 0: a no-op adapter, like a fresh PEFT init
  scaleB?: number;                        // magnitude of B (default 0.5)
  baseModel?: string;
}

export interface AdapterFilesOnDisk {
  config: Record<string, unknown>;
  tensors: Record<string, TensorToWrite>;
}

// Resolved rank/alpha per module, as PEFT would (suffix patterns only, which is all specs use).
function resolve(spec: AdapterSpec, key: string): { r: number; alpha: number } {
  const r = Object.entries(spec.rankPattern ?? {}).find(([k]) => key.endsWith(k))?.[1] ?? spec.rank;
  const alpha = Object.entries(spec.alphaPattern ?? {}).find(([k]) => key.endsWith(k))?.[1] ?? spec.alpha ?? spec.rank;
  return { r, alpha };
}

export function buildAdapter(cfg: ModelConfig, spec: AdapterSpec, base?: Map<string, Float32Array>): AdapterFilesOnDisk {
  const rng = new Rng(spec.seed ?? 1);
  const normal = (): number => Math.sqrt(-2 * Math.log(Math.max(rng.next(), 1e-12))) * Math.cos(2 * Math.PI * rng.next());
  const targets = spec.targets ?? [...TARGETS];
  const layers = spec.layers ?? Array.from({ length: cfg.numLayers }, (_, i) => i);
  const tensors: Record<string, TensorToWrite> = {};
  const dtype = spec.dtype ?? 'F32';
  for (const l of layers) for (const t of targets) {
    const key = targetPath(l, t);
    const { r } = resolve(spec, key);
    const [out, inDim] = targetShape(cfg, t);
    const a = Float32Array.from({ length: r * inDim }, () => normal() / Math.sqrt(inDim));
    const b = Float32Array.from({ length: out * r }, () => (spec.zeroB ? 0 : normal() * (spec.scaleB ?? 0.5) / Math.sqrt(r)));
    tensors[`base_model.model.${key}.lora_A.weight`] = { dtype, shape: [r, inDim], data: f32ToDtypeBytes(a, dtype) };
    tensors[`base_model.model.${key}.lora_B.weight`] = { dtype, shape: [out, r], data: f32ToDtypeBytes(b, dtype) };
    if (spec.dora) {
      if (!base) throw new Error('DoRA adapters need the base weights for their magnitude vector');
      const w = base.get(`${key}.weight`)!;
      const m = Float32Array.from({ length: out }, (_, o) => {
        let s = 0;
        for (let i = 0; i < inDim; i++) s += w[o * inDim + i] ** 2;
        return Math.sqrt(s) * (1 + 0.3 * normal());
      });
      tensors[`base_model.model.${key}.lora_magnitude_vector`] = { dtype, shape: [out], data: f32ToDtypeBytes(m, dtype) };
    }
  }
  const config: Record<string, unknown> = {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: spec.baseModel ?? null,
    r: spec.rank,
    lora_alpha: spec.alpha ?? spec.rank,
    lora_dropout: 0,
    use_rslora: spec.rslora ?? false,
    use_dora: spec.dora ?? false,
    bias: 'none',
    fan_in_fan_out: false,
    target_modules: targets,
    layers_to_transform: spec.layers ?? null,
    layers_pattern: null,
    rank_pattern: spec.rankPattern ?? {},
    alpha_pattern: spec.alphaPattern ?? {},
    modules_to_save: null,
    init_lora_weights: true,
    inference_mode: true,
  };
  return { config, tensors };
}

export function writeAdapter(dir: string, files: AdapterFilesOnDisk): { config: Uint8Array; weights: Uint8Array } {
  mkdirSync(dir, { recursive: true });
  const config = new TextEncoder().encode(JSON.stringify(files.config, null, 2));
  const weights = encodeSafetensors(files.tensors);
  writeFileSync(join(dir, 'adapter_config.json'), config);
  writeFileSync(join(dir, 'adapter_model.safetensors'), weights);
  return { config, weights };
}

// The malformed kinds, each a small edit of a good adapter's files.
export type Malformed = { name: string; files: { config: Uint8Array; weights: Uint8Array } | 'pickle'; expect: RegExp };

export function malformedAdapters(cfg: ModelConfig, maxRank: number): Malformed[] {
  const good = buildAdapter(cfg, { rank: 4, targets: ['q_proj', 'v_proj'], seed: 5 });
  const enc = (f: AdapterFilesOnDisk) => ({ config: new TextEncoder().encode(JSON.stringify(f.config)), weights: encodeSafetensors(f.tensors) });
  const goodBytes = enc(good);
  const withConfig = (patch: Record<string, unknown>) => ({ config: new TextEncoder().encode(JSON.stringify({ ...good.config, ...patch })), weights: goodBytes.weights });
  const withTensors = (edit: (t: Record<string, TensorToWrite>) => void) => { const t = { ...good.tensors }; edit(t); return { config: goodBytes.config, weights: encodeSafetensors(t) }; };
  const rawWeights = (w: Uint8Array) => ({ config: goodBytes.config, weights: w });
  const q0 = 'base_model.model.model.layers.0.self_attn.q_proj';
  const headerEdit = (fn: (h: Record<string, any>) => void) => {
    const w = goodBytes.weights;
    const n = Number(new DataView(w.buffer, w.byteOffset).getBigUint64(0, true));
    const h = JSON.parse(new TextDecoder().decode(w.subarray(8, 8 + n)));
    fn(h);
    const hb = new TextEncoder().encode(JSON.stringify(h));
    const out = new Uint8Array(8 + hb.length + (w.length - 8 - n));
    new DataView(out.buffer).setBigUint64(0, BigInt(hb.length), true);
    out.set(hb, 8);
    out.set(w.subarray(8 + n), 8 + hb.length);
    return out;
  };
  const [out, inDim] = targetShape(cfg, 'q_proj');
  const bigRank = maxRank + 1;
  return [
    { name: 'a truncated weights file', files: rawWeights(goodBytes.weights.subarray(0, goodBytes.weights.length - 10)), expect: /truncated/ },
    { name: 'a header length past the end of the file', files: rawWeights(Uint8Array.from([...new Uint8Array(new BigUint64Array([10_000n]).buffer), 123, 125])), expect: /runs past the end/ },
    { name: 'overlapping offsets', files: rawWeights(headerEdit((h) => { h[`${q0}.lora_B.weight`].data_offsets = h[`${q0}.lora_A.weight`].data_offsets; })), expect: /overlap/ },
    { name: 'out-of-bounds offsets', files: rawWeights(headerEdit((h) => { const o = h[`${q0}.lora_B.weight`].data_offsets; h[`${q0}.lora_B.weight`].data_offsets = [o[0], o[1] + 4096]; })), expect: /do not match shape|past the end/ },
    { name: 'duplicate tensor names', files: rawWeights((() => { const w = goodBytes.weights; const n = Number(new DataView(w.buffer, w.byteOffset).getBigUint64(0, true)); const text = new TextDecoder().decode(w.subarray(8, 8 + n)); const first = text.indexOf('"base_model'); const dupText = text.slice(0, first) + text.slice(first, text.indexOf('},', first) + 2) + text.slice(first); const hb = new TextEncoder().encode(dupText); const o = new Uint8Array(8 + hb.length + w.length - 8 - n); new DataView(o.buffer).setBigUint64(0, BigInt(hb.length), true); o.set(hb, 8); o.set(w.subarray(8 + n), 8 + hb.length); return o; })()), expect: /duplicate tensor name/ },
    { name: 'one module under two names (with and without base_model.model.)', files: withTensors((t) => { t['model.layers.0.self_attn.q_proj.lora_A.weight'] = t[`${q0}.lora_A.weight`]; }), expect: /tensors .*q_proj\.lora_A\.weight and .*q_proj\.lora_A\.weight are both module model\.layers\.0\.self_attn\.q_proj's lora_A\.weight: keep one/ },
    { name: 'a wrong dtype (I32)', files: withTensors((t) => { t[`${q0}.lora_A.weight`] = { dtype: 'I32', shape: [4, inDim], data: new Int32Array(4 * inDim) }; }), expect: /dtype I32 is not supported/ },
    { name: 'a wrong shape', files: withTensors((t) => { t[`${q0}.lora_B.weight`] = { dtype: 'F32', shape: [out + 1, 4], data: new Float32Array((out + 1) * 4) }; }), expect: /lora_B has shape/ },
    { name: 'rank 0', files: { config: new TextEncoder().encode(JSON.stringify({ ...good.config, r: 0 })), weights: goodBytes.weights }, expect: /"r" must be a positive integer/ },
    { name: 'a rank above the limit', files: enc(buildAdapter(cfg, { rank: bigRank, targets: ['q_proj'] })), expect: new RegExp(`exceeds the server's maximum LoRA rank ${maxRank}`) },
    { name: 'an unknown target module', files: withTensors((t) => { t['base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight'] = { dtype: 'F32', shape: [4, inDim], data: new Float32Array(4 * inDim) }; }), expect: /not a LoRA target/ },
    { name: 'a layer that does not exist', files: withTensors((t) => { t[`base_model.model.model.layers.${cfg.numLayers}.self_attn.q_proj.lora_A.weight`] = t[`${q0}.lora_A.weight`]; t[`base_model.model.model.layers.${cfg.numLayers}.self_attn.q_proj.lora_B.weight`] = t[`${q0}.lora_B.weight`]; }), expect: /does not exist/ },
    { name: 'NaN values', files: withTensors((t) => { const a = new Float32Array(4 * inDim); a[3] = NaN; t[`${q0}.lora_A.weight`] = { dtype: 'F32', shape: [4, inDim], data: a }; }), expect: /NaN or Inf/ },
    { name: 'missing config fields (r, lora_alpha, peft_type)', files: { config: new TextEncoder().encode(JSON.stringify({ target_modules: ['q_proj'] })), weights: goodBytes.weights }, expect: /"peft_type" is missing.*"r" is missing.*"lora_alpha" is missing/ },
    { name: 'a pickle adapter_model.bin', files: 'pickle', expect: /pickle/ },
    { name: 'a tensor name that maps to no module', files: withTensors((t) => { t['base_model.model.lm_head.weight'] = { dtype: 'F32', shape: [2], data: new Float32Array(2) }; }), expect: /maps to no LoRA module/ },
    { name: 'a hidden size that does not match (wrong base model)', files: withTensors((t) => { t[`${q0}.lora_A.weight`] = { dtype: 'F32', shape: [4, inDim * 2], data: new Float32Array(8 * inDim) }; }), expect: /hidden size .* \(hint: trained for a different base model\?\)/ },
    { name: 'modules_to_save', files: withConfig({ modules_to_save: ['lm_head'] }), expect: /modules_to_save/ },
    { name: 'bias "all"', files: withConfig({ bias: 'all' }), expect: /"bias" is "all"/ },
    { name: 'lora_A without lora_B', files: withTensors((t) => { delete t[`${q0}.lora_B.weight`]; }), expect: /needs both lora_A\.weight and lora_B\.weight/ },
    { name: 'weights for a module target_modules leaves out', files: withConfig({ target_modules: ['q_proj'] }), expect: /not targeted by adapter_config\.json/ },
    { name: 'invalid JSON config', files: { config: new TextEncoder().encode('{"r": 4,'), weights: goodBytes.weights }, expect: /not valid JSON/ },
  ];
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { values } = parseArgs({ options: { model: { type: 'string' }, out: { type: 'string' } } });
  if (!values.model || !values.out) throw new Error('usage: make-test-adapters --model DIR --out DIR');
  const cfg = parseModelConfig(JSON.parse(readFileSync(join(values.model, 'config.json'), 'utf8')));
  writeAdapter(join(values.out, 'rank4-qv'), buildAdapter(cfg, { rank: 4, targets: ['q_proj', 'v_proj'], seed: 1 }));
  writeAdapter(join(values.out, 'rank16-all'), buildAdapter(cfg, { rank: 16, seed: 2 }));
  writeAdapter(join(values.out, 'rank64-all'), buildAdapter(cfg, { rank: 64, seed: 3 }));
  for (const m of malformedAdapters(cfg, 64)) {
    const dir = join(values.out, `bad-${m.name.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}`);
    mkdirSync(dir, { recursive: true });
    if (m.files === 'pickle') writeFileSync(join(dir, 'adapter_model.bin'), 'not loaded');
    else { writeFileSync(join(dir, 'adapter_config.json'), m.files.config); writeFileSync(join(dir, 'adapter_model.safetensors'), m.files.weights); }
  }
  console.log(`wrote adapters into ${values.out}`);
}
