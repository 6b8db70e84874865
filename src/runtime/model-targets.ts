// The model's facts about its LoRA targets, in one place: which projections they are, their
// checkpoint names, their [out, in] shapes, and which carry a bias. The graph (llama-graph.ts), the
// loader, the LoRA arena, adapters and merges all take them from here.
import type { ModelConfig } from './model-config.ts';

export const TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type Target = (typeof TARGETS)[number];

export function targetPath(layer: number, target: Target): string {
  const block = target.endsWith('_proj') && ['gate_proj', 'up_proj', 'down_proj'].includes(target) ? 'mlp' : 'self_attn';
  return `model.layers.${layer}.${block}.${target}`;
}

// The target a projection's path (targetPath's form) names, or undefined.
export function targetOfPath(path: string): Target | undefined {
  return TARGETS.find((t) => path.endsWith(`.${t}`));
}

// [out, in] of each target, from the config.
export function targetShape(cfg: ModelConfig, target: Target): [number, number] {
  const D = cfg.hiddenSize;
  const q = cfg.numHeads * cfg.headDim;
  const kv = cfg.numKvHeads * cfg.headDim;
  switch (target) {
    case 'q_proj': return [q, D];
    case 'k_proj': return [kv, D];
    case 'v_proj': return [kv, D];
    case 'o_proj': return [D, q];
    case 'gate_proj': return [cfg.intermediateSize, D];
    case 'up_proj': return [cfg.intermediateSize, D];
    case 'down_proj': return [D, cfg.intermediateSize];
  }
}

// Whether a target's projection has a bias: q/k/v with attention_bias (Qwen2 always), o_proj with
// Llama's attention_bias (never Qwen2's), the MLP with mlp_bias.
export function targetHasBias(cfg: ModelConfig, target: Target): boolean {
  if (target === 'q_proj' || target === 'k_proj' || target === 'v_proj') return cfg.attentionBias;
  if (target === 'o_proj') return cfg.oProjBias;
  return cfg.mlpBias;
}
