// Test helpers: an in-process step runner over a config + weights, without the engine worker.
import { parseModelConfig } from '../../src/runtime/model-config.ts';
import { buildLlamaGraph, loraLinear } from '../../src/runtime/llama-graph.ts';
import { createSession } from '../../src/runtime/session.ts';
import { StepRunner } from '../../src/runtime/step.ts';
import { KvArena } from '../../src/runtime/kv-arena.ts';
import { LoraArena } from '../../src/runtime/lora-arena.ts';
import type { ModelConfig } from '../../src/runtime/model-config.ts';

export interface TestRunner {
  runner: StepRunner;
  cfg: ModelConfig;
  newRow: () => number;        // a fresh arena row (a new sequence)
}

export async function makeRunner(cfgJson: Record<string, unknown>, weights: Map<string, Float32Array>, maxPositions = 128, opts: { useExternalData?: boolean; lora?: boolean } = {}): Promise<TestRunner> {
  const cfg = parseModelConfig(cfgJson);
  const graph = buildLlamaGraph(cfg, weights, { maxPositions, linear: opts.lora ? loraLinear(cfg, weights) : undefined });
  const session = await createSession(graph, { intraOpThreads: 1, useExternalData: opts.useExternalData });
  const kv = new KvArena(cfg.numLayers, cfg.numKvHeads, cfg.headDim, maxPositions);
  const runner = new StepRunner(session, cfg, maxPositions, kv, opts.lora ? new LoraArena(cfg) : null);
  let next = 0;
  return { runner, cfg, newRow: () => { const r = next++; kv.ensure(r + 1); kv.release(r); return r; } };
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
