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
//             the same batch size (EWMA, per power-of-two batch bucket). Without base traffic at
//             that size, merged steps stand in for base ones (the same graph without LoRA); with
//             neither, the adapter's share of a token's FLOPs (loraFlopShare) of the unmerged time,
//             a lower bound (the feeds and extra GEMMs cost more than their FLOPs), so it errs
//             towards not building; once merged steps are timed they replace it. steps_X = X's single-adapter
//             steps among the last AUTO_WINDOW decode steps (its traffic is assumed to continue);
//             build_ms = the last build's duration, or an estimate from the model's size before the
//             first build. Building blocks the engine thread (session creation), which stalls
//             every stream for the whole build, so auto never starts a build expected to take more
//             than MAX_AUTO_STALL_MS, whatever it would save: on a CPU with a real model (~10 s
//             builds) auto does not merge (measured noise in the overhead once made it build on a
//             busy machine: a 40 s stall for every stream). See docs/lora-modes.md.
//             Over a quantized base (--quantize, GPTQ) a merged adapter is not the same model: its
//             session serves dequant(Q(W0 + ΔW)) where the unmerged path serves dequant(Q(W0)) + ΔW
//             (a GPTQ checkpoint: its own dequant(W0) + ΔW, on a grid the re-quantization need not keep). Before
//             an auto build the re-quantization error relative to ΔW is computed (quantize.ts
//             requantizationError, over every target): above `quantized.maxError` (--merged-quant-error,
//             default 0.05) auto does not merge that adapter version, ever. `merged` mode and
//             merged-only adapters build anyway (there is no unmerged path to keep); every build
//             over a quantized base reports its error (stats.lastRequantError, a metric).
//
// Merged-only adapters (a delta-space merge kept as ΔW, `output: "merged"`; lora-arena.ts
// isMergedOnly) have no factors, so their rows step only on their session, whatever the mode:
// required() builds it on demand. Their sessions are never evicted for an optional (merged/auto)
// build, nor for another merged-only adapter while rows run on them: a merged-only adapter that
// finds the cache full of those waits until they finish, and one larger than the whole cache fails
// its requests with a 503 naming --merged-cache-mb.
import { buildLlamaGraph } from '../runtime/llama-graph.ts';
import { TARGETS, targetHasBias, targetPath, targetShape } from '../runtime/model-targets.ts';
import type { GraphQuant, Weights } from '../runtime/llama-graph.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import { createSession } from '../runtime/session.ts';
import type { ort, SessionOptions } from '../runtime/session.ts';
import { isMergedOnly } from '../runtime/lora-arena.ts';
import type { PreparedAdapter } from '../runtime/lora-arena.ts';
import type { MergedPath } from '../runtime/scheduler.ts';
import { LoraserveError } from '../runtime/errors.ts';
import { releaseFreedMemorySoon } from '../runtime/release-memory.ts';
import { mergeDelta, mergePrepared } from './merge-lora.ts';
import { requantizationError } from '../runtime/quantize.ts';

export type LoraMode = 'auto' | 'merged' | 'unmerged';

export const AUTO_WINDOW = 256;
export const MAX_AUTO_STALL_MS = 1000;
const EWMA = 0.1;
// Until a build has been timed: about this many ms per GB of weights (measured here: ~23 s/GB on a 2-core VM).
const BUILD_MS_PER_GB = 25_000;

interface Entry { session: ort.InferenceSession; bytes: number; lastUsed: number; required: boolean }
const MAX_FAILURES = 64;

export interface MergedStats {
  hits: number;
  misses: number;
  builds: number;
  evictions: number;
  bytes: number;
  lastBuildMs: number;
  lastBuildBytes: number;   // the last session's weights: what the next build will need
  lastRequantError: number; // over a quantized base: the last merge's ‖requantization error‖ / ‖ΔW‖ (NaN: none yet)
  declined: number;         // adapter versions auto did not merge because of that error
}

export class MergedSessions implements MergedPath {
  private readonly cache = new Map<string, Entry>();
  private readonly building = new Set<string>();
  private readonly failures = new Map<string, Error>(); // merged-only versions whose build failed
  private readonly declined = new Set<string>();        // versions auto will not merge (re-quantization error)
  private readonly listeners: (() => void)[] = [];
  private readonly recent: (string | null)[] = []; // adapter version of each of the last steps (null: mixed/base)
  private readonly baseMs = new Map<number, number>();      // EWMA step ms of base-only steps, by batch bucket
  private readonly unmergedMs = new Map<number, number>();  // EWMA step ms of single-adapter unmerged steps
  private readonly mergedMs = new Map<number, number>();    // EWMA step ms of merged steps (base cost, measured without base traffic)
  readonly stats: MergedStats = { hits: 0, misses: 0, builds: 0, evictions: 0, bytes: 0, lastBuildMs: 0, lastBuildBytes: 0, lastRequantError: NaN, declined: 0 };
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
    private readonly quantized: QuantizedBase | null = null, // a quantized base: W0 + ΔW is re-quantized the same way
  ) {}

  private get quant(): GraphQuant | null {
    return this.quantized?.scheme ?? null;
  }

  sessionFor(version: string | null, batch: number): ort.InferenceSession | undefined {
    this.recent.push(version);
    if (this.recent.length > AUTO_WINDOW) this.recent.shift();
    if (this.mode === 'unmerged' || version === null) return undefined;
    const hit = this.cache.get(version);
    if (hit) { hit.lastUsed = ++this.clock; this.stats.hits++; return hit.session; }
    this.stats.misses++;
    if (this.shouldBuild(version, batch)) this.scheduleBuild(version, { required: false, keep: new Set(), bounded: this.mode === 'auto' });
    return undefined;
  }

  // The session a merged-only adapter's rows must step on; undefined while it builds or waits for
  // room. `inUse`: the merged-only versions with running rows, whose sessions stay. Throws when it
  // can never be built: larger than the whole cache, or its build failed (until it is dropped).
  required(version: string, inUse: ReadonlySet<string>): ort.InferenceSession | undefined {
    const hit = this.cache.get(version);
    if (hit) { hit.lastUsed = ++this.clock; this.stats.hits++; return hit.session; }
    const failed = this.failures.get(version);
    if (failed) throw failed;
    if (this.building.has(version)) return undefined;
    const need = this.stats.lastBuildBytes || this.weightBytes;
    if (need > this.maxBytes) {
      throw this.fail(version, new LoraserveError('unavailable', `this adapter is kept as merged weights only, and its merged weights (${mb(need)} MB) do not fit the merged-weights cache (--merged-cache-mb ${mb(this.maxBytes)})`));
    }
    let staying = 0; // bytes that cannot be evicted for it
    for (const [v, e] of this.cache) if (e.required && inUse.has(v)) staying += e.bytes;
    if (staying + need > this.maxBytes) return undefined; // the merged-only adapters running now fill the cache
    this.stats.misses++;
    this.scheduleBuild(version, { required: true, keep: inUse, bounded: false });
    return undefined;
  }

  // Called when a build settles (the engine loop may be idle, waiting for it).
  onSettled(listener: () => void): void {
    this.listeners.push(listener);
  }

  // Step timings feed the auto policy's cost model.
  observe(path: 'base' | 'unmerged' | 'merged', batch: number, ms: number): void {
    const table = path === 'base' ? this.baseMs : path === 'unmerged' ? this.unmergedMs : this.mergedMs;
    const k = bucket(batch);
    const prev = table.get(k);
    table.set(k, prev === undefined ? ms : prev + EWMA * (ms - prev));
  }

  // What auto would decide for an adapter now (exposed for the benchmark and the docs).
  autoEstimate(version: string, batch: number): { overheadMs: number; steps: number; buildMs: number } {
    const k = bucket(batch);
    const unmerged = this.unmergedMs.get(k);
    const adapter = this.lookup(version);
    const baseline = this.baseMs.get(k) ?? this.mergedMs.get(k) ?? (unmerged !== undefined && adapter ? unmerged * (1 - loraFlopShare(this.cfg, adapter)) : undefined);
    const overheadMs = unmerged !== undefined && baseline !== undefined ? Math.max(0, unmerged - baseline) : 0;
    const steps = this.recent.filter((v) => v === version).length;
    return { overheadMs, steps, buildMs: this.stats.lastBuildMs || (this.weightBytes / 1e9) * BUILD_MS_PER_GB };
  }

  isMerged(version: string): boolean {
    return this.cache.has(version);
  }

  // A replaced or unloaded adapter's merged weights are dropped (and a failed build forgotten).
  async drop(version: string): Promise<void> {
    this.failures.delete(version);
    const e = this.cache.get(version);
    if (!e) return;
    this.cache.delete(version);
    this.stats.bytes -= e.bytes;
    await e.session.release();
    releaseFreedMemorySoon(); // its weights' memory back to the OS (architecture.md, "Trimming the C heap")
  }

  private shouldBuild(version: string, batch: number): boolean {
    if (this.building.has(version) || this.declined.has(version)) return false;
    if (this.mode === 'merged') return true;
    const { overheadMs, steps, buildMs } = this.autoEstimate(version, batch);
    return buildMs <= MAX_AUTO_STALL_MS && overheadMs * steps > buildMs;
  }

  private scheduleBuild(version: string, how: BuildHow): void {
    const adapter = this.lookup(version);
    if (!adapter) return;
    this.building.add(version);
    setImmediate(() => {
      this.build(adapter, how)
        .catch((err: unknown) => { if (how.required) this.fail(version, err instanceof Error ? err : new Error(String(err))); })
        .finally(() => {
          this.building.delete(version);
          for (const l of this.listeners) l();
        });
    });
  }

  private fail(version: string, err: Error): Error {
    this.failures.set(version, err);
    if (this.failures.size > MAX_FAILURES) this.failures.delete(this.failures.keys().next().value!);
    return err;
  }

  // Builds (and caches) the merged session of an adapter, evicting the least recently used sessions
  // to make room: for an optional build only optional ones, for a merged-only adapter's any but
  // those of `keep` (merged-only adapters with running rows). Throws when it cannot make room, and
  // (`bounded`, auto's builds) when re-quantizing over a quantized base loses too much of ΔW.
  async build(adapter: PreparedAdapter, how: BuildHow = { required: isMergedOnly(adapter), keep: new Set(), bounded: false }): Promise<ort.InferenceSession> {
    const t0 = performance.now();
    const weights = mergedWeights(this.cfg, this.readBase, adapter);
    if (this.quantized) {
      const { scheme, maxError } = this.quantized;
      const error = mergedRequantError(this.cfg, this.readBase, this.quantized.readServed, weights, adapter, scheme);
      this.stats.lastRequantError = error;
      if (how.bounded && !(error <= maxError)) {
        this.declined.add(adapter.version);
        this.stats.declined++;
        throw new LoraserveError('unavailable', `auto mode does not merge this adapter over the int${scheme.bits} base: re-quantizing W0 + ΔW changes ΔW by ${error.toFixed(3)} of its size (--merged-quant-error ${maxError})`);
      }
    }
    let bytes = 0;
    for (const w of weights.values()) bytes += w.byteLength;
    const evictable = (v: string, e: Entry): boolean => v !== adapter.version && (how.required ? !(e.required && how.keep.has(v)) : !e.required);
    while (this.stats.bytes + bytes > this.maxBytes) if (!(await this.evictOldest(evictable))) break;
    if (this.stats.bytes + bytes > this.maxBytes) throw new LoraserveError('unavailable', `merged weights (${mb(bytes)} MB) do not fit the merged-weights cache (--merged-cache-mb ${mb(this.maxBytes)}, ${mb(this.stats.bytes)} MB in use)`);
    const session = await createSession(buildLlamaGraph(this.cfg, weights, { maxPositions: this.maxPositions, quant: this.quant }), this.sessionOptions);
    const twin = this.cache.get(adapter.version); // built twice at once (merged.build and a step): keep the first
    if (twin) { await session.release(); return twin.session; }
    this.cache.set(adapter.version, { session, bytes, lastUsed: ++this.clock, required: isMergedOnly(adapter) });
    this.stats.bytes += bytes;
    this.stats.builds++;
    this.stats.lastBuildMs = performance.now() - t0;
    this.stats.lastBuildBytes = bytes;
    releaseFreedMemorySoon(); // the build's merged weights and freed copies back to the OS
    return session;
  }

  private async evictOldest(evictable: (version: string, e: Entry) => boolean): Promise<boolean> {
    let oldest: string | null = null;
    let t = Infinity;
    for (const [v, e] of this.cache) if (e.lastUsed < t && evictable(v, e)) { t = e.lastUsed; oldest = v; }
    if (oldest === null) return false;
    await this.drop(oldest);
    this.stats.evictions++;
    return true;
  }
}

const mb = (bytes: number): number => Math.ceil(bytes / 2 ** 20);

interface BuildHow { required: boolean; keep: ReadonlySet<string>; bounded: boolean }

// A quantized base: how merged weights are re-quantized, W0 as the unmerged path serves it, and the
// most re-quantization error auto merges with (--merged-quant-error).
export interface QuantizedBase { scheme: GraphQuant; readServed: (name: string) => Float32Array; maxError: number }

// ‖dequant(Q(W0 + ΔW)) − served W0 − ΔW‖ / ‖ΔW‖ over every target the adapter changes (Frobenius
// norms summed over targets): how much of the adapter a merged session loses or adds.
export function mergedRequantError(cfg: ModelConfig, readBase: (name: string) => Float32Array, readServed: (name: string) => Float32Array, merged: Weights, adapter: PreparedAdapter, quant: GraphQuant): number {
  let errSq = 0;
  let deltaSq = 0;
  for (const t of adapter.targets) {
    const name = `${targetPath(t.layer, t.target)}.weight`;
    const [out, inDim] = targetShape(cfg, t.target);
    const e = requantizationError(readBase(name), merged.get(name)!, readServed(name), out, inDim, quant);
    errSq += e.errSq;
    deltaSq += e.deltaSq;
  }
  return deltaSq > 0 ? Math.sqrt(errSq / deltaSq) : 0;
}

// The share of a token's multiply-adds that an adapter's factors add to the base model's:
// Σ_targets r·(in + out) over Σ_weights of the projections and the LM head (embeddings are looked up).
export function loraFlopShare(cfg: ModelConfig, adapter: PreparedAdapter): number {
  let lora = 0;
  for (const t of adapter.targets) {
    const [out, inDim] = targetShape(cfg, t.target);
    lora += t.rank * (inDim + out);
  }
  let base = cfg.vocabSize * cfg.hiddenSize;
  for (const t of TARGETS) {
    const [out, inDim] = targetShape(cfg, t);
    base += cfg.numLayers * out * inDim;
  }
  return lora / (base + lora);
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
    if (t.delta) { weights.set(name, mergeDelta(w0, t.delta)); continue; }
    const [out, inDim] = targetShape(cfg, t.target);
    weights.set(name, mergePrepared(w0, t, out, inDim));
  }
  return weights;
}
