// How the main thread starts the engine: an EngineClient whose worker runs the engine thread's
// composition root (engine-thread.ts). The creators (main.ts, server/serve.ts, tests, benchmarks)
// call this rather than EngineClient.start, which takes the entry from its caller.
import { EngineClient } from './runtime/engine-client.ts';
import type { EngineStartOptions } from './runtime/engine-client.ts';

export const ENGINE_THREAD_ENTRY = new URL('./engine-thread-entry.mjs', import.meta.url);

export function startEngine(opts: Omit<EngineStartOptions, 'entry'>): Promise<EngineClient> {
  return EngineClient.start({ ...opts, entry: ENGINE_THREAD_ENTRY });
}
