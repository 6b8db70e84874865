// KV capacity classes ("lanes"). A batched attention step costs rows × capacity, so sequences are
// grouped by length: lane k holds sequences of up to BASE·2^k positions (the last lane: the context),
// each lane a KV arena of fixed capacity. A step runs over one lane, so a long sequence does not
// make short ones pay for its length. A sequence that outgrows its lane moves to the next one (an
// O(length) copy, once per doubling); the scheduler also folds small lanes into bigger ones when
// that reads less than a separate step (scheduler.ts).
//
// Every running sequence has one slot, its row in whichever lane it lives and in the one LoRA arena
// shared by all lanes, so moving between lanes copies KV only. Each lane's arrays are allocated once,
// for all slots, on first use: pages never written are never touched, so resident memory follows
// the rows actually used, and nothing reallocates while serving (fresh pages cost ~20 µs each here).
import { KvArena } from './kv-arena.ts';
import { LoraArena } from './lora-arena.ts';
import type { ModelConfig } from './model-config.ts';

export const BASE_CAPACITY = 128;

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

  constructor(cfg: ModelConfig, maxContext: number, readonly slots: number) {
    for (let cap = BASE_CAPACITY; ; cap *= 2) {
      this.lanes.push(new Lane(cfg, Math.min(cap, maxContext), slots));
      if (cap >= maxContext) break;
    }
    this.lora = new LoraArena(cfg);
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
