// Dropout masks for the training graph (PEFT's lora_dropout, p > 0): one mask [N, in] per LoRA slot,
// each entry independently 0 with probability p, else 1/(1−p) (torch's inverted dropout). Each slot's
// mask has an Rng of its own, seeded by a 64-bit hash of (seed, optimizer step, micro-batch, slot id
// = layer·7 + the target's index in TARGETS order), and is filled row-major, so a mask depends on
// nothing but its key: a resumed run (same step numbers) draws the same masks as an uninterrupted one.
import { TARGETS } from '../runtime/model-targets.ts';
import type { Target } from '../runtime/model-targets.ts';
import { Rng } from '../runtime/random.ts';
import { dropoutMaskName } from './train-graph.ts';

// Where a step's dropout masks come from: the optimizer step (0-based) and the micro-batch within
// it (0-based, < --grad-accum), with the run's seed.
export interface DropoutKey {
  seed: number;
  step: number;
  micro: number;
}

// A step's masks: drawn from a key, or given by input name (lora_dropout.<layer>.<target>, [N, in]).
export type DropoutFeed = DropoutKey | Map<string, Float32Array>;

const MASK64 = (1n << 64n) - 1n;
const DROPOUT_DOMAIN = 0x6c6f72615f64726fn; // "lora_dro": keeps these streams apart from other Rng(seed) uses

// splitmix64's finaliser: a bijection of 64-bit values with full avalanche
function mix64(z: bigint): bigint {
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return z ^ (z >> 31n);
}

// The Rng of one slot's mask at (seed, step, micro-batch): its seed hashes the four integers in
// that order (each ≥ 0), the slot as layer·|TARGETS| + its index in TARGETS.
export function dropoutRng(key: DropoutKey, layer: number, target: Target): Rng {
  const slot = layer * TARGETS.length + TARGETS.indexOf(target);
  let h = DROPOUT_DOMAIN;
  for (const c of [key.seed, key.step, key.micro, slot]) {
    if (!Number.isSafeInteger(c) || c < 0) throw new Error(`dropout key: ${c} is not an integer ≥ 0`);
    h = mix64((h + 0x9e3779b97f4a7c15n + BigInt(c)) & MASK64);
  }
  return new Rng(h);
}

// Fills dropout masks: out[i] = 0 with probability p, else 1/(1−p) (rounded to float32), each entry
// independently, with exactly the probability of rng.next() < p, i.e. of u < θ for a uniform 32-bit
// u and θ = ⌈p·2³²⌉. One 32-bit draw serves four entries: each entry compares a byte b (high byte
// first) with θ's top byte t, so b < t drops and b > t keeps, as the full comparison would; only on
// a tie (b = t, probability 1/256) does the entry draw again and compare 24 fresh bits with θ's low
// 24. So P(drop) = t/256 + (1/256)·(θ mod 2²⁴)/2²⁴ = θ/2³², about 4.3× fewer draws than one per
// entry, and no branch but the rare tie (a 256-entry table maps bytes to values).
export class DropoutSampler {
  readonly keep: number;                 // 1/(1−p)
  private readonly top: number;          // θ >>> 24
  private readonly low: number;          // θ & 0xffffff
  private readonly table = new Float32Array(256);

  constructor(readonly p: number) {
    if (!(p >= 0 && p < 1)) throw new Error(`dropout must be in [0, 1), got ${p}`);
    const theta = Math.ceil(p * 4294967296); // < 2³² since p < 1
    this.top = Math.floor(theta / 16777216);
    this.low = theta % 16777216;
    this.keep = 1 / (1 - p);
    for (let b = 0; b < 256; b++) this.table[b] = b < this.top ? 0 : this.keep;
  }

  fill(out: Float32Array, rng: Rng): void {
    const { table, top, low, keep } = this;
    const n = out.length;
    const n4 = n - (n % 4);
    let i = 0;
    for (; i < n4; i += 4) {
      const u = rng.nextU32();
      const b0 = u >>> 24;
      const b1 = (u >>> 16) & 255;
      const b2 = (u >>> 8) & 255;
      const b3 = u & 255;
      out[i] = table[b0];
      out[i + 1] = table[b1];
      out[i + 2] = table[b2];
      out[i + 3] = table[b3];
      if (b0 === top || b1 === top || b2 === top || b3 === top) {
        if (b0 === top) out[i] = rng.nextU32() >>> 8 < low ? 0 : keep;
        if (b1 === top) out[i + 1] = rng.nextU32() >>> 8 < low ? 0 : keep;
        if (b2 === top) out[i + 2] = rng.nextU32() >>> 8 < low ? 0 : keep;
        if (b3 === top) out[i + 3] = rng.nextU32() >>> 8 < low ? 0 : keep;
      }
    }
    if (i < n) {
      // the last 1–3 entries: bytes of one more draw, as above
      const u = rng.nextU32();
      for (let j = 0; i < n; i++, j++) {
        const b = (u >>> (24 - 8 * j)) & 255;
        out[i] = b === top ? (rng.nextU32() >>> 8 < low ? 0 : keep) : table[b];
      }
    }
  }
}

// Every slot's mask for one micro-batch, in buffers reused across steps (grown only when a batch
// has more rows than any before; views are cached per row count).
export class DropoutMasks {
  private readonly bufs = new Map<string, { buf: Float32Array; view: Float32Array }>();
  private readonly sampler: DropoutSampler;

  constructor(readonly p: number, readonly slots: readonly { layer: number; target: Target; inDim: number }[]) {
    if (!(p > 0 && p < 1)) throw new Error(`dropout must be in (0, 1) to draw masks, got ${p}`);
    this.sampler = new DropoutSampler(p);
  }

  // rows = N = B·T; the result maps each slot's input name to its [rows, in] mask (valid until the next draw)
  draw(key: DropoutKey, rows: number): Map<string, Float32Array> {
    const out = new Map<string, Float32Array>();
    for (const s of this.slots) {
      const name = dropoutMaskName(s.layer, s.target);
      const n = rows * s.inDim;
      let e = this.bufs.get(name);
      if (!e || e.buf.length < n) {
        const buf = new Float32Array(n);
        e = { buf, view: buf };
        this.bufs.set(name, e);
      }
      if (e.view.length !== n) e.view = e.buf.subarray(0, n);
      this.sampler.fill(e.view, dropoutRng(key, s.layer, s.target));
      out.set(name, e.view);
    }
    return out;
  }
}
