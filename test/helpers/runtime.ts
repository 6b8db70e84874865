// Test helpers: an in-process step runner over a config + weights, without the engine worker.
import { parseModelConfig } from '../../src/runtime/model-config.ts';
import { buildLlamaGraph } from '../../src/runtime/llama-graph.ts';
import { createSession } from '../../src/runtime/session.ts';
import { StepRunner } from '../../src/runtime/step.ts';
import { SequenceKv } from '../../src/runtime/kv-cache.ts';
import type { ModelConfig } from '../../src/runtime/model-config.ts';

export async function makeRunner(cfgJson: Record<string, unknown>, weights: Map<string, Float32Array>, maxPositions = 128, opts: { useExternalData?: boolean } = {}): Promise<{ runner: StepRunner; cfg: ModelConfig; newKv: (cap?: number) => SequenceKv }> {
  const cfg = parseModelConfig(cfgJson);
  const session = await createSession(buildLlamaGraph(cfg, weights, { maxPositions }), { intraOpThreads: 1, useExternalData: opts.useExternalData });
  return { runner: new StepRunner(session, cfg, maxPositions), cfg, newKv: (cap = 8) => new SequenceKv(cfg.numLayers, cfg.numKvHeads, cfg.headDim, cap) };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export function tokens(n: number, vocab: number, seed: number): number[] {
  let x = seed * 7919 + 13;
  return Array.from({ length: n }, () => { x = (x * 1103515245 + 12345) % 2147483648; return x % vocab; });
}
