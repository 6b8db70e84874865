// Prometheus metrics (prom-client), with Prometheus naming: base units, _seconds, _bytes, _total.
// Latency histograms carry `path` (base, merged, unmerged) and `adapter`. The adapter label is
// bounded: the top adapters by traffic keep their own value, the rest share "other".
// Totals never go backwards: when an adapter leaves the top-N, its history is folded into "other"
// (counter values added to other's; histogram buckets, _sum and _count added to other's) before its
// series is removed, so for every metric the sum over all label values never decreases.
// With --metrics-compat vllm (the default) the model-server protocol's metrics of the Gateway API
// Inference Extension (GIE docs/proposals/003-model-server-protocol) are exposed beside these, under
// vLLM's names, which the endpoint picker reads by default: see VllmCompatMetrics below.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { foldLabel } from './metric-fold.ts';
import type { EngineStats } from '../runtime/engine-messages.ts';
import { warmBufferStats } from '../adapters/warm-buffers.ts';
import type { WarmBufferStats } from '../adapters/warm-buffers.ts';
import { LoraActivity } from './lora-activity.ts';

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

// The label of every per-request mixture (adapters/mixture.ts): blends are too many to label apart.
export const MIXTURE_LABEL = 'mixture';

export class Metrics {
  readonly registry = new Registry();
  private readonly counts = new Map<string, number>();
  private readonly labelled = new Set<string>();

  readonly ttft: Histogram<'path' | 'adapter'> = new Histogram({ name: 'loraserve_time_to_first_token_seconds', help: 'Time from request arrival to its first generated token', labelNames: ['path', 'adapter'], buckets: LATENCY_BUCKETS, registers: [this.registry], collect: () => this.fold(this.ttft) });
  readonly itl: Histogram<'path' | 'adapter'> = new Histogram({ name: 'loraserve_inter_token_latency_seconds', help: 'Time between consecutive generated tokens of a sequence', labelNames: ['path', 'adapter'], buckets: LATENCY_BUCKETS, registers: [this.registry], collect: () => this.fold(this.itl) });
  readonly duration: Histogram<'path' | 'adapter'> = new Histogram({ name: 'loraserve_request_duration_seconds', help: 'Time from arrival to the last token of a sequence', labelNames: ['path', 'adapter'], buckets: LATENCY_BUCKETS, registers: [this.registry], collect: () => this.fold(this.duration) });
  readonly promptTokens: Counter<'adapter'> = new Counter({ name: 'loraserve_prompt_tokens_total', help: 'Prompt tokens processed', labelNames: ['adapter'], registers: [this.registry], collect: () => this.fold(this.promptTokens) });
  readonly generationTokens: Counter<'adapter'> = new Counter({ name: 'loraserve_generation_tokens_total', help: 'Tokens generated', labelNames: ['adapter'], registers: [this.registry], collect: () => this.fold(this.generationTokens) });
  readonly requests = new Counter({ name: 'loraserve_requests_total', help: 'Finished sequences by finish reason (stop, length, or cancelled: the client left first)', labelNames: ['endpoint', 'finish_reason'], registers: [this.registry] });
  readonly queueLength = new Gauge({ name: 'loraserve_queue_length', help: 'Sequences waiting for a place in the running batch', registers: [this.registry] });
  readonly running = new Gauge({ name: 'loraserve_running_sequences', help: 'Sequences in the running batch', registers: [this.registry] });
  readonly batchSize = new Histogram({ name: 'loraserve_batch_size', help: 'Sequences per decode step', buckets: [1, 2, 4, 8, 16, 32, 64, 128], registers: [this.registry] });
  readonly stepDuration = new Histogram({ name: 'loraserve_step_duration_seconds', help: 'Duration of one engine step', labelNames: ['kind', 'path'], buckets: LATENCY_BUCKETS, registers: [this.registry] });
  readonly adapterLoads = new Counter({ name: 'loraserve_adapter_loads_total', help: 'Adapter loads (uploads, load_lora_adapter, start-up) by result', labelNames: ['result'], registers: [this.registry] });
  readonly routingDecisions = new Counter({ name: 'loraserve_routing_decisions_total', help: 'Requests with model "auto" or "auto:mix", by what routing chose (an adapter, base, or mixture)', labelNames: ['adapter'], registers: [this.registry] });
  readonly adapterUnloads = new Counter({ name: 'loraserve_adapter_unloads_total', help: 'Adapters unloaded or deleted', registers: [this.registry] });
  readonly hostEvictions = new Counter({ name: 'loraserve_adapter_host_cache_evictions_total', help: 'Adapters evicted from the host-memory cache', registers: [this.registry] });
  readonly hostLoads = new Counter({ name: 'loraserve_adapter_host_cache_loads_total', help: 'Adapters decoded into the host-memory cache (from uploads or disk)', registers: [this.registry] });
  readonly hostFailures = new Counter({ name: 'loraserve_adapter_host_cache_failures_total', help: 'Adapter reloads from disk that failed', registers: [this.registry] });
  readonly hostBytes = new Gauge({ name: 'loraserve_adapter_host_cache_bytes', help: 'Bytes of decoded adapters in the host cache (LRU)', registers: [this.registry] });
  readonly hostLimit = new Gauge({ name: 'loraserve_adapter_host_cache_limit_bytes', help: 'The host cache bound (--host-cache-mb): LRU + pinned adapters outside it stay within max(limit, pinned)', registers: [this.registry] });
  readonly hostPinned = new Gauge({ name: 'loraserve_adapter_host_cache_pinned_bytes', help: 'Bytes of adapters pinned by waiting or running sequences', registers: [this.registry] });
  readonly hostPinnedOutside = new Gauge({ name: 'loraserve_adapter_host_cache_pinned_outside_bytes', help: 'Bytes of pinned adapters the LRU does not hold', registers: [this.registry] });
  readonly hostLoading = new Gauge({ name: 'loraserve_adapter_host_cache_loading', help: 'Adapter loads from disk in flight (at most 1)', registers: [this.registry] });
  readonly warmBytes = new Gauge({ name: 'loraserve_adapter_warm_buffer_bytes', help: 'Pre-touched read buffers: spare (ready) and outstanding (being touched), per thread', labelNames: ['thread', 'kind'], registers: [this.registry] });
  readonly warmLimit = new Gauge({ name: 'loraserve_adapter_warm_buffer_limit_bytes', help: 'Bound on spare + outstanding warm buffers, per thread', registers: [this.registry] });
  readonly mergedHits = new Counter({ name: 'loraserve_merged_cache_hits_total', help: 'Decode steps served from merged weights', registers: [this.registry] });
  readonly mergedMisses = new Counter({ name: 'loraserve_merged_cache_misses_total', help: 'Single-adapter decode steps without merged weights ready', registers: [this.registry] });
  readonly mergedBytes = new Gauge({ name: 'loraserve_merged_cache_bytes', help: 'Bytes of merged weights held', registers: [this.registry] });
  readonly mergedBuilds = new Counter({ name: 'loraserve_merged_cache_builds_total', help: 'Merged-weight sessions built', registers: [this.registry] });
  readonly mergedRequantError = new Gauge({ name: 'loraserve_merged_requant_error_ratio', help: 'Over a quantized base (--quantize): the last merged build\'s re-quantization error relative to the adapter\'s delta, ||Q(W0+dW) - Q(W0) - dW|| / ||dW|| (absent before one)', registers: [] }); // registered at its first value: a gauge without labels reads 0 until set
  readonly mergedDeclined = new Counter({ name: 'loraserve_merged_declined_total', help: 'Adapter versions --lora-mode auto did not merge over a quantized base because re-quantizing would change their delta by more than --merged-quant-error', registers: [this.registry] });
  readonly kvReserved = new Gauge({ name: 'loraserve_kv_cache_reserved_bytes', help: 'KV cache bytes reserved by running sequences', registers: [this.registry] });
  readonly kvBudget = new Gauge({ name: 'loraserve_kv_cache_budget_bytes', help: 'Configured KV cache budget', registers: [this.registry] });
  readonly kvUsage = new Gauge({ name: 'loraserve_kv_cache_usage_ratio', help: 'Reserved KV bytes over the budget', registers: [this.registry] });
  readonly kvArena = new Gauge({ name: 'loraserve_kv_cache_allocated_bytes', help: 'KV cache memory allocated', registers: [this.registry] });
  readonly loraArena = new Gauge({ name: 'loraserve_lora_arena_bytes', help: 'LoRA factors of the adapters in the running batch (one copy per adapter, sized by the ranks resident)', registers: [this.registry] });
  readonly loraArenaLimit = new Gauge({ name: 'loraserve_lora_arena_limit_bytes', help: 'Configured LoRA arena budget (--lora-arena-mb)', registers: [this.registry] });
  readonly engineRestarts = new Counter({ name: 'loraserve_engine_restarts_total', help: 'Engine worker restarts after it died (its requests in flight failed with 503)', registers: [this.registry] });
  readonly engineState = new Gauge({ name: 'loraserve_engine_ready', help: '1 while the engine worker serves, 0 while it restarts', registers: [this.registry] });
  readonly paused = new Gauge({ name: 'loraserve_paused_sequences', help: 'Sequences paused because their client is not reading', registers: [this.registry] });
  readonly preemptions = new Counter({ name: 'loraserve_preemptions_total', help: 'Rows given up by paused sequences so others could run (they recompute their KV when their client reads again)', registers: [this.registry] });

  private readonly mirrored = new Map<Counter, number>();
  // adapters with sequences waiting / running (generation.ts counts them)
  readonly lora = new LoraActivity();
  readonly vllm: VllmCompatMetrics | null;

  constructor(private readonly topAdapters: number, private readonly kvBudgetBytes: number, defaults = true, loraArenaBytes = 0, compat: MetricsCompat = { mode: 'none', maxLora: 1 }) {
    if (defaults) collectDefaultMetrics({ register: this.registry, prefix: 'loraserve_' });
    this.kvBudget.set(kvBudgetBytes);
    this.loraArenaLimit.set(loraArenaBytes);
    this.vllm = compat.mode === 'vllm' ? new VllmCompatMetrics(this.registry, this.lora, compat.maxLora) : null;
  }

  // The adapter label: own value for the top adapters by requests, "other" for the rest; "base"
  // for the base model and "mixture" for per-request mixtures (mixtureLabel).
  adapterLabel(name: string | null): string {
    if (name === null) return 'base';
    const c = (this.counts.get(name) ?? 0) + 1;
    this.counts.set(name, c);
    if (this.labelled.has(name)) return name;
    if (this.labelled.size < this.topAdapters) { this.labelled.add(name); return name; }
    let min: string | null = null;
    for (const l of this.labelled) if (min === null || (this.counts.get(l) ?? 0) < (this.counts.get(min) ?? 0)) min = l;
    if (min !== null && c > (this.counts.get(min) ?? 0)) {
      this.labelled.delete(min);
      this.labelled.add(name);
      this.foldRetired();
      return name;
    }
    return 'other';
  }

  // Folds the series of every adapter label that is no longer in the top-N into "other" (see the
  // top of the file). Runs when an adapter drops out and before every scrape: a request labelled
  // before its adapter dropped out observes under the old label when it finishes, and that late
  // series is folded in at the next scrape, so no retired label is ever exposed.
  private foldRetired(): void {
    for (const m of [this.ttft, this.itl, this.duration, this.promptTokens, this.generationTokens]) this.fold(m);
  }

  private fold(m: Counter<string> | Histogram<string>): void {
    foldLabel(m, 'adapter', (adapter) => adapter === 'base' || adapter === MIXTURE_LABEL || this.labelled.has(adapter), 'other');
  }

  updateEngine(s: EngineStats): void {
    this.queueLength.set(s.waiting);
    this.running.set(s.running);
    this.paused.set(s.paused);
    this.mirror(this.preemptions, s.preemptions);
    this.kvReserved.set(s.kvReservedBytes);
    this.kvArena.set(s.kvArenaBytes);
    this.loraArena.set(s.loraArenaBytes);
    this.kvUsage.set(this.kvBudgetBytes ? s.kvReservedBytes / this.kvBudgetBytes : 0);
    this.vllm?.update(s, this.kvBudgetBytes);
    this.mirror(this.hostEvictions, s.hostCache.evictions);
    this.mirror(this.hostLoads, s.hostCache.loads);
    this.mirror(this.hostFailures, s.hostCache.failures);
    this.hostBytes.set(s.hostCache.bytes);
    this.hostLimit.set(s.hostCache.limitBytes);
    this.hostPinned.set(s.hostCache.pinnedBytes);
    this.hostPinnedOutside.set(s.hostCache.pinnedOutsideBytes);
    this.hostLoading.set(s.hostCache.loading);
    this.warm('engine', s.hostCache.warmBuffers);
    this.warm('main', warmBufferStats());
    this.mirror(this.mergedHits, s.merged.hits);
    this.mirror(this.mergedMisses, s.merged.misses);
    this.mergedBytes.set(s.merged.bytes);
    this.mirror(this.mergedBuilds, s.merged.builds);
    if (!Number.isNaN(s.merged.lastRequantError)) {
      if (!this.registry.getSingleMetric('loraserve_merged_requant_error_ratio')) this.registry.registerMetric(this.mergedRequantError);
      this.mergedRequantError.set(s.merged.lastRequantError);
    }
    this.mirror(this.mergedDeclined, s.merged.declined);
  }

  private warm(thread: string, w: WarmBufferStats): void {
    this.warmBytes.set({ thread, kind: 'spare' }, w.spareBytes);
    this.warmBytes.set({ thread, kind: 'outstanding' }, w.outstandingBytes);
    this.warmLimit.set(w.limitBytes);
  }

  // A counter that follows a total kept in the engine thread.
  private mirror(c: Counter, total: number): void {
    const last = this.mirrored.get(c) ?? 0;
    if (total > last) c.inc(total - last);
    this.mirrored.set(c, total);
  }
}

// --metrics-compat: 'vllm' adds the model-server protocol's metrics; max_lora is maxResidentAdapters().
export interface MetricsCompat {
  mode: 'vllm' | 'none';
  maxLora: number;
}

// The metrics the GIE endpoint picker (EPP) scrapes from each model server, as its model-server
// protocol requires them (types and semantics) under the vLLM names it reads by default:
//   vllm:num_requests_waiting   gauge  sequences queued for a place in the running batch (engine)
//   vllm:num_requests_running   gauge  sequences in the running batch (engine)
//   vllm:kv_cache_usage_perc    gauge  KV cache in use, 0–1: reserved bytes over --kv-budget-mb
//   vllm:gpu_cache_usage_perc   gauge  the same: the name before vLLM renamed it, which the protocol
//                                      and EPP releases before the rename still read
//   vllm:lora_requests_info     gauge  labels running_lora_adapters, waiting_lora_adapters (comma
//                                      lists, no spaces, as vLLM joins them) and max_lora; its value is
//                                      the time of the scrape in Unix seconds, as vLLM's
//                                      set_to_current_time(), so the picker takes the latest series.
//                                      One series only: the previous one is dropped at each scrape.
// Not exposed: vllm:cache_config_info (optional in the protocol: block_size, num_gpu_blocks for the
// prefix-cache scorer); the KV cache here is not paged in blocks, and the picker falls back to its
// own configuration without it.
export class VllmCompatMetrics {
  readonly waiting: Gauge;
  readonly running: Gauge;
  readonly kvUsage: Gauge;
  readonly gpuCacheUsage: Gauge;
  readonly loraInfo: Gauge<'running_lora_adapters' | 'max_lora' | 'waiting_lora_adapters'>;

  constructor(registry: Registry, lora: LoraActivity, maxLora: number) {
    const registers = [registry];
    this.waiting = new Gauge({ name: 'vllm:num_requests_waiting', help: 'Number of requests waiting to be processed (loraserve: sequences queued for the running batch).', registers });
    this.running = new Gauge({ name: 'vllm:num_requests_running', help: 'Number of requests currently running (loraserve: sequences in the running batch).', registers });
    this.kvUsage = new Gauge({ name: 'vllm:kv_cache_usage_perc', help: 'KV-cache usage. 1 means 100 percent usage (loraserve: reserved bytes over the KV budget).', registers });
    this.gpuCacheUsage = new Gauge({ name: 'vllm:gpu_cache_usage_perc', help: 'KV-cache usage. 1 means 100 percent usage (the name before vllm:kv_cache_usage_perc; same value).', registers });
    const max = String(maxLora);
    this.loraInfo = new Gauge({
      name: 'vllm:lora_requests_info',
      help: 'Running stats on lora requests: adapters with sequences running and waiting, max_lora adapters resident at once; the value is the time of the update.',
      labelNames: ['running_lora_adapters', 'max_lora', 'waiting_lora_adapters'],
      registers,
      collect() {
        const s = lora.snapshot();
        this.reset();
        this.labels({ running_lora_adapters: s.running.join(','), max_lora: max, waiting_lora_adapters: s.waiting.join(',') }).setToCurrentTime();
      },
    });
  }

  update(s: EngineStats, kvBudgetBytes: number): void {
    this.waiting.set(s.waiting);
    this.running.set(s.running);
    const usage = kvBudgetBytes ? Math.min(1, Math.max(0, s.kvReservedBytes / kvBudgetBytes)) : 0;
    this.kvUsage.set(usage);
    this.gpuCacheUsage.set(usage);
  }
}
