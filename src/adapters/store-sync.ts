// Store sync: several replicas (loraserve processes) share one adapter store directory (e.g. a
// ReadWriteMany volume). Each replica polls the store every `intervalMs` (--store-sync-ms) and
// takes the changes made through the others over (registry.syncStore, syncRegistrations):
//   - polling, not fs.watch: change notifications do not cross machines on network volumes.
//   - cheap: one readdir of the store and three lstats per adapter (store.signature: the adapter
//     directory's inode, which every commit changes since it renames a new directory in, and the
//     PEFT files' inode, size and mtime), one lstat of .path-adapters.json. An adapter is read and
//     hashed again only when its signature changed.
//   - bounded: an upload, replace or delete through one replica is served (or gone) on the others
//     within one interval plus the time to read and validate the adapter (default 1 s interval:
//     within 5 s for adapters that load in under 4 s).
//   - read-only: the sync writes nothing in the store. Clean-up is the store's sweep() (age-based,
//     adapter-store.ts), run every `sweepMs`, as at start-up.
// Changes through this replica are applied at once, as without a sync; the poll then finds nothing
// new for them.
import type { AdapterRegistry, SyncReport } from './registry.ts';

export const DEFAULT_STORE_SYNC_MS = 1_000;
const DEFAULT_SWEEP_MS = 60_000;

export interface StoreSyncLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export class StoreSync {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private stopped = false;
  private lastSweep = Date.now();
  ticks = 0;

  constructor(
    private readonly registry: AdapterRegistry,
    private readonly opts: { intervalMs: number; sweepMs?: number; log?: StoreSyncLog },
  ) {}

  start(): void {
    this.schedule();
  }

  // One poll: what changed on disk since the last one, applied to the registry.
  async tick(): Promise<SyncReport> {
    const report = await this.registry.syncStore();
    await this.registry.syncRegistrations(report);
    this.ticks++;
    const log = this.opts.log;
    if (log) {
      if (report.loaded.length || report.removed.length) log.info({ loaded: report.loaded, removed: report.removed }, 'adapter store sync: took over changes from the shared store');
      for (const f of report.failed) log.warn({ adapter: f.name, error: f.error }, `adapter store sync: '${f.name}' changed in the shared store but is not served: ${f.error}`);
    }
    if (Date.now() - this.lastSweep >= (this.opts.sweepMs ?? DEFAULT_SWEEP_MS)) {
      this.lastSweep = Date.now();
      const removed = this.registry.store.sweep();
      if (removed.length) log?.info({ removed }, 'adapter store: removed old leftovers and retired versions');
    }
    return report;
  }

  // Stops polling; resolves once a poll in progress has ended.
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.running;
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.running = this.tick()
        .then(() => undefined, (err: unknown) => { this.opts.log?.warn({ error: (err as Error).message }, 'adapter store sync failed; trying again'); })
        .finally(() => { this.running = null; this.schedule(); });
    }, this.opts.intervalMs);
    this.timer.unref();
  }
}
