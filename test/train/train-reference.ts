// The tests' own float64 loss: ReferenceLlama (test/reference, no code shared with src) run over
// each row with ΔW = s·B·A added to the targeted weights, then Σ w·NLL / Σ w with a float64
// log-softmax. Shared by the gradient check and the step-0 test.
import { ReferenceLlama } from '../reference/llama-reference.ts';
import { Rng } from '../../src/runtime/random.ts';

export interface RefSlot { layer: number; target: string; rank: number; scale: number; out: number; in: number }
export interface RefBatch { B: number; T: number; ids: number[]; labels: number[]; weights: number[] }

export const modulePath = (layer: number, target: string): string =>
  `model.layers.${layer}.${['gate_proj', 'up_proj', 'down_proj'].includes(target) ? 'mlp' : 'self_attn'}.${target}.weight`;

// ΔW = s · B[out, r] · A[r, in], in float64
export function loraDelta(slot: RefSlot, a: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  const { out, in: n, rank: r, scale } = slot;
  const dw = new Float64Array(out * n);
  for (let o = 0; o < out; o++) for (let k = 0; k < r; k++) {
    const bk = scale * b[o * r + k];
    for (let i = 0; i < n; i++) dw[o * n + i] += bk * a[k * n + i];
  }
  return dw;
}

export function referenceLoss(cfgJson: Record<string, unknown>, weights: Map<string, Float32Array>, deltas: Map<string, Float64Array>, batch: RefBatch): { loss: number; logprobs: number[] } {
  const logprobs: number[] = [];
  let nll = 0;
  let wsum = 0;
  for (let row = 0; row < batch.B; row++) {
    const model = new ReferenceLlama(cfgJson, weights, deltas);
    const logits = model.forward(batch.ids.slice(row * batch.T, (row + 1) * batch.T));
    logits.forEach((z, t) => {
      const i = row * batch.T + t;
      let max = -Infinity;
      for (const v of z) max = Math.max(max, v);
      let sum = 0;
      for (const v of z) sum += Math.exp(v - max);
      const lp = z[batch.labels[i]] - max - Math.log(sum);
      logprobs.push(lp);
      nll -= batch.weights[i] * lp;
      wsum += batch.weights[i];
    });
  }
  return { loss: nll / wsum, logprobs };
}

export function randomArray(n: number, std: number, rng: Rng): Float32Array {
  return Float32Array.from({ length: n }, () => std * rng.normal());
}
