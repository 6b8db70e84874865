// The merged-weights path: sessions whose target weights are W0 + s·B·A (DoRA-scaled), one per hot
// adapter, kept in a cache bounded in bytes. A step runs merged only when all its sequences use the
// same adapter and that adapter's session is ready.
//
// Policy (--lora-mode):
//   unmerged  never merge.
//   merged    merge every adapter that has a single-adapter step, at its first such step.
//   auto      (default; after dLoRA's cost model) merge adapter X when what merging would save over
//             the next AUTO_WINDOW steps exceeds what building costs:
//                 overhead(b) · steps_X  >  build_ms
//             overhead(b) = measured step time of single-adapter unmerged steps minus base steps at
//             the same batch size (EWMA, per power-of-two batch bucket); steps_X = X's single-adapter
//             steps among the last AUTO_WINDOW decode steps (its traffic is assumed to continue);
//             build_ms = the last build's duration, or an estimate from the model's size before the
//             first build. Building blocks the engine thread (session creation), which stalls
//             every stream for the whole build, so auto never starts a build expected to take more
//             than MAX_AUTO_STALL_MS, whatever it would save: on a CPU with a real model (~10 s
//             builds) auto does not merge (measured noise in the overhead once made it build on a
//             busy machine: a 40 s stall for every stream). See docs/lora-modes.md.
import { buildLlamaGraph } from '../runtime/llama-graph.ts';
import { TARGETS, targetHasBias, targetPath, targetShape } from '../runtime/model-targets.ts';
import type { Weights } from '../runtime/llama-graph.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import { createSession } from '../runtime/session.ts';
import type { ort, SessionOptions } from '../runtime/session.ts';
import type { PreparedAdapter } from '../runtime/lora-arena.ts';
import type { MergedPath } from '../runtime/scheduler.ts';
import { mergePrepared } from './merge-lora.ts';

export type LoraMode = 'auto' | 'merged' | 'unmerged';

export const AUTO_WINDOW = 256;
export const MAX_AUTO_STALL_MS = 1000;
const EWMA = 0.1;
// Until a build has been timed: about this many ms per GB of weights (measured here: ~23 s/GB on a 2-core VM).
const BUILD_MS_PER_GB = 25_000;

interface Entry { session: ort.InferenceSession; bytes: number; lastUsed: number }

export interface MergedStats {
  hits: number;
  misses: number;
  builds: number;
  evictions: number;
  bytes: number;
  lastBuildMs: number;
}

export class MergedSessions implements MergedPath {
  private readonly cache = new Map<string, Entry>();
  private readonly building = new Set<string>();
  private readonly recent: (string | null)[] = []; // adapter version of each of the last steps (null: mixed/base)
  private readonly baseMs = new Map<number, number>();      // EWMA step ms of base-only steps, by batch bucket
  private readonly unmergedMs = new Map<number, number>();  // EWMA step ms of single-adapter unmerged steps
  readonly stats: MergedStats = { hits: 0, misses: 0, builds: 0, evictions: 0, bytes: 0, lastBuildMs: 0 };
  private clock = 0;

  constructor(
    private readonly mode: LoraMode,
    private readonly cfg: ModelConfig,
    private readonly maxPositions: number,
    private readonly readBase: (name: string) => Float32Array,
    private readonly lookup: (version: string) => PreparedAdapter | undefined,
    private readonly maxBytes: number,
    private readonly sessionOptions: SessionOptions,
    private readonly weightBytes: number,
  ) {}

  sessionFor(version: string | null, batch: number): ort.InferenceSession | undefined {
    this.recent.push(version);
    if (this.recent.length > AUTO_WINDOW) this.recent.shift();
    if (this.mode === 'unmerged' || version === null) return undefined;
    const hit = this.cache.get(version);
    if (hit) { hit.lastUsed = ++this.clock; this.stats.hits++; return hit.session; }
    this.stats.misses++;
    if (this.shouldBuild(version, batch)) this.scheduleBuild(version);
    return undefined;
  }

  // Step timings feed the auto policy's cost model.
  observe(path: 'base' | 'unmerged' | 'merged', batch: number, ms: number): void {
    const table = path === 'base' ? this.baseMs : path === 'unmerged' ? this.unmergedMs : null;
    if (!table) return;
    const k = bucket(batch);
    const prev = table.get(k);
    table.set(k, prev === undefined ? ms : prev + EWMA * (ms - prev));
  }

  // What auto would decide for an adapter now (exposed for the benchmark and the docs).
  autoEstimate(version: string, batch: number): { overheadMs: number; steps: number; buildMs: number } {
    const k = bucket(batch);
    const overheadMs = Math.max(0, (this.unmergedMs.get(k) ?? 0) - (this.baseMs.get(k) ?? Infinity));
    const steps = this.recent.filter((v) => v === version).length;
    return { overheadMs, steps, buildMs: this.stats.lastBuildMs || (this.weightBytes / 1e9) * BUILD_MS_PER_GB };
  }

  isMerged(version: string): boolean {
    return this.cache.has(version);
  }

  // A replaced or unloaded adapter's merged weights are dropped.
  async drop(version: string): Promise<void> {
    const e = this.cache.get(version);
    if (!e) return;
    this.cache.delete(version);
    this.stats.bytes -= e.bytes;
    await e.session.release();
  }

  private shouldBuild(version: string, batch: number): boolean {
    if (this.building.has(version)) return false;
    if (this.mode === 'merged') return true;
    const { overheadMs, steps, buildMs } = this.autoEstimate(version, batch);
    return buildMs <= MAX_AUTO_STALL_MS && overheadMs * steps > buildMs;
  }

  private scheduleBuild(version: string): void {
    const adapter = this.lookup(version);
    if (!adapter) return;
    this.building.add(version);
    setImmediate(() => {
      this.build(adapter).catch(() => undefined).finally(() => this.building.delete(version));
    });
  }

  async build(adapter: PreparedAdapter): Promise<ort.InferenceSession> {
    const t0 = performance.now();
    const weights = mergedWeights(this.cfg, this.readBase, adapter);
    let bytes = 0;
    for (const w of weights.values()) bytes += w.byteLength;
    while (this.cache.size && this.stats.bytes + bytes > this.maxBytes) await this.evictOldest();
    if (bytes > this.maxBytes) throw new Error(`merged weights (${bytes} bytes) exceed the merged cache (${this.maxBytes} bytes)`);
    const session = await createSession(buildLlamaGraph(this.cfg, weights, { maxPositions: this.maxPositions }), this.sessionOptions);
    this.cache.set(adapter.version, { session, bytes, lastUsed: ++this.clock });
    this.stats.bytes += bytes;
    this.stats.builds++;
    this.stats.lastBuildMs = performance.now() - t0;
    return session;
  }

  private async evictOldest(): Promise<void> {
    let oldest: string | null = null;
    let t = Infinity;
    for (const [v, e] of this.cache) if (e.lastUsed < t) { t = e.lastUsed; oldest = v; }
    if (oldest) { await this.drop(oldest); this.stats.evictions++; }
  }
}

function bucket(batch: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(1, batch)));
}

// Base weights with every targeted projection replaced by W0 + ΔW (DoRA-scaled).
export function mergedWeights(cfg: ModelConfig, readBase: (name: string) => Float32Array, adapter: PreparedAdapter): Weights {
  const weights: Weights = new Map();
  const byName = new Map(adapter.targets.map((t) => [`${targetPath(t.layer, t.target)}.weight`, t]));
  const names = ['model.embed_tokens.weight', 'model.norm.weight', ...(cfg.tieWordEmbeddings ? [] : ['lm_head.weight'])];
  for (let l = 0; l < cfg.numLayers; l++) {
    names.push(`model.layers.${l}.input_layernorm.weight`, `model.layers.${l}.post_attention_layernorm.weight`);
    for (const t of TARGETS) {
      names.push(`${targetPath(l, t)}.weight`);
      if (targetHasBias(cfg, t)) names.push(`${targetPath(l, t)}.bias`);
    }
  }
  for (const name of names) {
    const w0 = readBase(name);
    const t = byName.get(name);
    if (!t) { weights.set(name, w0); continue; }
    const [out, inDim] = targetShape(cfg, t.target);
    weights.set(name, mergePrepared(w0, t, out, inDim));
  }
  return weights;
}
