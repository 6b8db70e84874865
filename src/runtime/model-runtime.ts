// Everything one served model needs in the engine worker: weights → graph → session → step runner
// (with the KV and LoRA arenas) and the tokenizer. Created once at start-up. After the session is
// built the JS copy of the weights is dropped: W0 stays resident once, inside the session, and is
// read back from disk when an adapter is merged or a DoRA norm is computed.
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
import { schemeProblem } from './quantize.ts';
import { TARGETS, targetShape } from './model-targets.ts';
import type { GraphQuant } from './llama-graph.ts';

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
}

// Finer than the LanePool default of 2: a decode step reads its lane's whole capacity (lanes.ts).
export const SERVED_LANE_GROWTH = 1.5;

export interface ModelRuntime {
  model: Omit<LoadedModel, 'weights'>;
  config: ModelConfig;
  tokenizer: TextTokenizer;
  runner: StepRunner;
  lanes: LanePool;
  info: ModelInfo;
  limits: SequenceLimits;
  sessionOptions: SessionOptions;
  readBase: (name: string) => Float32Array;
  quant: GraphQuant | null;            // how W0 is served (merged sessions re-quantize W0 + ΔW the same way)
}

export async function createModelRuntime(opts: RuntimeOptions): Promise<ModelRuntime> {
  const loaded = loadModel(opts.modelDir, { name: opts.modelName });
  const cfg = loaded.config;
  const maxContext = Math.min(cfg.maxPositions, opts.maxContext ?? 4096);
  const tokenizer = new TextTokenizer(loaded.tokenizerJson, loaded.tokenizerConfig);
  if (tokenizer.vocabSize > cfg.vocabSize) {
    throw new ModelConfigError(`tokenizer.json has ${tokenizer.vocabSize} tokens but the model's vocab_size is ${cfg.vocabSize}`, 'vocab_size');
  }
  const quant = opts.quantize ?? null;
  if (quant) {
    for (const t of TARGETS) {
      const problem = schemeProblem(quant, targetShape(cfg, t)[1]);
      if (problem) throw new ModelConfigError(`--quantize int${quant.bits} --quant-block ${quant.block}: ${problem} (${t})`, 'quantize');
    }
  }
  const sessionOptions: SessionOptions = { executionProvider: opts.executionProvider, intraOpThreads: opts.intraOpThreads };
  const session = await createSession(buildServedGraph(cfg, loaded.weights, { maxPositions: maxContext, quant }), sessionOptions);
  let weightBytes = 0;
  for (const w of loaded.weights.values()) weightBytes += w.byteLength;
  const { weights: _dropped, ...model } = loaded;
  const reader = new WeightReader(loaded.dir);
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
    limits: { numLayers: cfg.numLayers, numKvHeads: cfg.numKvHeads, headDim: cfg.headDim, maxContext, eosTokenIds: cfg.eosTokenIds },
    sessionOptions,
    readBase: (name) => reader.read(name),
    quant,
  };
}
