// merge_utils primitives on the reference's test vectors (formats-and-apis.md §2.4).
import { describe, expect, it } from 'vitest';
import { primitives as P } from '../../src/merge/index.ts';

const T = [Float64Array.of(1, -2, 3, -4), Float64Array.of(-3, 1.5, 0.5, -1), Float64Array.of(2.5, 2, -1, 0)];
const arr = (x: Float64Array) => Array.from(x, (v) => v + 0); // −0 → 0

describe('merge primitives', () => {
  it('magnitude pruning keeps ⌊d·n⌋ entries by |value|', () => {
    expect(arr(P.magnitudeBasedPruning(T[0], 0.5))).toEqual([0, 0, 3, -4]);
    expect(arr(P.magnitudeBasedPruning(T[1], 0.5))).toEqual([-3, 1.5, 0, 0]);
    expect(arr(P.magnitudeBasedPruning(T[2], 0.5))).toEqual([2.5, 2, 0, 0]);
    expect(arr(P.magnitudeBasedPruning(Float64Array.of(1, -1, 1, 2), 0.5))).toEqual([1, 0, 0, 2]); // tie at |1|: lower index
    expect(arr(P.magnitudeBasedPruning(T[0], 0.1))).toEqual([0, 0, 0, 0]);
  });

  it('ties, magnitude_prune, task_arithmetic', () => {
    expect(arr(P.ties(T, [1, 1, 1], 0.5, 'total'))).toEqual([-3, 1.75, 3, -4]);
    expect(arr(P.ties(T, [1, 1, 1], 0.5, 'frequency'))).toEqual([2.5, 1.75, 3, -4]);
    expect(arr(P.ties(T, [1, 0.5, 2], 0.5, 'total'))).toEqual([-1.5, 2.375, 3, -4]);
    expect(arr(P.ties(T, [1, 0.5, 2], 1, 'total'))).toEqual([3, 2.375, 1.625, -2.25]);
    expect(arr(P.magnitudePrune(T, [1, 0.5, 2], 0.5))).toEqual([3.5, 4.75, 3, -4]);
    expect(arr(P.taskArithmetic(T, [1, 0.5, 2]))).toEqual([4.5, 2.75, 1.25, -4.5]);
  });

  it('majority sign: a zero total elects +1; zero entries are never in the mask', () => {
    const m = P.majoritySignMask([Float64Array.of(1, 0), Float64Array.of(-1, 0)], 'total');
    expect(Array.from(m[0])).toEqual([1, 0]);
    expect(Array.from(m[1])).toEqual([0, 0]);
  });
});
