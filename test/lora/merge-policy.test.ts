// --lora-mode auto's cost model: it merges a hot adapter when the measured unmerged overhead over
// the window repays the build, but never starts a build that would stall every stream for over
// MAX_AUTO_STALL_MS (a build blocks the engine thread), whatever the overhead.
import { describe, expect, it } from 'vitest';
import { MergedSessions, MAX_AUTO_STALL_MS, loraFlopShare } from '../../src/merge/merged-sessions.ts';
import { TARGETS } from '../../src/runtime/model-targets.ts';
import type { PreparedAdapter } from '../../src/runtime/lora-arena.ts';
import { loadModelFiles } from '../../src/runtime/model-loader.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const cfg = loadModelFiles(STORIES_DIR).config;

// How many times auto decided to build (the build itself is stubbed out).
function decisions(weightBytes: number, overheadMs: number, steps: number): number {
  let started = 0;
  const m = new MergedSessions('auto', cfg, 128, () => new Float32Array(0), () => undefined, 1 << 30, {}, weightBytes);
  (m as unknown as { scheduleBuild: () => void }).scheduleBuild = () => { started++; };
  for (let i = 0; i < 20; i++) { m.observe('base', 1, 10); m.observe('unmerged', 1, 10 + overheadMs); }
  for (let i = 0; i < steps; i++) m.sessionFor('v1', 1);
  return started;
}

describe('auto merge policy', () => {
  it('merges a hot adapter whose overhead repays a short build', () => {
    // 1 MB of weights: ~25 ms estimated build; 2 ms saved a step: repaid after ~13 steps
    expect(decisions(1e6, 2, 40)).toBeGreaterThan(0);
    expect(decisions(1e6, 0, 40)).toBe(0); // no overhead, nothing to repay
  });

  it('never starts a build that would stall the engine over the bound, however large the overhead', () => {
    const bytes = (MAX_AUTO_STALL_MS / 25_000) * 1e9 * 4; // a build estimated at 4× the bound
    expect(decisions(bytes, 1000, 256)).toBe(0);
  });

  // Without base-model traffic (issue 17): before, the overhead was unknown (no base step time) and
  // auto never merged. Now merged steps stand in for base ones, and before any, the adapter's FLOP share.
  const adapterOfRank = (rank: number): PreparedAdapter => ({
    version: 'v1', rank, useDora: false, bytes: 0,
    targets: Array.from({ length: cfg.numLayers }, (_, layer) => TARGETS.map((target) => ({ layer, target, rank, a: new Float32Array(0), b: new Float32Array(0), g: null }))).flat(),
  });
  function builds(rank: number, unmergedMs: number, steps: number, mergedMs?: number): number {
    let started = 0;
    const m = new MergedSessions('auto', cfg, 128, () => new Float32Array(0), () => adapterOfRank(rank), 1 << 30, {}, 1e6);
    (m as unknown as { scheduleBuild: () => void }).scheduleBuild = () => { started++; };
    for (let i = 0; i < 20; i++) { m.observe('unmerged', 1, unmergedMs); if (mergedMs !== undefined) m.observe('merged', 1, mergedMs); }
    for (let i = 0; i < steps; i++) m.sessionFor('v1', 1);
    return started;
  }

  it('merges a hot adapter with no base traffic at all, from its FLOP share of the unmerged step time', () => {
    const share = loraFlopShare(cfg, adapterOfRank(8));
    expect(share).toBeGreaterThan(0.1); // rank 8 on every target of this tiny model
    expect(share).toBeLessThan(0.2);
    // 4 ms unmerged steps: ≥ 0.4 ms a step to save, the ~25 ms estimated build repaid within the window
    expect(builds(8, 4, 256)).toBeGreaterThan(0);
    expect(builds(8, 4, 10)).toBe(0); // not hot enough yet
  });

  it('timed merged steps replace the FLOP estimate', () => {
    expect(builds(8, 4, 256, 4)).toBe(0);   // merged measured as fast as unmerged: nothing to save
    expect(builds(8, 4, 256, 1)).toBeGreaterThan(0);
  });
});
