// --lora-mode auto's cost model: it merges a hot adapter when the measured unmerged overhead over
// the window repays the build, but never starts a build that would stall every stream for over
// MAX_AUTO_STALL_MS (a build blocks the engine thread), whatever the overhead.
import { describe, expect, it } from 'vitest';
import { MergedSessions, MAX_AUTO_STALL_MS } from '../../src/merge/merged-sessions.ts';
import { loadModelFiles } from '../../src/runtime/model-loader.ts';
import { STORIES_DIR } from '../helpers/fixtures.ts';

const cfg = loadModelFiles(STORIES_DIR).config;

// How many times auto decided to build (it then looks the adapter up; here there is none to build).
function decisions(weightBytes: number, overheadMs: number, steps: number): number {
  let looked = 0;
  const m = new MergedSessions('auto', cfg, 128, () => new Float32Array(0), () => { looked++; return undefined; }, 1 << 30, {}, weightBytes);
  for (let i = 0; i < 20; i++) { m.observe('base', 1, 10); m.observe('unmerged', 1, 10 + overheadMs); }
  for (let i = 0; i < steps; i++) m.sessionFor('v1', 1);
  return looked;
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
});
