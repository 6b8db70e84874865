// onnxruntime-node session creation: the one place that knows about execution providers and
// session options. run() blocks the calling thread, so sessions live in the engine worker.
import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import type { Graph } from './graph/ir.ts';
import { EXTERNAL_DATA_PATH, exportOnnx } from './graph/onnx-export.ts';

export type ExecutionProvider = 'cpu' | 'cuda';
// 'during-run': intra-op threads spin while a run lasts and stop when it returns; 'off': they sleep
// between parallel ops; 'always': they also spin between runs (onnxruntime's own default)
export type Spinning = 'during-run' | 'off' | 'always';

export interface SessionOptions {
  executionProvider?: ExecutionProvider;
  intraOpThreads?: number;       // default (and 0): all cores this process may use (intraOpThreadCount)
  useExternalData?: boolean;     // force the external-data path (tests); default: only above ~1.8 GB
  memoryPattern?: boolean;       // onnxruntime's memory-pattern planning (default on); the training
                                 // graph turns it off: ~800 MB more and a slow extra warm-up run there
  spinning?: Spinning;           // default 'during-run'; 'off' for fine-tuning jobs beside the engine (trainer.ts); all three in the spinning bench
}

export async function createSession(graph: Graph, opts: SessionOptions = {}): Promise<ort.InferenceSession> {
  const { model, externalData } = exportOnnx(graph, { useExternalData: opts.useExternalData });
  const ep = opts.executionProvider ?? 'cpu';
  const options: ort.InferenceSession.SessionOptions = {
    executionProviders: ep === 'cuda' ? [{ name: 'cuda', deviceId: 0 }, 'cpu'] : ['cpu'],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: intraOpThreadCount(opts.intraOpThreads),
    interOpNumThreads: 1,
    executionMode: 'sequential',
    enableMemPattern: opts.memoryPattern ?? true,
    // The intra-op pool spins while a run lasts (a woken thread costs each parallel op tens of µs
    // here) and stops when the run returns, so it burns no core between steps (notes §4 measured
    // an always-spinning pool's idle cost; architecture.md, "Spinning").
    extra: { session: spinningConfig(opts.spinning ?? 'during-run') },
    ...(externalData ? { externalData: [{ path: EXTERNAL_DATA_PATH, data: externalData }] } : {}),
  };
  return ort.InferenceSession.create(model, options);
}

function spinningConfig(s: Spinning): Record<string, unknown> {
  if (s === 'off') return { intra_op: { allow_spinning: '0' } };
  return { intra_op: { allow_spinning: '1' }, force_spinning_stop: s === 'during-run' ? '1' : '0' };
}

// 0 (or nothing) means every core this process may run on. It is resolved here rather than left to
// onnxruntime, whose own default (intra_op_num_threads = 0) ran one thread on this 2-core VM: in
// one process, interleaved, a 1024² MatMul took 12.3 ms with 0 or 1 and 8.4 ms with 2, and the
// 110M model's 512-token prefill went from ~800–930 to ~1300–1400 tokens/s (docs/architecture.md).
export function intraOpThreadCount(requested: number | undefined): number {
  return requested && requested > 0 ? requested : availableParallelism();
}

export { ort };
