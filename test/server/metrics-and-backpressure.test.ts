// Prometheus metrics after a known set of requests; the bounded queue (429 + Retry-After); a client
// that disconnects mid-stream frees its sequence at once.
import { describe, expect, it } from 'vitest';
import { adapterFiles, startTestServer, upload } from '../helpers/server.ts';

function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_:]+)(\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    if (want.every((w) => (m[3] ?? '').split(',').includes(w))) total += Number(m[4]);
  }
  return total;
}

const post = (url: string, body: unknown) => fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

describe('metrics', () => {
  it('counters and histogram counts match a known set of requests', async () => {
    const server = await startTestServer({ loraMode: 'unmerged' });
    try {
      await upload(server.url, 'ad', adapterFiles({ rank: 4, seed: 1 }));
      await post(server.url, { model: 'stories260K', prompt: [1, 403, 407], max_tokens: 5, temperature: 0 });
      await post(server.url, { model: 'stories260K', prompt: [1, 403], max_tokens: 7, temperature: 0, n: 2 });
      await post(server.url, { model: 'ad', prompt: [1, 403, 407, 261], max_tokens: 4, temperature: 0 });
      await post(server.url, { model: 'missing', prompt: 'x' });
      const text = await (await fetch(`${server.url}/metrics`)).text();
      expect(metric(text, 'loraserve_prompt_tokens_total', { adapter: 'base' })).toBe(3 + 2 * 2);
      expect(metric(text, 'loraserve_generation_tokens_total', { adapter: 'base' })).toBe(5 + 2 * 7);
      expect(metric(text, 'loraserve_prompt_tokens_total', { adapter: 'ad' })).toBe(4);
      expect(metric(text, 'loraserve_generation_tokens_total', { adapter: 'ad' })).toBe(4);
      expect(metric(text, 'loraserve_time_to_first_token_seconds_count', { path: 'base', adapter: 'base' })).toBe(3);
      expect(metric(text, 'loraserve_time_to_first_token_seconds_count', { path: 'unmerged', adapter: 'ad' })).toBe(1);
      expect(metric(text, 'loraserve_inter_token_latency_seconds_count', { path: 'base', adapter: 'base' })).toBe(4 + 2 * 6);
      expect(metric(text, 'loraserve_inter_token_latency_seconds_count', { path: 'unmerged', adapter: 'ad' })).toBe(3);
      expect(metric(text, 'loraserve_request_duration_seconds_count')).toBe(4);
      expect(metric(text, 'loraserve_requests_total', { endpoint: 'completion', finish_reason: 'length' })).toBe(4);
      expect(metric(text, 'loraserve_adapter_loads_total', { result: 'ok' })).toBe(1);
      expect(metric(text, 'loraserve_batch_size_count')).toBeGreaterThan(0);
      expect(metric(text, 'loraserve_kv_cache_budget_bytes')).toBeGreaterThan(0);
      expect(metric(text, 'loraserve_running_sequences')).toBe(0);
      expect(text).toContain('loraserve_merged_cache_hits_total');
      expect(text).toContain('loraserve_queue_length');
    } finally {
      await server.close();
    }
  });

  it('the adapter label is bounded: beyond the top adapters, traffic is labelled "other"', async () => {
    const server = await startTestServer({ metricsTopAdapters: 2 });
    try {
      for (const n of ['a1', 'a2', 'a3']) await upload(server.url, n, adapterFiles({ rank: 4, seed: n.length }));
      for (const n of ['a1', 'a1', 'a2', 'a2', 'a3']) await post(server.url, { model: n, prompt: [1, 403], max_tokens: 2 });
      const text = await (await fetch(`${server.url}/metrics`)).text();
      expect(metric(text, 'loraserve_generation_tokens_total', { adapter: 'other' })).toBe(2);
      expect(text).not.toContain('adapter="a3"');
    } finally {
      await server.close();
    }
  });
});

describe('backpressure and disconnects', () => {
  it('beyond the queue limit requests get 429 with Retry-After; no 500s', async () => {
    const server = await startTestServer({ maxQueue: 2, maxBatch: 1 });
    try {
      const long = { model: 'stories260K', prompt: [1, 403], max_tokens: 300, ignore_eos: true };
      const results = await Promise.all(Array.from({ length: 6 }, () => post(server.url, long)));
      const codes = results.map((r) => r.status).sort();
      expect(codes.filter((c) => c === 200)).toHaveLength(2);
      expect(codes.filter((c) => c === 429)).toHaveLength(4);
      const r429 = results.find((r) => r.status === 429)!;
      expect(r429.headers.get('retry-after')).toBe('1');
      expect((await r429.json()).error.type).toBe('rate_limit_error');
    } finally {
      await server.close();
    }
  });

  it('a client that leaves /v1/embeddings cancels the texts not embedded yet and frees their places', async () => {
    // one sequence at a time: 64 texts of 480 tokens take 128 prefill steps, unless cancelled
    const server = await startTestServer({ maxQueue: 64, maxBatch: 1 });
    try {
      const input = Array.from({ length: 64 }, (_, i) => Array.from({ length: 480 }, (_, j) => 1 + ((i * 31 + j * 7) % 500)));
      const ac = new AbortController();
      const pending = fetch(`${server.url}/v1/embeddings`, { method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories260K', input }) }).catch(() => null);
      const health = async (): Promise<{ running: number; waiting: number }> => (await fetch(`${server.url}/health`)).json();
      const stepsDone = async (): Promise<number> => metric(await (await fetch(`${server.url}/metrics`)).text(), 'loraserve_step_duration_seconds_count');
      // until a step has run (a busy machine may take seconds to tokenize the 64 texts first; a text
      // admitted but not yet stepped when the client leaves would run no step at all)
      for (let i = 0; i < 6000 && (await stepsDone()) === 0; i++) await new Promise((res) => setTimeout(res, 5));
      ac.abort();
      expect(await pending).toBeNull();
      let freed = false;
      for (let i = 0; i < 200 && !freed; i++) {
        const h = await health();
        freed = h.running === 0 && h.waiting === 0;
        if (!freed) await new Promise((res) => setTimeout(res, 10));
      }
      expect(freed).toBe(true);
      const steps = await stepsDone();
      expect(steps).toBeGreaterThan(0);
      expect(steps).toBeLessThan(64); // the rest never ran (all 64 texts: 128 steps)
      // all 64 queue places are free again
      const again = await fetch(`${server.url}/v1/embeddings`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories260K', input: Array.from({ length: 64 }, () => [1, 2]) }) });
      expect(again.status).toBe(200);
      expect((await again.json()).data).toHaveLength(64);
    } finally {
      await server.close();
    }
  });

  it('a client that disconnects mid-stream cancels its generation and frees its place', async () => {
    const server = await startTestServer({ maxQueue: 1 });
    try {
      const ac = new AbortController();
      const r = await fetch(`${server.url}/v1/completions`, { method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories260K', prompt: [1], max_tokens: 480, ignore_eos: true, stream: true }) });
      const reader = r.body!.getReader();
      await reader.read();
      ac.abort();
      let freed = false;
      for (let i = 0; i < 100 && !freed; i++) {
        const h = await (await fetch(`${server.url}/health`)).json();
        freed = h.running === 0 && h.waiting === 0;
        if (!freed) await new Promise((res) => setTimeout(res, 20));
      }
      expect(freed).toBe(true);
      // the single queue place is free again
      expect((await post(server.url, { model: 'stories260K', prompt: [1], max_tokens: 2 })).status).toBe(200);
      const text = await (await fetch(`${server.url}/metrics`)).text();
      // the cancelled one is counted as such, with the tokens it generated before the client left
      expect(metric(text, 'loraserve_requests_total', { endpoint: 'completion', finish_reason: 'cancelled' })).toBe(1);
      expect(metric(text, 'loraserve_requests_total', { endpoint: 'completion', finish_reason: 'length' })).toBe(1);
      expect(metric(text, 'loraserve_generation_tokens_total', { adapter: 'base' })).toBeGreaterThanOrEqual(2 + 1);
    } finally {
      await server.close();
    }
  });
});
