// Everything one served model needs in the engine worker: weights → graph → session → step runner,
// and the tokenizer. Created once at start-up.
import { loadModel } from './model-loader.ts';
import type { LoadedModel } from './model-loader.ts';
import { buildLlamaGraph } from './llama-graph.ts';
import { createSession } from './session.ts';
import type { ExecutionProvider } from './session.ts';
import { StepRunner } from './step.ts';
import { TextTokenizer } from './tokenizer.ts';
import type { ModelInfo } from './generate-request.ts';
import type { SequenceLimits } from './sequence.ts';

export interface RuntimeOptions {
  modelDir: string;
  modelName?: string;
  maxContext?: number;                 // default: min(max_position_embeddings, 4096)
  executionProvider?: ExecutionProvider;
  intraOpThreads?: number;
}

export interface ModelRuntime {
  model: LoadedModel;
  tokenizer: TextTokenizer;
  runner: StepRunner;
  info: ModelInfo;
  limits: SequenceLimits;
}

export async function createModelRuntime(opts: RuntimeOptions): Promise<ModelRuntime> {
  const model = loadModel(opts.modelDir, { name: opts.modelName });
  const cfg = model.config;
  const maxContext = Math.min(cfg.maxPositions, opts.maxContext ?? 4096);
  const graph = buildLlamaGraph(cfg, model.weights, { maxPositions: maxContext });
  const session = await createSession(graph, { executionProvider: opts.executionProvider, intraOpThreads: opts.intraOpThreads });
  const tokenizer = new TextTokenizer(model.tokenizerJson, model.tokenizerConfig);
  let weightBytes = 0;
  for (const w of model.weights.values()) weightBytes += w.byteLength;
  return {
    model,
    tokenizer,
    runner: new StepRunner(session, cfg, maxContext),
    info: {
      name: model.name,
      vocabSize: cfg.vocabSize,
      maxContext,
      eosTokenIds: cfg.eosTokenIds,
      bosTokenId: cfg.bosTokenId,
      numLayers: cfg.numLayers,
      hiddenSize: cfg.hiddenSize,
      weightBytes,
    },
    limits: { numLayers: cfg.numLayers, numKvHeads: cfg.numKvHeads, headDim: cfg.headDim, maxContext, eosTokenIds: cfg.eosTokenIds },
  };
}
