// The merged-weights path: sessions whose target weights are W0 + s·B·A (DoRA-scaled), one per hot
// adapter, kept in a cache bounded in bytes. A step runs merged only when all its sequences use the
// same adapter and that adapter's session is ready.
//
// Policy (--lora-mode):
//   unmerged  never merge.
//   merged    merge every adapter that has a single-adapter step, at its first such step.
//   auto      (default; after dLoRA) merge an adapter once it has carried ≥ AUTO_SHARE of the decode
//             tokens over the last AUTO_WINDOW single- or multi-adapter steps, and at least
//             AUTO_MIN_STEPS of those steps were its alone. Building blocks the engine thread for the
//             session creation (see docs/lora-modes.md for the measured cost), so auto only pays it
//             for adapters that dominate the traffic.
import { buildLlamaGraph, TARGETS, targetPath, targetShape } from '../runtime/llama-graph.ts';
import type { Weights } from '../runtime/llama-graph.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import { createSession } from '../runtime/session.ts';
import type { ort, SessionOptions } from '../runtime/session.ts';
import type { PreparedAdapter } from '../runtime/lora-arena.ts';
import type { MergedPath } from '../runtime/scheduler.ts';
import { mergePrepared } from './merge-lora.ts';

export type LoraMode = 'auto' | 'merged' | 'unmerged';

export const AUTO_WINDOW = 64;
export const AUTO_SHARE = 0.9;
export const AUTO_MIN_STEPS = 32;

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
  ) {}

  sessionFor(version: string | null, _tokens: number): ort.InferenceSession | undefined {
    this.recent.push(version);
    if (this.recent.length > AUTO_WINDOW) this.recent.shift();
    if (this.mode === 'unmerged' || version === null) return undefined;
    const hit = this.cache.get(version);
    if (hit) { hit.lastUsed = ++this.clock; this.stats.hits++; return hit.session; }
    this.stats.misses++;
    if (this.shouldBuild(version)) this.scheduleBuild(version);
    return undefined;
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

  private shouldBuild(version: string): boolean {
    if (this.building.has(version)) return false;
    if (this.mode === 'merged') return true;
    const alone = this.recent.filter((v) => v === version).length;
    return this.recent.length >= AUTO_MIN_STEPS && alone >= AUTO_MIN_STEPS && alone / this.recent.length >= AUTO_SHARE;
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

// Base weights with every targeted projection replaced by W0 + ΔW (DoRA-scaled).
export function mergedWeights(cfg: ModelConfig, readBase: (name: string) => Float32Array, adapter: PreparedAdapter): Weights {
  const weights: Weights = new Map();
  const byName = new Map(adapter.targets.map((t) => [`${targetPath(t.layer, t.target)}.weight`, t]));
  const names = ['model.embed_tokens.weight', 'model.norm.weight', ...(cfg.tieWordEmbeddings ? [] : ['lm_head.weight'])];
  for (let l = 0; l < cfg.numLayers; l++) {
    names.push(`model.layers.${l}.input_layernorm.weight`, `model.layers.${l}.post_attention_layernorm.weight`);
    for (const t of TARGETS) {
      names.push(`${targetPath(l, t)}.weight`);
      const hasBias = ['q_proj', 'k_proj', 'v_proj'].includes(t) ? cfg.attentionBias : t === 'o_proj' ? cfg.oProjBias : cfg.mlpBias;
      if (hasBias) names.push(`${targetPath(l, t)}.bias`);
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
