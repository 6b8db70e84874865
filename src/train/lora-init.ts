// Initial LoRA factors, as PEFT makes them (formats-and-apis.md §1.6), from the repo's seeded Rng:
//   kaiming   init_lora_weights=true (PEFT's default): nn.init.kaiming_uniform_(A, a=√5), whose
//             bound √(6 / ((1 + a²)·fan_in)) is 1/√in, so A ~ U(−1/√in, 1/√in)
//   gaussian  init_lora_weights="gaussian": nn.init.normal_(A, std = 1/r), i.e. N(0, 1/r²)
//             (PEFT's std is 1/r, not 1/√r)
// and B = 0 either way, so the adapter starts as the base model exactly. The draws are made in a
// fixed order (by layer, then TARGETS order, then A's row-major entries), whatever the order of
// the slots, so one seed gives one adapter.
import { Rng } from '../runtime/random.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import { loraInputNames } from '../runtime/llama-graph.ts';
import { TARGETS, targetShape } from '../runtime/model-targets.ts';
import type { LoraSlot } from './train-graph.ts';

export type LoraInit = 'kaiming' | 'gaussian';

export function initLora(cfg: ModelConfig, slots: LoraSlot[], init: LoraInit, seed: number): Map<string, Float32Array> {
  const rng = new Rng(seed);
  const ordered = [...slots].sort((x, y) => x.layer - y.layer || TARGETS.indexOf(x.target) - TARGETS.indexOf(y.target));
  const factors = new Map<string, Float32Array>();
  for (const s of ordered) {
    const [out, inDim] = targetShape(cfg, s.target);
    const a = new Float32Array(s.rank * inDim);
    if (init === 'kaiming') {
      const bound = 1 / Math.sqrt(inDim);
      for (let i = 0; i < a.length; i++) a[i] = (2 * rng.next() - 1) * bound;
    } else {
      for (let i = 0; i < a.length; i++) a[i] = rng.normal() / s.rank;
    }
    const names = loraInputNames(s.layer, s.target);
    factors.set(names.a, a);
    factors.set(names.b, new Float32Array(out * s.rank));
  }
  return factors;
}
