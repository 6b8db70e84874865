// onnxruntime-node session creation: the one place that knows about execution providers and
// session options. run() blocks the calling thread, so sessions live in the engine worker.
import * as ort from 'onnxruntime-node';
import type { Graph } from './graph/ir.ts';
import { EXTERNAL_DATA_PATH, exportOnnx } from './graph/onnx-export.ts';

export type ExecutionProvider = 'cpu' | 'cuda';

export interface SessionOptions {
  executionProvider?: ExecutionProvider;
  intraOpThreads?: number;       // default: all cores (0 lets onnxruntime decide)
  useExternalData?: boolean;     // force the external-data path (tests); default: only above ~1.8 GB
  memoryPattern?: boolean;       // onnxruntime's memory-pattern planning (default on); the training
                                 // graph turns it off: ~800 MB more and a slow extra warm-up run there
}

export async function createSession(graph: Graph, opts: SessionOptions = {}): Promise<ort.InferenceSession> {
  const { model, externalData } = exportOnnx(graph, { useExternalData: opts.useExternalData });
  const ep = opts.executionProvider ?? 'cpu';
  const options: ort.InferenceSession.SessionOptions = {
    executionProviders: ep === 'cuda' ? [{ name: 'cuda', deviceId: 0 }, 'cpu'] : ['cpu'],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: opts.intraOpThreads ?? 0,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    enableMemPattern: opts.memoryPattern ?? true,
    // An idle intra-op pool would otherwise spin and burn a core between steps (notes §4).
    extra: { session: { intra_op: { allow_spinning: '0' } } },
    ...(externalData ? { externalData: [{ path: EXTERNAL_DATA_PATH, data: externalData }] } : {}),
  };
  return ort.InferenceSession.create(model, options);
}

export { ort };
