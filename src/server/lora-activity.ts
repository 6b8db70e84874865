// Which LoRA adapters have sequences waiting and which have sequences running, for the model-server
// protocol's `vllm:lora_requests_info` (metrics.ts; the endpoint picker's LoRA affinity reads it).
// Counted per sequence by generation.ts: a sequence is waiting from its submission to the engine
// until its first event (it has not been scheduled, or its prompt is still being prefilled), then
// running until it ends (done, error, cancelled). Sequences on the base model are not listed, as in vLLM.
import { TARGETS, targetShape } from '../runtime/model-targets.ts';
import type { ModelConfig } from '../runtime/model-config.ts';

export class LoraActivity {
  private readonly waiting = new Map<string, number>();
  private readonly running = new Map<string, number>();

  queued(adapter: string): void { bump(this.waiting, adapter, 1); }

  started(adapter: string): void {
    bump(this.waiting, adapter, -1);
    bump(this.running, adapter, 1);
  }

  // `started`: whether started() was called for this sequence.
  finished(adapter: string, started: boolean): void {
    bump(started ? this.running : this.waiting, adapter, -1);
  }

  // Adapter names with at least one sequence in that state, in order of first use.
  snapshot(): { running: string[]; waiting: string[] } {
    return { running: [...this.running.keys()], waiting: [...this.waiting.keys()] };
  }
}

function bump(m: Map<string, number>, key: string, by: number): void {
  const n = (m.get(key) ?? 0) + by;
  if (n > 0) m.set(key, n);
  else m.delete(key);
}

// `max_lora`: how many adapters can be resident in the running batch at once. Each running
// sequence's adapter takes a slot in the LoRA arena (lora-arena.ts), so it is bounded by --max-batch
// (one adapter a sequence) and by how many slots of the largest rank served (--max-lora-rank) fit in
// --lora-arena-mb: per layer and target, A [rank, in] and B [out, rank] in float32. Adapters of a
// lower rank take less, so this is the number guaranteed to fit, at least 1.
export function maxResidentAdapters(model: ModelConfig, maxRank: number, arenaBytes: number, maxBatch: number): number {
  let perLayer = 0;
  for (const t of TARGETS) {
    const [out, inp] = targetShape(model, t);
    perLayer += (inp + out) * maxRank * 4;
  }
  const slotBytes = perLayer * model.numLayers;
  return Math.max(1, Math.min(maxBatch, Math.floor(arenaBytes / slotBytes)));
}
