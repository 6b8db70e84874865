// The model-server protocol of Kubernetes' Gateway API Inference Extension (GIE,
// docs/proposals/003-model-server-protocol), as its endpoint picker scrapes it from /metrics in the
// text format: the queue (vllm:num_requests_waiting), the running batch (vllm:num_requests_running),
// KV-cache utilisation from 0 to 1 (vllm:kv_cache_usage_perc, and vllm:gpu_cache_usage_perc, its
// name before vLLM renamed it), all gauges without labels; and the LoRA state as vLLM reports it:
// the gauge vllm:lora_requests_info whose value is the time of the update and whose labels are
// running_lora_adapters and waiting_lora_adapters (comma lists) and max_lora. Checked under load: a
// small batch (--max-batch 2) with more streams than it holds, on three adapters, so that some wait.
// --metrics-compat none leaves them out.
import { describe, expect, it } from 'vitest';
import { adapterFiles, startTestServer, upload } from '../helpers/server.ts';
import { parsePromText } from '../helpers/prom-text.ts';
import type { Family } from '../helpers/prom-text.ts';
import { maxResidentAdapters } from '../../src/server/lora-activity.ts';
import { loadModelFiles } from '../../src/runtime/model-loader.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';
import { loadConfig, ConfigError, DEFAULT_CONFIG } from '../../src/server/config.ts';

const GAUGES = ['vllm:num_requests_waiting', 'vllm:num_requests_running', 'vllm:kv_cache_usage_perc', 'vllm:gpu_cache_usage_perc'];
const LORA_INFO = 'vllm:lora_requests_info';

async function scrape(url: string): Promise<Map<string, Family>> {
  const r = await fetch(`${url}/metrics`);
  expect(r.status).toBe(200);
  expect(r.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return parsePromText(await r.text());
}

// A gauge without labels: its TYPE line says gauge, it has one sample, and the value is a number.
function gauge(m: Map<string, Family>, name: string): number {
  const f = m.get(name);
  expect(f, name).toBeDefined();
  expect(f!.type, `# TYPE ${name}`).toBe('gauge');
  expect(f!.samples, name).toHaveLength(1);
  expect(f!.samples[0].labels).toEqual({});
  expect(Number.isFinite(f!.samples[0].value)).toBe(true);
  return f!.samples[0].value;
}

function loraInfo(m: Map<string, Family>): { running: string[]; waiting: string[]; max: string; value: number; raw: Record<string, string> } {
  const f = m.get(LORA_INFO);
  expect(f, LORA_INFO).toBeDefined();
  expect(f!.type).toBe('gauge');
  // one series, the current one (the picker takes the series with the latest timestamp)
  expect(f!.samples).toHaveLength(1);
  const s = f!.samples[0];
  expect(Object.keys(s.labels).sort()).toEqual(['max_lora', 'running_lora_adapters', 'waiting_lora_adapters']);
  const list = (v: string): string[] => (v === '' ? [] : v.split(','));
  return { running: list(s.labels.running_lora_adapters), waiting: list(s.labels.waiting_lora_adapters), max: s.labels.max_lora, value: s.value, raw: s.labels };
}

// A streaming completion whose body is read to the end in the background.
function stream(url: string, model: string, maxTokens: number): Promise<string> {
  return fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt: [1, 403], max_tokens: maxTokens, ignore_eos: true, stream: true }),
  }).then(async (r) => {
    expect(r.status).toBe(200);
    return r.text();
  });
}

describe('GIE model-server protocol metrics (--metrics-compat vllm, the default)', () => {
  it('the required metrics have their names, gauge TYPE lines and labels, with waiting > 0 and the adapters running and waiting listed under load', async () => {
    const server = await startTestServer({ maxBatch: 2 });
    try {
      for (const [i, name] of ['alpha', 'beta', 'gamma'].entries()) {
        expect((await upload(server.url, name, adapterFiles({ rank: 4, seed: i + 1 }))).status).toBe(201);
      }
      // idle: nothing queued or running, empty lists, max_lora as configured
      const idle = await scrape(server.url);
      for (const g of GAUGES) expect(gauge(idle, g), g).toBe(0);
      const i0 = loraInfo(idle);
      const expectedMax = maxResidentAdapters(loadModelFiles(STORIES_DIR).config, DEFAULT_CONFIG.maxLoraRank, DEFAULT_CONFIG.loraArenaBytes, 2);
      expect(expectedMax).toBe(2); // stories260K's slots are small: --max-batch bounds it
      expect(i0).toMatchObject({ running: [], waiting: [], max: String(expectedMax) });
      expect(Math.abs(i0.value - Date.now() / 1000)).toBeLessThan(60); // a Unix timestamp in seconds

      // load: four long streams on alpha fill the batch of 2 and its queue, then beta and gamma queue
      // behind them. The state looked for is a snapshot with beta and gamma waiting while alpha runs;
      // on a busy machine alpha's streams may all end before beta's and gamma's requests arrive (they
      // then wait alone, for their adapters to load), so a round that never shows it is run again.
      const streams: Promise<string>[] = [];
      let m = idle;
      let seen: ReturnType<typeof loraInfo> | null = null;
      for (let round = 0; round < 5 && !seen; round++) {
        await Promise.all(streams);
        m = await scrape(server.url);
        const alpha = Array.from({ length: 4 }, () => stream(server.url, 'alpha', 500));
        streams.push(...alpha);
        for (let i = 0; i < 200 && gauge(m, 'vllm:num_requests_running') < 2; i++) m = await scrape(server.url);
        streams.push(stream(server.url, 'beta', 8), stream(server.url, 'gamma', 8));
        for (let i = 0; i < 200 && !seen; i++) {
          m = await scrape(server.url);
          const info = loraInfo(m);
          if (info.waiting.includes('beta') && info.waiting.includes('gamma') && info.running.length > 0) seen = info;
          if (gauge(m, 'vllm:num_requests_running') === 0 && gauge(m, 'vllm:num_requests_waiting') === 0) break;
        }
      }
      expect(seen, 'beta and gamma listed as waiting').not.toBeNull();
      expect(seen!.running).toEqual(['alpha']);                 // the batch holds alpha's sequences only
      expect(seen!.raw.waiting_lora_adapters).not.toMatch(/\s/); // comma-joined as vLLM does, no spaces
      expect(seen!.waiting.length).toBe(new Set(seen!.waiting).size); // each adapter once
      expect(gauge(m, 'vllm:num_requests_running')).toBe(2);
      const waiting = gauge(m, 'vllm:num_requests_waiting');
      expect(waiting).toBeGreaterThanOrEqual(2);                 // at least beta's and gamma's
      expect(waiting).toBe(m.get('loraserve_queue_length')!.samples[0].value); // the same scrape, the same engine stats
      const kv = gauge(m, 'vllm:kv_cache_usage_perc');
      expect(kv).toBeGreaterThan(0);
      expect(kv).toBeLessThanOrEqual(1);
      expect(gauge(m, 'vllm:gpu_cache_usage_perc')).toBe(kv);
      expect(m.get('loraserve_kv_cache_usage_ratio')!.samples[0].value).toBeCloseTo(kv, 12);

      // every stream ends with [DONE]; then the lists are empty again, still one series
      for (const body of await Promise.all(streams)) expect(body.trimEnd().endsWith('data: [DONE]')).toBe(true);
      const after = await scrape(server.url);
      expect(loraInfo(after)).toMatchObject({ running: [], waiting: [] });
      expect(gauge(after, 'vllm:num_requests_running')).toBe(0);
      expect(gauge(after, 'vllm:num_requests_waiting')).toBe(0);
      // the loraserve_* metrics are still there beside them
      expect(after.get('loraserve_requests_total')?.type).toBe('counter');
    } finally {
      await server.close();
    }
  }, 120_000);

  it('--metrics-compat none leaves every vllm: metric out; the loraserve_* ones stay', async () => {
    const server = await startTestServer({ metricsCompat: 'none' });
    try {
      const text = await (await fetch(`${server.url}/metrics`)).text();
      expect(text).not.toContain('vllm:');
      expect(parsePromText(text).get('loraserve_queue_length')?.type).toBe('gauge');
    } finally {
      await server.close();
    }
  });

  it('--metrics-compat takes vllm (the default) or none', () => {
    expect(loadConfig(['--model', STORIES_DIR], {}).metricsCompat).toBe('vllm');
    expect(loadConfig(['--model', STORIES_DIR, '--metrics-compat', 'none'], {}).metricsCompat).toBe('none');
    expect(loadConfig(['--model', STORIES_DIR], { LORASERVE_METRICS_COMPAT: 'none' }).metricsCompat).toBe('none');
    expect(() => loadConfig(['--model', STORIES_DIR, '--metrics-compat', 'sglang'], {})).toThrow(ConfigError);
  });
});

describe('max_lora', () => {
  it('is the number of adapter slots at --max-lora-rank that fit in the LoRA arena, at most --max-batch, at least 1', () => {
    const cfg = loadModelFiles(STORIES_DIR).config;
    const slot = 4 * 64 * cfg.numLayers * (
      2 * cfg.hiddenSize + cfg.numHeads * cfg.headDim // q
      + 2 * (cfg.hiddenSize + cfg.numKvHeads * cfg.headDim) // k, v
      + cfg.numHeads * cfg.headDim + cfg.hiddenSize // o
      + 3 * (cfg.hiddenSize + cfg.intermediateSize)); // gate, up, down
    expect(maxResidentAdapters(cfg, 64, 5 * slot + 1, 32)).toBe(5);
    expect(maxResidentAdapters(cfg, 64, 5 * slot, 3)).toBe(3);
    expect(maxResidentAdapters(cfg, 64, slot - 1, 32)).toBe(1);
  });
});
