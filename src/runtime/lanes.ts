// KV capacity classes ("lanes"). A batched attention step costs rows × capacity, so sequences are
// grouped by length: lane k holds sequences of up to BASE·2^k positions (the last lane: the context),
// each lane an arena pair (KV + LoRA factors) with a fixed capacity. A step runs over one lane, so
// a long sequence never makes short ones pay for its length, and memory stays within 2× of what
// the sequences use. A sequence that outgrows its lane moves to the next one (an O(length) copy,
// once per doubling).
//
// Memory: each lane's arrays are allocated once, for the batch limit's worth of rows, on first use.
// Pages that are never written are never touched, so resident memory follows the rows actually used,
// and the running batch never reallocates (fresh pages cost ~20 µs each here; notes §0).
import { KvArena } from './kv-arena.ts';
import { LoraArena } from './lora-arena.ts';
import type { PreparedAdapter } from './lora-arena.ts';
import type { ModelConfig } from './model-config.ts';

export const BASE_CAPACITY = 128;

export class Lane {
  readonly kv: KvArena;
  readonly lora: LoraArena;
  private readonly free: number[] = [];
  private next = 0;
  used = 0;

  constructor(cfg: ModelConfig, readonly capacity: number, private readonly maxRows: number) {
    this.kv = new KvArena(cfg.numLayers, cfg.numKvHeads, cfg.headDim, capacity);
    this.lora = new LoraArena(cfg);
  }

  // The lowest free row, so the rows of a step stay dense.
  allocRow(adapter: PreparedAdapter | null): number {
    const row = this.free.length ? this.free.sort((a, b) => a - b).shift()! : this.next++;
    this.kv.ensure(Math.max(row + 1, this.maxRows));
    this.lora.reserveRows(this.maxRows);
    this.kv.release(row);
    this.lora.setRow(row, adapter);
    this.used++;
    return row;
  }

  releaseRow(row: number): void {
    this.kv.release(row);
    if (this.lora.adapterAt(row)) this.lora.setRow(row, null);
    this.free.push(row);
    this.used--;
  }

  get bytes(): number {
    return this.kv.bytes + this.lora.bytes;
  }
}

export class LanePool {
  readonly lanes: Lane[] = [];

  constructor(cfg: ModelConfig, maxContext: number, maxRows: number) {
    for (let cap = BASE_CAPACITY; ; cap *= 2) {
      this.lanes.push(new Lane(cfg, Math.min(cap, maxContext), maxRows));
      if (cap >= maxContext) break;
    }
  }

  // The smallest lane that holds `positions`.
  laneFor(positions: number): Lane {
    return this.lanes.find((l) => l.capacity >= positions) ?? this.lanes[this.lanes.length - 1];
  }

  // Move a row to a lane with room for `positions`; returns the new lane and row.
  migrate(lane: Lane, row: number, positions: number, adapter: PreparedAdapter | null): { lane: Lane; row: number } {
    return this.moveTo(lane, row, this.laneFor(positions), adapter);
  }

  moveTo(lane: Lane, row: number, target: Lane, adapter: PreparedAdapter | null): { lane: Lane; row: number } {
    if (target === lane) return { lane, row };
    const newRow = target.allocRow(adapter);
    lane.kv.copyRow(row, target.kv, newRow);
    lane.releaseRow(row);
    return { lane: target, row: newRow };
  }

  get kvBytes(): number {
    return this.lanes.reduce((s, l) => s + l.kv.bytes, 0);
  }

  get loraBytes(): number {
    return this.lanes.reduce((s, l) => s + l.lora.bytes, 0);
  }
}
