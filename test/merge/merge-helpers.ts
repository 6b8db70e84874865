// Random adapters and comparisons for the merge tests.
import { Rng } from '../../src/runtime/random.ts';
import type { TargetFactors } from '../../src/merge/merge-options.ts';
import type { Mat, RefAdapter } from '../reference/peft-merge-reference.ts';

export function randomFactors(rng: Rng, rank: number, out: number, inDim: number, scale: number): TargetFactors {
  const a = Float32Array.from({ length: rank * inDim }, () => rng.normal() * 0.5);
  const b = Float32Array.from({ length: out * rank }, () => rng.normal() * 0.5);
  return { a, b, rank, scale, in: inDim, out };
}

export const toMat = (x: ArrayLike<number>, rows: number, cols: number): Mat => Array.from({ length: rows }, (_, i) => Array.from({ length: cols }, (_, j) => x[i * cols + j]));
export const toRef = (t: TargetFactors): RefAdapter => ({ A: toMat(t.a, t.rank, t.in), B: toMat(t.b, t.out, t.rank), scaling: t.scale, r: t.rank });

export function relDiff(x: ArrayLike<number> | Mat, y: ArrayLike<number> | Mat): number {
  const fx = Array.isArray(x) && Array.isArray(x[0]) ? (x as Mat).flat() : Array.from(x as ArrayLike<number>);
  const fy = Array.isArray(y) && Array.isArray(y[0]) ? (y as Mat).flat() : Array.from(y as ArrayLike<number>);
  if (fx.length !== fy.length) return Infinity;
  let num = 0, den = 0;
  for (let i = 0; i < fx.length; i++) { num += (fx[i] - fy[i]) ** 2; den += fy[i] ** 2; }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

// B·A [out, in] of flat factors
export function product(b: ArrayLike<number>, a: ArrayLike<number>, out: number, rank: number, inDim: number): Float64Array {
  const d = new Float64Array(out * inDim);
  for (let o = 0; o < out; o++) for (let k = 0; k < rank; k++) for (let i = 0; i < inDim; i++) d[o * inDim + i] += b[o * rank + k] * a[k * inDim + i];
  return d;
}
