// Everything one served model needs in the engine worker: weights → graph → session → step runner
// (with the KV and LoRA arenas) and the tokenizer. Created once at start-up. After the session is
// built the JS copy of the weights is dropped: W0 stays resident once, inside the session, and is
// read back from disk when an adapter is merged or a DoRA norm is computed. A GPTQ checkpoint
// (gptq.ts) serves its quantized projections as stored (MatMulNBits) and reads them back as dequant(W0).
import { loadModel } from './model-loader.ts';
import type { LoadedModel } from './model-loader.ts';
import { buildServedGraph } from './llama-graph.ts';
import { createSession } from './session.ts';
import type { ExecutionProvider, SessionOptions } from './session.ts';
import { StepRunner } from './step.ts';
import { LanePool } from './lanes.ts';
import { TextTokenizer } from './tokenizer.ts';
import { WeightReader } from './weight-reader.ts';
import type { ModelInfo } from './generate-request.ts';
import type { SequenceLimits } from './sequence.ts';
import type { ModelConfig } from './model-config.ts';
import { ModelConfigError } from './errors.ts';
import { dequantizeMatrix, quantizeMatrix, schemeProblem } from './quantize.ts';
import { TARGETS, targetPath, targetShape } from './model-targets.ts';
import type { GraphQuant } from './llama-graph.ts';
import type { GptqConfig, PrequantizedLinear } from './gptq.ts';

export interface RuntimeOptions {
  modelDir: string;
  modelName?: string;
  maxContext?: number;                 // default: min(max_position_embeddings, 4096)
  executionProvider?: ExecutionProvider;
  intraOpThreads?: number;
  maxRunning?: number;                 // rows per KV lane (the batch limit)
  loraArenaBytes?: number;             // bound on the LoRA arena's committed bytes (default: none)
  laneGrowth?: number;                 // KV lane capacity ratio (default SERVED_LANE_GROWTH, lanes.ts)
  quantize?: GraphQuant | null;        // W0 of the projections quantized for MatMulNBits (quantize.ts); default float32
  prequantizedAccuracyLevel?: 0 | 4;   // MatMulNBits' accuracy_level over a GPTQ checkpoint (default 4; 0: float activations, exact)
}

// Finer than the LanePool default of 2: a decode step reads its lane's whole capacity (lanes.ts).
export const SERVED_LANE_GROWTH = 1.5;

export interface ModelRuntime {
  model: Omit<LoadedModel, 'weights' | 'prequantized'>;
  config: ModelConfig;
  tokenizer: TextTokenizer;
  runner: StepRunner;
  lanes: LanePool;
  info: ModelInfo;
  limits: SequenceLimits;
  sessionOptions: SessionOptions;
  readBase: (name: string) => Float32Array;   // W0 as the checkpoint holds it (dequantized for GPTQ): what merges start from
  readServed: (name: string) => Float32Array; // W0 as the unmerged path multiplies by it: dequant(Q(W0)) under --quantize
  quant: GraphQuant | null;            // how W0 is served (merged sessions re-quantize W0 + ΔW the same way)
}

export async function createModelRuntime(opts: RuntimeOptions): Promise<ModelRuntime> {
  const loaded = loadModel(opts.modelDir, { name: opts.modelName, keepQuantized: true });
  const cfg = loaded.config;
  const maxContext = Math.min(cfg.maxPositions, opts.maxContext ?? 4096);
  const tokenizer = new TextTokenizer(loaded.tokenizerJson, loaded.tokenizerConfig);
  if (tokenizer.vocabSize > cfg.vocabSize) {
    throw new ModelConfigError(`tokenizer.json has ${tokenizer.vocabSize} tokens but the model's vocab_size is ${cfg.vocabSize}`, 'vocab_size');
  }
  if (loaded.quantization && opts.quantize) {
    throw new ModelConfigError(`--quantize int${opts.quantize.bits}: ${loaded.dir} is a GPTQ checkpoint, already quantized (config.json quantization_config: ${loaded.quantization.bits}-bit); serve it without --quantize`, 'quantize');
  }
  const quant = opts.quantize ?? null;
  const accuracyLevel = opts.prequantizedAccuracyLevel ?? 4;
  const prequantized = loaded.prequantized.size ? { linears: loaded.prequantized, accuracyLevel } : null;
  if (quant) {
    for (const t of TARGETS) {
      const problem = schemeProblem(quant, targetShape(cfg, t)[1]);
      if (problem) throw new ModelConfigError(`--quantize int${quant.bits} --quant-block ${quant.block}: ${problem} (${t})`, 'quantize');
    }
  }
  const sessionOptions: SessionOptions = { executionProvider: opts.executionProvider, intraOpThreads: opts.intraOpThreads };
  const session = await createSession(buildServedGraph(cfg, loaded.weights, { maxPositions: maxContext, quant, prequantized }), sessionOptions);
  let weightBytes = 0;
  for (const w of loaded.weights.values()) weightBytes += w.byteLength;
  for (const { matrix: m } of loaded.prequantized.values()) weightBytes += m.packed.byteLength + m.scales.byteLength + (m.zeroPoints?.byteLength ?? 0);
  const { weights: _dropped, prequantized: _kept, ...model } = loaded;
  const reader = new WeightReader(loaded.dir, loaded.quantization && { quantization: loaded.quantization, config: cfg });
  return {
    model,
    config: cfg,
    tokenizer,
    runner: new StepRunner(session, cfg, maxContext),
    lanes: new LanePool(cfg, maxContext, opts.maxRunning ?? 32, { laneGrowth: opts.laneGrowth ?? SERVED_LANE_GROWTH, loraArenaBytes: opts.loraArenaBytes }),
    info: {
      name: loaded.name,
      vocabSize: cfg.vocabSize,
      maxContext,
      eosTokenIds: cfg.eosTokenIds,
      bosTokenId: cfg.bosTokenId,
      numLayers: cfg.numLayers,
      hiddenSize: cfg.hiddenSize,
      weightBytes,
    },
    limits: { numLayers: cfg.numLayers, numKvHeads: cfg.numKvHeads, headDim: cfg.headDim, maxContext, eosTokenIds: cfg.eosTokenIds, vocabSize: cfg.vocabSize },
    sessionOptions,
    readBase: (name) => reader.read(name),
    readServed: quant ? servedReader(cfg, quant, (name) => reader.read(name)) : (name) => reader.read(name),
    quant: quant ?? (loaded.quantization && gptqGraphQuant(cfg, loaded.quantization, loaded.prequantized, accuracyLevel)),
  };
}

// Under --quantize the served graph multiplies by dequant(Q(W0)), not W0: DoRA's norms and a merge's
// error are taken over that (the LM head and embeddings are read as stored).
function servedReader(cfg: ModelConfig, quant: GraphQuant, read: (name: string) => Float32Array): (name: string) => Float32Array {
  const shapes = new Map<string, [number, number]>();
  for (let l = 0; l < cfg.numLayers; l++) for (const t of TARGETS) shapes.set(`${targetPath(l, t)}.weight`, targetShape(cfg, t));
  return (name) => {
    const shape = shapes.get(name);
    const w = read(name);
    return shape ? dequantizeMatrix(quantizeMatrix(w, shape[0], shape[1], quant)) : w;
  };
}

// How merged sessions re-quantize W0 + ΔW over a GPTQ checkpoint: its bits, asymmetric (its zeros),
// the smallest block its projections use (a block every projection's K can take), no LM head.
function gptqGraphQuant(cfg: ModelConfig, q: GptqConfig, linears: Map<string, PrequantizedLinear>, accuracyLevel: 0 | 4): GraphQuant | null {
  const blocks = [...linears.values()].map((l) => l.matrix.scheme.block);
  if (!blocks.length) return null;
  const quant: GraphQuant = { bits: q.bits, block: Math.min(...blocks), symmetric: false, accuracyLevel };
  return TARGETS.every((t) => schemeProblem(quant, targetShape(cfg, t)[1]) === null) ? quant : null;
}
