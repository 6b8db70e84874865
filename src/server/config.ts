// Server configuration: one typed object, visible defaults, flags and LORASERVE_* env vars,
// validated once at start-up. Model facts come from the model directory, never from flags.
import { QUANT_BLOCKS } from '../runtime/quantize.ts';
import type { GraphQuant } from '../runtime/llama-graph.ts';
import { parseFlags } from '../runtime/cli-args.ts';
import { existsSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { DEFAULT_ADAPTERS_DIR, DEFAULT_MODEL_DIR } from './default-model.ts';
import type { LoraMode } from '../merge/merged-sessions.ts';
import { DEFAULT_ITL_TARGET_MS } from '../runtime/scheduler.ts';
import type { SchedulingMode } from '../runtime/schedule-policy.ts';

export interface ServerConfig {
  model: string;               // --model DIR: Hugging Face model directory
  modelName: string | null;    // --model-name: id served as the base model (default: directory name)
  host: string;                // --host (default 127.0.0.1: local only)
  port: number;                // --port (default 8080; 0 = any free port)
  adapters: string;            // --adapters DIR: the adapter store; every adapter in it is served
  preloadAdapters: string | null; // --preload-adapters DIR: adapter directories served read-only beside the store
                               // (default: models/default-adapters when --model is the default model; 'none': off)
  allowAdapterDirs: string[];  // --allow-adapter-dir (repeatable): extra dirs load_lora_adapter may read
  apiKey: string | null;       // --api-key: Bearer key for inference
  adminKey: string | null;     // --admin-key: Bearer key for adapter management
  enableLocalAdmin: boolean;   // --enable-local-admin: adapter management without a key, from loopback clients only
  metricsKey: string | null;   // --metrics-key: Bearer key for /metrics (default: the API key, when set)
  allowedHosts: string[];      // --allowed-host (repeatable): Host header names accepted besides the listen address
  corsOrigins: string[];       // --cors-origin (repeatable): origins allowed cross-origin requests (CORS); '*' for any
  clientStallTimeoutMs: number; // --client-stall-timeout-ms: a stream whose client reads nothing this long is dropped
  maxLoraRank: number;         // --max-lora-rank
  loraMode: LoraMode;          // --lora-mode auto|merged|unmerged
  maxBatch: number;            // --max-batch: running sequences per step
  maxQueue: number;            // --max-queue: sequences waiting or running; beyond it, 429
  maxMixture: number;          // --max-mixture: adapters in one per-request mixture
  routeThreshold: number;      // --route-threshold: the least routing score that picks an adapter ("auto"); else the base model
  routeMixK: number;           // --route-mix-k: "auto:mix" blends at most this many adapters
  routeMixTemperature: number; // --route-mix-temperature: τ of auto:mix's softmax(score / τ) weights
  maxUploadBytes: number;      // --max-upload-mb: adapter upload limit (413)
  maxContext: number;          // --max-context: tokens per sequence (prompt + output)
  maxTokensDefault: number;    // --default-max-tokens for completions without max_tokens
  kvBudgetBytes: number;       // --kv-budget-mb
  hostCacheBytes: number;      // --host-cache-mb: decoded adapters kept in memory
  mergedCacheBytes: number;    // --merged-cache-mb: merged-weight sessions kept
  mergedQuantError: number;    // --merged-quant-error: over a quantized base, auto merges only within this relative error of ΔW
  prefillChunk: number;        // --prefill-chunk: the most prompt tokens in one step
  itlTargetMs: number;         // --itl-target-ms: inter-token latency kept for running streams while prompts prefill
  scheduling: SchedulingMode;  // --scheduling goodput|strict
  loraArenaBytes: number;      // --lora-arena-mb: LoRA factors of the running batch's adapters
  threads: number;             // --threads: onnxruntime intra-op threads (0 = all cores)
  executionProvider: 'cpu' | 'cuda'; // --execution-provider
  quantize: GraphQuant | null;  // --quantize none|int8|int4, --quant-block N, --quant-scheme sym|asym: W0 of the projections (issue 18)
  unloadWaitMs: number;        // --unload-wait-ms: how long an unload waits for in-flight requests
  storeSyncMs: number;         // --store-sync-ms: poll the (shared) adapter store this often; 0: off, this process alone uses the store
  metricsTopAdapters: number;  // --metrics-top-adapters: adapters with their own metrics label
  metricsCompat: 'vllm' | 'none'; // --metrics-compat: also expose GIE's model-server protocol metrics under vLLM's names
  drainTimeoutMs: number;      // --drain-timeout SECONDS: on SIGTERM, how long in-flight requests may finish before they are cancelled
  dataDir: string | null;      // --data-dir: files and fine-tuning jobs (default: <adapters>.fine-tuning, beside the store)
  fineTuneThreads: number;     // --fine-tune-threads: onnxruntime intra-op threads of a training job
  fineTuneNice: number;        // --fine-tune-nice: the training thread's nice value (0–19; serving first)
  fineTuneMaxQueue: number;    // --fine-tune-max-queue: jobs waiting to train at most; beyond, 429
  fineTunePauseWaiting: number; // --fine-tune-pause-waiting: pause training while this many sequences wait (0: never)
  maxTrainingFileBytes: number; // --max-training-file-mb: a training file's size limit (413)
  maxTrainingFileLines: number; // --max-training-file-lines: a training file's example limit (413)
  logLevel: string;            // --log-level
  logPrompts: boolean;         // --log-prompts: prompt text in logs (off by default)
  testFaults?: boolean;        // tests only (no flag): the engine accepts injected faults
}

const MB = 1024 * 1024;

export const DEFAULT_CONFIG: ServerConfig = {
  model: DEFAULT_MODEL_DIR,
  modelName: null,
  host: '127.0.0.1',
  port: 8080,
  adapters: './adapters',
  preloadAdapters: null,
  allowAdapterDirs: [],
  apiKey: null,
  adminKey: null,
  enableLocalAdmin: false,
  metricsKey: null,
  allowedHosts: [],
  corsOrigins: [],
  clientStallTimeoutMs: 30_000,
  maxLoraRank: 64,
  loraMode: 'auto',
  maxBatch: 32,
  maxQueue: 256,
  maxMixture: 4,
  routeThreshold: 0.25,
  routeMixK: 2,
  routeMixTemperature: 0.05,
  maxUploadBytes: 512 * MB,
  maxContext: 4096,
  maxTokensDefault: 16,
  kvBudgetBytes: 2048 * MB,
  hostCacheBytes: 1024 * MB,
  mergedCacheBytes: 2048 * MB,
  mergedQuantError: 0.05,
  prefillChunk: 512,
  itlTargetMs: DEFAULT_ITL_TARGET_MS,
  scheduling: 'goodput',
  loraArenaBytes: 1024 * MB,
  threads: 0,
  executionProvider: 'cpu',
  quantize: null,
  unloadWaitMs: 10_000,
  storeSyncMs: 1_000,
  metricsTopAdapters: 20,
  metricsCompat: 'vllm',
  drainTimeoutMs: 30_000,
  dataDir: null,
  fineTuneThreads: 1,
  fineTuneNice: 10,
  fineTuneMaxQueue: 8,
  fineTunePauseWaiting: 0,
  maxTrainingFileBytes: 64 * MB,
  maxTrainingFileLines: 100_000,
  logLevel: 'info',
  logPrompts: false,
};

export class ConfigError extends Error {}

type Flag = { type: 'string' | 'boolean'; multiple?: boolean };
const FLAGS: Record<string, Flag> = {
  model: { type: 'string' }, 'model-name': { type: 'string' }, host: { type: 'string' }, port: { type: 'string' },
  adapters: { type: 'string' }, 'preload-adapters': { type: 'string' }, 'allow-adapter-dir': { type: 'string', multiple: true },
  'api-key': { type: 'string' }, 'admin-key': { type: 'string' }, 'enable-local-admin': { type: 'boolean' }, 'metrics-key': { type: 'string' },
  'allowed-host': { type: 'string', multiple: true }, 'cors-origin': { type: 'string', multiple: true }, 'client-stall-timeout-ms': { type: 'string' },
  quantize: { type: 'string' }, 'quant-block': { type: 'string' }, 'quant-scheme': { type: 'string' }, 'quantize-lm-head': { type: 'boolean' },
  'max-mixture': { type: 'string' }, 'route-threshold': { type: 'string' }, 'route-mix-k': { type: 'string' }, 'route-mix-temperature': { type: 'string' },
  'max-lora-rank': { type: 'string' }, 'lora-mode': { type: 'string' }, 'max-batch': { type: 'string' }, 'max-queue': { type: 'string' },
  'max-upload-mb': { type: 'string' }, 'max-context': { type: 'string' }, 'default-max-tokens': { type: 'string' },
  'kv-budget-mb': { type: 'string' }, 'host-cache-mb': { type: 'string' }, 'merged-cache-mb': { type: 'string' }, 'merged-quant-error': { type: 'string' },
  'prefill-chunk': { type: 'string' }, 'itl-target-ms': { type: 'string' }, scheduling: { type: 'string' }, 'lora-arena-mb': { type: 'string' }, threads: { type: 'string' }, 'execution-provider': { type: 'string' },
  'unload-wait-ms': { type: 'string' }, 'store-sync-ms': { type: 'string' }, 'metrics-top-adapters': { type: 'string' }, 'log-level': { type: 'string' }, 'log-prompts': { type: 'boolean' },
  'metrics-compat': { type: 'string' }, 'drain-timeout': { type: 'string' },
  'data-dir': { type: 'string' }, 'fine-tune-threads': { type: 'string' }, 'fine-tune-nice': { type: 'string' }, 'fine-tune-max-queue': { type: 'string' },
  'fine-tune-pause-waiting': { type: 'string' }, 'max-training-file-mb': { type: 'string' }, 'max-training-file-lines': { type: 'string' },
};

// Flags win over env vars (LORASERVE_MAX_BATCH for --max-batch), env vars over defaults.
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): ServerConfig {
  let values: Record<string, string | boolean | string[] | undefined>;
  try {
    values = parseFlags({ args: argv, options: FLAGS, strict: true, allowPositionals: false }).values as typeof values;
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
  const get = (flag: string): string | boolean | string[] | undefined => {
    if (values[flag] !== undefined) return values[flag];
    const v = env[`LORASERVE_${flag.toUpperCase().replace(/-/g, '_')}`];
    if (v === undefined) return undefined;
    if (FLAGS[flag].type === 'boolean') return v === '1' || v.toLowerCase() === 'true';
    if (FLAGS[flag].multiple) return v.split(',').filter(Boolean);
    return v;
  };
  const str = (flag: string, def: string): string => (get(flag) as string | undefined) ?? def;
  const int = (flag: string, def: number, min: number, max: number): number => {
    const v = get(flag);
    if (v === undefined) return def;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new ConfigError(`--${flag} must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
    return n;
  };
  const real = (flag: string, def: number, min: number, max: number): number => {
    const v = get(flag);
    if (v === undefined) return def;
    const n = Number(v);
    if (typeof v !== 'string' || v.trim() === '' || !Number.isFinite(n) || n < min || n > max) throw new ConfigError(`--${flag} must be a number in [${min}, ${max}], got ${JSON.stringify(v)}`);
    return n;
  };
  const d = DEFAULT_CONFIG;
  const loraMode = str('lora-mode', d.loraMode);
  if (!['auto', 'merged', 'unmerged'].includes(loraMode)) throw new ConfigError(`--lora-mode must be auto, merged or unmerged, got ${JSON.stringify(loraMode)}`);
  const scheduling = str('scheduling', d.scheduling);
  if (!['goodput', 'strict'].includes(scheduling)) throw new ConfigError(`--scheduling must be goodput or strict, got ${JSON.stringify(scheduling)}`);
  const ep = str('execution-provider', d.executionProvider);
  const quantMode = str('quantize', 'none');
  if (!['none', 'int8', 'int4'].includes(quantMode)) throw new ConfigError(`--quantize must be none, int8 or int4, got ${JSON.stringify(quantMode)}`);
  const quantScheme = str('quant-scheme', 'asym'); // asym kept 4/5 of stories260K's greedy cases at int8 (sym: 3/5)
  if (!['sym', 'asym'].includes(quantScheme)) throw new ConfigError(`--quant-scheme must be sym or asym, got ${JSON.stringify(quantScheme)}`);
  const quantBlock = int('quant-block', 32, 16, 256);
  if (!(QUANT_BLOCKS as readonly number[]).includes(quantBlock)) throw new ConfigError(`--quant-block must be one of ${QUANT_BLOCKS.join(', ')}, got ${quantBlock}`);
  if (quantMode === 'none' && (get('quant-block') !== undefined || get('quant-scheme') !== undefined || get('quantize-lm-head') !== undefined)) throw new ConfigError('--quant-block, --quant-scheme and --quantize-lm-head need --quantize int8 or int4');
  const metricsCompat = str('metrics-compat', d.metricsCompat);
  if (!['vllm', 'none'].includes(metricsCompat)) throw new ConfigError(`--metrics-compat must be vllm or none, got ${JSON.stringify(metricsCompat)}`);
  if (!['cpu', 'cuda'].includes(ep)) throw new ConfigError(`--execution-provider must be cpu or cuda, got ${JSON.stringify(ep)}`);
  const model = resolve(str('model', d.model));
  const preload = get('preload-adapters') as string | undefined;
  const cfg: ServerConfig = {
    model,
    modelName: (get('model-name') as string | undefined) ?? null,
    host: str('host', d.host),
    port: int('port', d.port, 0, 65535),
    adapters: resolve(str('adapters', d.adapters)),
    // the demo adapters go with the default model only: another model gets none unless asked
    preloadAdapters: preload === undefined ? (model === resolve(DEFAULT_MODEL_DIR) && existsSync(DEFAULT_ADAPTERS_DIR) ? DEFAULT_ADAPTERS_DIR : null)
      : preload === '' || preload === 'none' ? null : resolve(preload),
    allowAdapterDirs: ((get('allow-adapter-dir') as string[] | undefined) ?? []).map((p) => resolve(p)),
    apiKey: (get('api-key') as string | undefined) ?? null,
    adminKey: (get('admin-key') as string | undefined) ?? null,
    enableLocalAdmin: (get('enable-local-admin') as boolean | undefined) ?? d.enableLocalAdmin,
    metricsKey: (get('metrics-key') as string | undefined) ?? null,
    allowedHosts: ((get('allowed-host') as string[] | undefined) ?? []).map((h) => h.toLowerCase()),
    corsOrigins: (get('cors-origin') as string[] | undefined) ?? [],
    clientStallTimeoutMs: int('client-stall-timeout-ms', d.clientStallTimeoutMs, 100, 3_600_000),
    maxLoraRank: int('max-lora-rank', d.maxLoraRank, 1, 1024),
    loraMode: loraMode as LoraMode,
    maxBatch: int('max-batch', d.maxBatch, 1, 1024),
    maxQueue: int('max-queue', d.maxQueue, 1, 1_000_000),
    maxMixture: int('max-mixture', d.maxMixture, 1, 64),
    routeThreshold: real('route-threshold', d.routeThreshold, -1, 1),
    routeMixK: int('route-mix-k', d.routeMixK, 1, 64),
    routeMixTemperature: real('route-mix-temperature', d.routeMixTemperature, 1e-6, 1000),
    maxUploadBytes: int('max-upload-mb', d.maxUploadBytes / MB, 1, 1_000_000) * MB,
    maxContext: int('max-context', d.maxContext, 16, 1_048_576),
    maxTokensDefault: int('default-max-tokens', d.maxTokensDefault, 1, 1_048_576),
    kvBudgetBytes: int('kv-budget-mb', d.kvBudgetBytes / MB, 1, 10_000_000) * MB,
    hostCacheBytes: int('host-cache-mb', d.hostCacheBytes / MB, 1, 10_000_000) * MB,
    mergedCacheBytes: int('merged-cache-mb', d.mergedCacheBytes / MB, 0, 10_000_000) * MB,
    mergedQuantError: real('merged-quant-error', d.mergedQuantError, 0, 1000),
    prefillChunk: int('prefill-chunk', d.prefillChunk, 16, 65536),
    itlTargetMs: int('itl-target-ms', d.itlTargetMs, 10, 600_000),
    scheduling: scheduling as SchedulingMode,
    loraArenaBytes: int('lora-arena-mb', d.loraArenaBytes / MB, 1, 10_000_000) * MB,
    threads: int('threads', d.threads, 0, 1024),
    executionProvider: ep as 'cpu' | 'cuda',
    quantize: quantMode === 'none' ? null : { bits: quantMode === 'int8' ? 8 : 4, block: quantBlock, symmetric: quantScheme === 'sym', accuracyLevel: 4, lmHead: get('quantize-lm-head') === true },
    unloadWaitMs: int('unload-wait-ms', d.unloadWaitMs, 0, 3_600_000),
    storeSyncMs: int('store-sync-ms', d.storeSyncMs, 0, 600_000),
    metricsTopAdapters: int('metrics-top-adapters', d.metricsTopAdapters, 0, 10_000),
    metricsCompat: metricsCompat as 'vllm' | 'none',
    drainTimeoutMs: int('drain-timeout', d.drainTimeoutMs / 1000, 0, 3600) * 1000,
    dataDir: get('data-dir') !== undefined ? resolve(str('data-dir', '')) : null,
    fineTuneThreads: int('fine-tune-threads', d.fineTuneThreads, 1, 1024),
    fineTuneNice: int('fine-tune-nice', d.fineTuneNice, 0, 19),
    fineTuneMaxQueue: int('fine-tune-max-queue', d.fineTuneMaxQueue, 1, 10_000),
    fineTunePauseWaiting: int('fine-tune-pause-waiting', d.fineTunePauseWaiting, 0, 1_000_000),
    maxTrainingFileBytes: int('max-training-file-mb', d.maxTrainingFileBytes / MB, 1, 100_000) * MB,
    maxTrainingFileLines: int('max-training-file-lines', d.maxTrainingFileLines, 1, 100_000_000),
    logLevel: str('log-level', d.logLevel),
    logPrompts: (get('log-prompts') as boolean | undefined) ?? d.logPrompts,
  };
  if (!existsSync(cfg.model) || !statSync(cfg.model).isDirectory()) throw new ConfigError(`--model ${cfg.model} is not a directory`);
  if (cfg.preloadAdapters !== null && (!existsSync(cfg.preloadAdapters) || !statSync(cfg.preloadAdapters).isDirectory())) throw new ConfigError(`--preload-adapters ${cfg.preloadAdapters} is not a directory`);
  for (const dir of cfg.allowAdapterDirs) if (!existsSync(dir)) throw new ConfigError(`--allow-adapter-dir ${dir} does not exist`);
  for (const o of cfg.corsOrigins) if (o !== '*' && !/^https?:\/\/[^/\s]+$/.test(o)) throw new ConfigError(`--cors-origin must be '*' or an origin such as https://app.example.com (scheme and host, no path), got ${JSON.stringify(o)}`);
  if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(cfg.logLevel)) throw new ConfigError(`--log-level must be one of fatal, error, warn, info, debug, trace, silent`);
  return cfg;
}

// Where files and fine-tuning jobs live: --data-dir, else beside the adapter store (never inside it).
export function dataDirOf(cfg: Pick<ServerConfig, 'dataDir' | 'adapters'>): string {
  return cfg.dataDir ?? `${resolve(cfg.adapters)}.fine-tuning`;
}
