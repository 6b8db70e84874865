// KV capacity classes ("lanes"). A batched attention step reads rows × capacity, so sequences are
// grouped by length: lane 0 holds up to BASE_CAPACITY positions and each next lane `growth` times
// more, rounded up to a multiple of BASE_CAPACITY (the last lane: the context). A step runs over
// one lane, so a long sequence does not make short ones pay for its length. A sequence that
// outgrows its lane moves to the next one (an O(length) copy, once per lane); the scheduler also
// folds small lanes into bigger ones when that reads less than a separate step (scheduler.ts).
// Growth 2 (the default) gives 128·2^k; the served runtime uses 1.5 (model-runtime.ts): 128, 256,
// 384, 640, 1024, 1536, … A decode step reads its lane's whole capacity, ~3% of a 110M-model step
// per 128 positions on this VM, so a 640-position sequence pays for 640, not 1024; the price is
// more lanes (one more migration per sequence, more rows kept warm).
//
// Every running sequence has one slot, its row in whichever lane it lives and in the one LoRA arena
// shared by all lanes (which maps rows to adapter slots, lora-arena.ts), so moving between lanes
// copies KV only. Each lane's arrays are allocated once, for all slots, on first use: pages never
// written are never touched, so resident memory follows the rows actually used, and nothing
// reallocates while serving (fresh pages cost ~20 µs each here).
import { KvArena } from './kv-arena.ts';
import { LoraArena } from './lora-arena.ts';
import type { ModelConfig } from './model-config.ts';

export const BASE_CAPACITY = 128;

export interface LanePoolOptions {
  laneGrowth?: number;       // capacity ratio between neighbouring lanes (default 2)
  loraArenaBytes?: number;   // bound on the LoRA arena's committed bytes (default: none)
}

// The lane capacities for a context: BASE_CAPACITY, then ×growth rounded up to BASE_CAPACITY.
export function laneCapacities(maxContext: number, growth = 2): number[] {
  if (!(growth > 1)) throw new Error(`lane growth must be above 1, got ${growth}`);
  const caps: number[] = [];
  for (let cap = BASE_CAPACITY; ; cap = Math.ceil((cap * growth) / BASE_CAPACITY) * BASE_CAPACITY) {
    caps.push(Math.min(cap, maxContext));
    if (cap >= maxContext) return caps;
  }
}

export class Lane {
  readonly kv: KvArena;
  used = 0;

  constructor(cfg: ModelConfig, readonly capacity: number, private readonly slots: number) {
    this.kv = new KvArena(cfg.numLayers, cfg.numKvHeads, cfg.headDim, capacity);
  }

  enter(slot: number): void {
    this.kv.ensure(this.slots);
    this.kv.release(slot);
    this.used++;
  }

  leave(slot: number): void {
    this.kv.release(slot);
    this.used--;
  }
}

export class LanePool {
  readonly lanes: Lane[] = [];
  readonly lora: LoraArena;
  private readonly freeSlots: number[] = [];
  private nextSlot = 0;

  constructor(cfg: ModelConfig, maxContext: number, readonly slots: number, opts: LanePoolOptions = {}) {
    for (const cap of laneCapacities(maxContext, opts.laneGrowth)) this.lanes.push(new Lane(cfg, cap, slots));
    this.lora = new LoraArena(cfg, { maxBytes: opts.loraArenaBytes });
    this.lora.reserveRows(slots);
  }

  // The smallest lane that holds `positions`.
  laneFor(positions: number): Lane {
    return this.lanes.find((l) => l.capacity >= positions) ?? this.lanes[this.lanes.length - 1];
  }

  // The lowest free slot, so the rows of a step stay dense.
  takeSlot(): number {
    if (this.freeSlots.length) return this.freeSlots.sort((a, b) => a - b).shift()!;
    if (this.nextSlot >= this.slots) throw new Error(`all ${this.slots} slots are in use`);
    return this.nextSlot++;
  }

  giveSlot(slot: number): void {
    if (this.lora.adapterAt(slot)) this.lora.setRow(slot, null);
    this.freeSlots.push(slot);
  }

  // Move a slot's KV to a lane with room for `positions` (or to `target`); returns the new lane.
  migrate(lane: Lane, slot: number, positions: number): Lane {
    return this.moveTo(lane, slot, this.laneFor(positions));
  }

  moveTo(lane: Lane, slot: number, target: Lane): Lane {
    if (target === lane) return lane;
    target.enter(slot);
    lane.kv.copyRow(slot, target.kv, slot);
    lane.leave(slot);
    return target;
  }

  get kvBytes(): number {
    return this.lanes.reduce((s, l) => s + l.kv.bytes, 0);
  }

  get loraBytes(): number {
    return this.lora.bytes;
  }
}
