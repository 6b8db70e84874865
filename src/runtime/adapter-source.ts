// What the scheduler needs from the adapter tiers (implemented by adapters/host-cache.ts):
// a prepared adapter for a request's version, loaded from disk if the host cache lost it.
import type { AdapterRef } from './generate-request.ts';
import type { PreparedAdapter } from './lora-arena.ts';

export interface AdapterSource {
  // The prepared adapter if it is in host memory; otherwise undefined and a load starts.
  acquire(ref: AdapterRef): PreparedAdapter | undefined;
  // Why the last load of this version failed, if it did (the request then ends with this error).
  failure(ref: AdapterRef): Error | undefined;
  // Keep this version in host memory while sequences use it.
  pin(version: string): void;
  unpin(version: string): void;
  // Resolves when a pending load settles, so the scheduler can retry admission.
  onSettled(listener: () => void): void;
}
