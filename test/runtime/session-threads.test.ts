// Intra-op threads: 0 (the default of --threads) means every core this process may use, resolved
// by us. onnxruntime's own default ran one thread on a 2-core VM, so a session created with
// nothing asked for must start as many pool threads as an explicit request for all cores.
import { describe, expect, it } from 'vitest';
import { availableParallelism } from 'node:os';
import { readdirSync } from 'node:fs';
import { GraphBuilder } from '../../src/runtime/graph/ir.ts';
import { createSession, intraOpThreadCount } from '../../src/runtime/session.ts';

const threadsNow = (): number => readdirSync('/proc/self/task').length;

function tinyGraph() {
  const b = new GraphBuilder('tiny');
  b.op('Relu', [b.input('x', 'float32', [2])], {}, { out: 'y' });
  b.output('y', 'float32', [2]);
  return b.build();
}

// OS threads a session adds to this process when it is created.
async function threadsAdded(intraOpThreads: number | undefined): Promise<number> {
  const before = threadsNow();
  const session = await createSession(tinyGraph(), { intraOpThreads });
  const added = threadsNow() - before;
  await session.release();
  return added;
}

describe('intra-op threads', () => {
  it('resolves 0 and nothing to the cores available, and keeps an explicit count', () => {
    expect(intraOpThreadCount(0)).toBe(availableParallelism());
    expect(intraOpThreadCount(undefined)).toBe(availableParallelism());
    expect(intraOpThreadCount(3)).toBe(3);
  });

  it.runIf(process.platform === 'linux' && availableParallelism() > 1)('a default session runs a pool of all cores, not one thread', async () => {
    await threadsAdded(1); // the first session also starts onnxruntime's environment (one more thread)
    const one = await threadsAdded(1);
    const all = await threadsAdded(availableParallelism());
    const byDefault = await threadsAdded(undefined);
    expect(all).toBeGreaterThan(one); // the pool's threads show in /proc
    expect(byDefault).toBe(all);
  });
});
