// The MatMulNBits probe behind docs/quantization.md (issue 18): one projection, W [N, K] as an
// initializer, on this machine's CPU EP at 2 threads, median ms of 20 runs after 3 warm-ups, for the
// 110M model's shapes (768 → 768, 768 → 2048, 2048 → 768) and M = 1, 16, 128 tokens: float32 MatMul
// against MatMulNBits at 4 and 8 bits with accuracy_level 0 (float activations) and 4 (int8).
// Run by `npm run bench -- --only quant` before the served figures; the numbers land in its JSON.
import { GraphBuilder, int } from '../src/runtime/graph/ir.ts';
import { createSession, ort } from '../src/runtime/session.ts';
import { quantizeMatrix } from '../src/runtime/quantize.ts';

export interface ProbeRow { shape: string; M: number; f32: number; q4_acc0: number; q4_acc4: number; q8_acc0: number; q8_acc4: number }

async function time(kind: 'f32' | { bits: 4 | 8; acc: 0 | 4 }, K: number, N: number, M: number, w: Float32Array): Promise<number> {
  const b = new GraphBuilder('probe');
  const x = b.input('x', 'float32', ['M', K]);
  if (kind === 'f32') {
    const wT = new Float32Array(K * N);
    for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) wT[k * N + n] = w[n * K + k];
    b.op('MatMul', [x, b.initializer('w', wT, [K, N])], {}, { out: 'y' });
  } else {
    const q = quantizeMatrix(w, N, K, { bits: kind.bits, block: 32, symmetric: true });
    b.op('MatMulNBits', [x, b.initializer('q', q.packed, [N, K / 32, (32 * kind.bits) / 8]), b.initializer('s', q.scales, [N * (K / 32)])],
      { K: int(K), N: int(N), bits: int(kind.bits), block_size: int(32), accuracy_level: int(kind.acc) }, { domain: 'com.microsoft', out: 'y' });
  }
  b.output('y', 'float32', ['M', N]);
  const session = await createSession(b.build(), { intraOpThreads: 2 });
  const feeds = { x: new ort.Tensor('float32', Float32Array.from({ length: M * K }, (_, i) => Math.sin(i)), [M, K]) };
  try {
    for (let i = 0; i < 3; i++) await session.run(feeds);
    const ms: number[] = [];
    for (let i = 0; i < 20; i++) { const t0 = performance.now(); await session.run(feeds); ms.push(performance.now() - t0); }
    return ms.sort((a, c) => a - c)[10];
  } finally {
    await session.release();
  }
}

export async function quantProbe(): Promise<ProbeRow[]> {
  const rows: ProbeRow[] = [];
  for (const [K, N] of [[768, 768], [768, 2048], [2048, 768]]) {
    const w = Float32Array.from({ length: N * K }, (_, i) => Math.sin(i * 0.37) * 0.05);
    for (const M of [1, 16, 128]) {
      rows.push({
        shape: `${K}→${N}`, M,
        f32: await time('f32', K, N, M, w),
        q4_acc0: await time({ bits: 4, acc: 0 }, K, N, M, w),
        q4_acc4: await time({ bits: 4, acc: 4 }, K, N, M, w),
        q8_acc0: await time({ bits: 8, acc: 0 }, K, N, M, w),
        q8_acc4: await time({ bits: 8, acc: 4 }, K, N, M, w),
      });
    }
  }
  return rows;
}
