// Starts the real server on 127.0.0.1 (any free port) with the stories260K model.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer } from '../../src/server/serve.ts';
import type { RunningServer } from '../../src/server/serve.ts';
import { DEFAULT_CONFIG } from '../../src/server/config.ts';
import type { ServerConfig } from '../../src/server/config.ts';
import { STORIES_DIR } from './fixtures.ts';
import { loadModelFiles } from '../../src/runtime/model-loader.ts';
import { buildAdapter } from '../../scripts/make-test-adapters.ts';
import type { AdapterSpec } from '../../scripts/make-test-adapters.ts';
import { encodeSafetensors } from '../../src/runtime/safetensors.ts';

export function testConfig(over: Partial<ServerConfig> = {}): ServerConfig {
  return {
    ...DEFAULT_CONFIG,
    model: STORIES_DIR,
    host: '127.0.0.1',
    port: 0,
    adapters: mkdtempSync(join(tmpdir(), 'loraserve-adapters-')),
    enableLocalAdmin: true,
    threads: 1,
    logLevel: 'silent',
    maxContext: 512,
    ...over,
  };
}

export async function startTestServer(over: Partial<ServerConfig> = {}): Promise<RunningServer> {
  return startServer(testConfig(over));
}

const cfg = loadModelFiles(STORIES_DIR).config;

export function adapterFiles(spec: AdapterSpec): { config: Uint8Array; weights: Uint8Array } {
  const f = buildAdapter(cfg, spec);
  return { config: new TextEncoder().encode(JSON.stringify(f.config)), weights: encodeSafetensors(f.tensors) };
}

export function uploadForm(name: string, files: { config: Uint8Array; weights: Uint8Array }, extra: Record<string, string> = {}): FormData {
  const form = new FormData();
  form.append('name', name);
  for (const [k, v] of Object.entries(extra)) form.append(k, v);
  form.append('adapter_config.json', new Blob([files.config as Uint8Array<ArrayBuffer>]), 'adapter_config.json');
  form.append('adapter_model.safetensors', new Blob([files.weights as Uint8Array<ArrayBuffer>]), 'adapter_model.safetensors');
  return form;
}

export async function upload(url: string, name: string, files: { config: Uint8Array; weights: Uint8Array }, opts: { replace?: boolean; key?: string } = {}): Promise<Response> {
  return fetch(`${url}/v1/adapters`, {
    method: 'POST',
    body: uploadForm(name, files, opts.replace ? { replace: 'true' } : {}),
    headers: opts.key ? { authorization: `Bearer ${opts.key}` } : {},
  });
}
