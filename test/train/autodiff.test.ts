// The generic autodiff path on a small graph that broadcasts differentiated operands (which the
// training graph never does): gradients from ORT against float64 finite differences of the same
// function written out in JS. Covers sumToShape (rank-padded and size-1 broadcasts), fan-out
// (x used twice), Split/Concat, Transpose, MatMul, Softmax, LogSoftmax, Sigmoid, Div, ReduceSum.
import { describe, expect, it } from 'vitest';
import { GraphBuilder, int, ints } from '../../src/runtime/graph/ir.ts';
import { createSession, ort } from '../../src/runtime/session.ts';
import { differentiate } from '../../src/train/autodiff.ts';
import { Rng } from '../../src/runtime/random.ts';

function build() {
  const b = new GraphBuilder('t');
  const x = b.input('x', 'float32', [2, 3]);
  const y = b.input('y', 'float32', [3]);    // broadcast over rows (rank padded)
  const z = b.input('z', 'float32', [2, 1]); // broadcast over columns
  const a = b.op('Mul', [b.op('Add', [x, y]), z]);
  const d = b.op('Div', [a, b.op('Add', [b.op('Mul', [y, y]), b.float32Scalar(1)])]);
  const s = b.op('Softmax', [d], { axis: int(-1) });
  const [s1, s2] = b.opN('Split', [s, b.int64([1, 2])], 2, { axis: int(1) });
  const c = b.op('Concat', [s2, b.op('Sigmoid', [s1])], { axis: int(1) });
  const mm = b.op('MatMul', [b.op('Transpose', [c], { perm: ints([1, 0]) }), x]); // [3, 3]
  const l = b.op('LogSoftmax', [mm], { axis: int(-1) });
  b.op('Neg', [b.op('ReduceSum', [b.op('Sub', [l, b.op('ReduceSum', [z], { keepdims: int(0) })])], { keepdims: int(0) })], {}, { out: 'loss' });
  b.output('loss', 'float32', []);
  return b.build();
}

// the same function in float64
function f(x: number[], y: number[], z: number[]): number {
  const d = [0, 1].map((i) => [0, 1, 2].map((j) => ((x[i * 3 + j] + y[j]) * z[i]) / (y[j] * y[j] + 1)));
  const s = d.map((row) => { const m = Math.max(...row); const e = row.map((v) => Math.exp(v - m)); const t = e[0] + e[1] + e[2]; return e.map((v) => v / t); });
  const c = s.map((row) => [row[1], row[2], 1 / (1 + Math.exp(-row[0]))]);
  const zsum = z[0] + z[1];
  let total = 0;
  for (let p = 0; p < 3; p++) {
    const mm = [0, 1, 2].map((q) => c[0][p] * x[q] + c[1][p] * x[3 + q]);
    const m = Math.max(...mm);
    const lse = m + Math.log(mm.reduce((acc, v) => acc + Math.exp(v - m), 0));
    for (const v of mm) total += v - lse - zsum;
  }
  return -total;
}

describe('autodiff, generic broadcasting path', () => {
  it('gradients of x, y, z match float64 finite differences', async () => {
    const rng = new Rng(3);
    const vals = { x: Array.from({ length: 6 }, () => rng.normal()), y: Array.from({ length: 3 }, () => rng.normal()), z: Array.from({ length: 2 }, () => 1 + rng.normal()) };
    const session = await createSession(differentiate(build(), 'loss', ['x', 'y', 'z']), { intraOpThreads: 1 });
    const out = await session.run({
      x: new ort.Tensor('float32', Float32Array.from(vals.x), [2, 3]),
      y: new ort.Tensor('float32', Float32Array.from(vals.y), [3]),
      z: new ort.Tensor('float32', Float32Array.from(vals.z), [2, 1]),
    });
    await session.release();
    expect((out.loss.data as Float32Array)[0]).toBeCloseTo(f(vals.x, vals.y, vals.z), 4);
    for (const name of ['x', 'y', 'z'] as const) {
      const g = out[`grad.${name}`];
      expect(g.dims).toEqual(name === 'x' ? [2, 3] : name === 'y' ? [3] : [2, 1]);
      const fd = vals[name].map((v, i) => {
        const at = (w: number) => { const c = { ...vals, [name]: vals[name].map((u, j) => (j === i ? w : u)) }; return f(c.x, c.y, c.z); };
        return (at(v + 1e-5) - at(v - 1e-5)) / 2e-5;
      });
      const an = [...(g.data as Float32Array)];
      const rel = Math.hypot(...fd.map((v, i) => v - an[i])) / Math.hypot(...fd);
      expect(rel, `${name}: ${an} vs ${fd}`).toBeLessThan(1e-4);
    }
  });
});
