import { describe, expect, it } from 'vitest';
import { Rng } from '../../src/runtime/random.ts';
import { clampFactors, quantileLinear, svd, svdProduct, symmetricEigen, truncate, truncationError } from '../../src/merge/svd.ts';
import type { Svd } from '../../src/merge/svd.ts';
import { product } from './merge-helpers.ts';

const randn = (rng: Rng, n: number) => Float64Array.from({ length: n }, () => rng.normal());

function check(a: Float64Array, m: number, n: number, r: Svd, tol: number): void {
  const k = Math.min(m, n);
  expect(r.k).toBe(k);
  let num = 0, den = 0;
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
    let t = 0;
    for (let l = 0; l < k; l++) t += r.u[i * k + l] * r.s[l] * r.vt[l * n + j];
    num += (t - a[i * n + j]) ** 2; den += a[i * n + j] ** 2;
  }
  expect(Math.sqrt(num / den)).toBeLessThan(tol);
  for (let j = 1; j < k; j++) expect(r.s[j]).toBeLessThanOrEqual(r.s[j - 1]);
  for (let p = 0; p < k; p++) for (let q = 0; q < k; q++) {
    let uu = 0, vv = 0;
    for (let i = 0; i < m; i++) uu += r.u[i * k + p] * r.u[i * k + q];
    for (let j = 0; j < n; j++) vv += r.vt[p * n + j] * r.vt[q * n + j];
    expect(Math.abs(uu - (p === q ? 1 : 0))).toBeLessThan(tol * 10);
    expect(Math.abs(vv - (p === q ? 1 : 0))).toBeLessThan(tol * 10);
  }
}

describe('svd', () => {
  for (const method of ['jacobi', 'gram'] as const) {
    for (const [m, n] of [[9, 6], [6, 9], [1, 5], [5, 1], [40, 40], [70, 33]]) {
      it(`${method}: reconstructs, orthonormal, sorted for ${m}×${n}`, () => {
        const a = randn(new Rng(m * 100 + n), m * n);
        check(a, m, n, svd(a, m, n, method), 1e-11);
      });
    }
  }

  it('matches a known matrix: [[3, 0], [4, 5]] has σ = √45, √5', () => {
    for (const method of ['jacobi', 'gram'] as const) {
      const r = svd(Float64Array.of(3, 0, 4, 5), 2, 2, method);
      expect(r.s[0]).toBeCloseTo(Math.sqrt(45), 12);
      expect(r.s[1]).toBeCloseTo(Math.sqrt(5), 12);
      // v1 = (1, 1)/√2 with the sign convention (largest-|x| entry positive, the first on a tie)
      expect(r.vt[0]).toBeCloseTo(Math.SQRT1_2, 12);
      expect(r.vt[1]).toBeCloseTo(Math.SQRT1_2, 12);
    }
  });

  it('matches a known matrix built from chosen factors (diag 5, 3, 1 between orthonormal bases)', () => {
    // U = Householder(I − 2uuᵀ), V = rotation; A = U diag(5,3,1) Vᵀ (4×3)
    const u0 = [0.5, 0.5, 0.5, 0.5];
    const U = Array.from({ length: 4 }, (_, i) => Array.from({ length: 4 }, (_, j) => (i === j ? 1 : 0) - 2 * u0[i] * u0[j]));
    const c = Math.cos(0.3), s = Math.sin(0.3);
    const V = [[c, -s, 0], [s, c, 0], [0, 0, 1]];
    const S = [5, 3, 1];
    const a = new Float64Array(12);
    for (let i = 0; i < 4; i++) for (let j = 0; j < 3; j++) for (let l = 0; l < 3; l++) a[i * 3 + j] += U[i][l] * S[l] * V[j][l];
    for (const method of ['jacobi', 'gram'] as const) {
      const r = svd(a, 4, 3, method);
      expect(Array.from(r.s).map((x) => Number(x.toFixed(12)))).toEqual([5, 3, 1]);
      check(a, 4, 3, r, 1e-12);
    }
  });

  it('rank-deficient input: zero singular values, exact reconstruction', () => {
    const rng = new Rng(5);
    const b = randn(rng, 20 * 3), c = randn(rng, 3 * 15);
    const a = product(b, c, 20, 3, 15);
    for (const method of ['jacobi', 'gram'] as const) {
      const r = svd(a, 20, 15, method);
      expect(r.s[3] / r.s[0]).toBeLessThan(1e-7);
      const t = truncate(r, 3);
      expect(Math.max(...product(t.b, t.a, 20, 3, 15).map((x, i) => Math.abs(x - a[i])))).toBeLessThan(1e-10);
      expect(t.relError).toBeLessThan(1e-7);
    }
  });

  it('jacobi and gram agree on the leading singular triplets', () => {
    const a = randn(new Rng(11), 30 * 20);
    const j = svd(a, 30, 20, 'jacobi'), g = svd(a, 30, 20, 'gram');
    for (let l = 0; l < 20; l++) expect(g.s[l]).toBeCloseTo(j.s[l], 10);
    for (let l = 0; l < 20 * 3; l++) expect(g.vt[l]).toBeCloseTo(j.vt[l], 8);
  });

  it('truncation error equals the share of the discarded singular values, and the measured error', () => {
    const a = randn(new Rng(3), 25 * 18);
    const r = svd(a, 25, 18);
    for (const k of [1, 4, 17, 18]) {
      const t = truncate(r, k);
      const dropped = Array.from(r.s).slice(k).reduce((s, x) => s + x * x, 0);
      const total = Array.from(r.s).reduce((s, x) => s + x * x, 0);
      expect(t.relError).toBeCloseTo(Math.sqrt(dropped / total), 12);
      const approx = product(t.b, t.a, 25, k, 18);
      let num = 0, den = 0;
      for (let i = 0; i < a.length; i++) { num += (a[i] - approx[i]) ** 2; den += a[i] ** 2; }
      expect(Math.sqrt(num / den)).toBeCloseTo(t.relError, 10);
    }
    expect(truncationError(new Float64Array(3), 1)).toBe(0);
    expect(() => truncate(r, 0)).toThrow();
    expect(() => truncate(r, 19)).toThrow();
  });

  it('svdProduct equals the SVD of the formed product', () => {
    const rng = new Rng(8);
    const b = randn(rng, 40 * 6), c = randn(rng, 6 * 30);
    const p = svdProduct(b, c, 40, 6, 30);
    const d = svd(product(b, c, 40, 6, 30), 40, 30);
    for (let l = 0; l < 6; l++) expect(p.s[l]).toBeCloseTo(d.s[l], 10);
    for (let l = 0; l < 6 * 30; l++) expect(p.vt[l]).toBeCloseTo(d.vt[l], 8);
    for (let i = 0; i < 40; i++) for (let l = 0; l < 6; l++) expect(p.u[i * 6 + l]).toBeCloseTo(d.u[i * 30 + l], 8);
  });

  it('gram with `leading`: the top vectors by inverse iteration equal the full decomposition', () => {
    const rng = new Rng(21);
    for (const [m, n, lead] of [[150, 110, 10], [100, 130, 25], [120, 120, 1]]) {
      const a = randn(rng, m * n);
      const full = svd(a, m, n, 'gram');
      const part = svd(a, m, n, 'gram', lead);
      const k = Math.min(m, n);
      for (let j = 0; j < k; j++) expect(part.s[j]).toBeCloseTo(full.s[j], 9);
      for (let j = 0; j < lead; j++) for (let i = 0; i < n; i++) expect(part.vt[j * n + i]).toBeCloseTo(full.vt[j * n + i], 8);
      for (let i = 0; i < m; i++) for (let j = 0; j < lead; j++) expect(part.u[i * k + j]).toBeCloseTo(full.u[i * k + j], 8);
      for (let p = 0; p < lead; p++) for (let q = 0; q < lead; q++) {
        let vv = 0;
        for (let i = 0; i < n; i++) vv += part.vt[p * n + i] * part.vt[q * n + i];
        expect(Math.abs(vv - (p === q ? 1 : 0))).toBeLessThan(1e-10);
      }
    }
  });

  it('symmetricEigen with top < n: clustered and repeated eigenvalues still give orthonormal eigenvectors', () => {
    // diag(5, 5, 5, 2, 1) rotated by a Householder reflection
    const n = 5;
    const u = [0.1, 0.7, -0.2, 0.4, 0.3];
    const nu = Math.hypot(...u);
    const H = Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j) => (i === j ? 1 : 0) - 2 * u[i] * u[j] / (nu * nu)));
    const D = [5, 5, 5 + 1e-12, 2, 1];
    const s = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) for (let l = 0; l < n; l++) s[i * n + j] += H[i][l] * D[l] * H[j][l];
    const { values, vectors } = symmetricEigen(s, n, 3);
    expect(values[0]).toBeCloseTo(5, 10);
    expect(values[3]).toBeCloseTo(2, 10);
    for (let p = 0; p < 3; p++) {
      for (let q = 0; q < 3; q++) { let t = 0; for (let i = 0; i < n; i++) t += vectors[p * n + i] * vectors[q * n + i]; expect(t).toBeCloseTo(p === q ? 1 : 0, 9); }
      for (let i = 0; i < n; i++) { let t = 0; for (let j = 0; j < n; j++) t += s[i * n + j] * vectors[p * n + j]; expect(t).toBeCloseTo(values[p] * vectors[p * n + i], 9); }
    }
  });

  it('symmetricEigen: A v = λ v, descending', () => {
    const rng = new Rng(2);
    const n = 12;
    const x = randn(rng, n * n);
    const s = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) s[i * n + j] = x[i * n + j] + x[j * n + i];
    const { values, vectors } = symmetricEigen(s, n);
    for (let k = 0; k < n; k++) {
      if (k) expect(values[k]).toBeLessThanOrEqual(values[k - 1]);
      for (let i = 0; i < n; i++) {
        let t = 0;
        for (let j = 0; j < n; j++) t += s[i * n + j] * vectors[k * n + j];
        expect(t).toBeCloseTo(values[k] * vectors[k * n + i], 10);
      }
    }
  });

  it('quantileLinear and clampFactors follow torch.quantile / torch.clamp', () => {
    expect(quantileLinear(Float64Array.of(4, 1, 3, 2), 0.5)).toBe(2.5);
    expect(quantileLinear(Float64Array.of(4, 1, 3, 2), 1)).toBe(4);
    expect(quantileLinear(Float64Array.of(4, 1, 3, 2), 0)).toBe(1);
    expect(quantileLinear(Float64Array.of(0, 10), 0.25)).toBe(2.5);
    const b = Float64Array.of(-5, 1, 2), a = Float64Array.of(3, -0.5);
    clampFactors(b, a, 0.75); // sorted −5, −0.5, 1, 2, 3 → q .75 at pos 3 → 2
    expect(Array.from(b)).toEqual([-2, 1, 2]);
    expect(Array.from(a)).toEqual([2, -0.5]);
    const b2 = Float64Array.of(-5, -4), a2 = Float64Array.of(-3);
    clampFactors(b2, a2, 0); // hi = −5 < lo = 5: torch.clamp gives hi everywhere
    expect(Array.from(b2)).toEqual([-5, -5]);
    expect(Array.from(a2)).toEqual([-5]);
  });
});
