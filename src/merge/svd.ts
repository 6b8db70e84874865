// A small dense SVD over Float64Array, for merging adapters (no dependencies, deterministic).
//
//   A [m, n] row-major = U · diag(s) · Vt,   U [m, k], s [k] (descending, ≥ 0), Vt [k, n], k = min(m, n)
//
// Two methods:
//   'jacobi': one-sided (Hestenes) Jacobi on the columns of A (or Aᵀ when m < n). High relative
//             accuracy, O(sweeps · k² · max(m, n)); used for small k (≤ JACOBI_MAX_K by default).
//   'gram':   eigen-decomposition of the smaller Gram matrix (AᵀA or AAᵀ) by Householder
//             tridiagonalisation + implicit QL (EISPACK tred2/tql2), then the other side as A·v/σ.
//             O(m·n·k + k³). Singular values below ~√ε·σ₁ lose relative accuracy (the Gram matrix
//             squares the condition number), but the top singular vectors, their span and the sum of
//             the discarded σ² (what a rank-k truncation needs) stay accurate to ~ε·σ₁².
// Sign convention (SVD signs are not unique): every row of Vt is flipped so that its entry of
// largest magnitude (the first such, on a tie) is positive; the matching column of U flips with it.
// Zero singular values get a zero column in U (U is orthonormal only on the nonzero part).

export interface Svd {
  m: number;
  n: number;
  k: number;          // min(m, n)
  u: Float64Array;    // [m, k] row-major
  s: Float64Array;    // [k], descending
  vt: Float64Array;   // [k, n] row-major
}

export type SvdMethod = 'auto' | 'jacobi' | 'gram';
export const JACOBI_MAX_K = 96;

// `leading`: the Gram method computes every singular value but only the first `leading` singular
// vectors (U columns and Vt rows; the rest stay zero), by inverse iteration instead of the full QL
// accumulation. A truncation to rank k needs no more than leading = k. Jacobi ignores it.
export function svd(a: Float64Array | Float32Array, m: number, n: number, method: SvdMethod = 'auto', leading = Math.min(m, n)): Svd {
  if (!(Number.isInteger(m) && m >= 1 && Number.isInteger(n) && n >= 1)) throw new RangeError(`svd: bad shape [${m}, ${n}]`);
  if (a.length !== m * n) throw new RangeError(`svd: ${a.length} values for shape [${m}, ${n}]`);
  const k = Math.min(m, n);
  const useJacobi = method === 'jacobi' || (method === 'auto' && k <= JACOBI_MAX_K);
  const r = useJacobi ? jacobiSvd(a, m, n) : gramSvd(a, m, n, leading);
  normaliseSigns(r);
  return r;
}

// ---- one-sided Jacobi -------------------------------------------------------------------------

function jacobiSvd(a: Float64Array | Float32Array, m: number, n: number): Svd {
  // work on the tall orientation: T [rows, cols] with rows ≥ cols; columns are stored as rows of `w`
  const tall = m >= n;
  const rows = tall ? m : n;
  const cols = tall ? n : m;
  const w = new Float64Array(cols * rows); // w[j*rows + i] = T[i, j]
  if (tall) { for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) w[j * rows + i] = a[i * n + j]; }
  else { for (let i = 0; i < m; i++) w.set(a.subarray(i * n, i * n + n) as ArrayLike<number>, i * rows); } // Tᵀ = A: column i of T = row i of A
  const v = new Float64Array(cols * cols); // v[j*cols + i] = V[i, j] (columns as rows)
  for (let j = 0; j < cols; j++) v[j * cols + j] = 1;
  const eps = 2.220446049250313e-16;
  for (let sweep = 0; sweep < 80; sweep++) {
    let rotated = false;
    for (let p = 0; p < cols - 1; p++) {
      const po = p * rows;
      for (let q = p + 1; q < cols; q++) {
        const qo = q * rows;
        let alpha = 0, beta = 0, gamma = 0;
        for (let i = 0; i < rows; i++) { const x = w[po + i], y = w[qo + i]; alpha += x * x; beta += y * y; gamma += x * y; }
        if (gamma === 0 || alpha === 0 || beta === 0) continue;
        if (Math.abs(gamma) <= eps * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = (zeta >= 0 ? 1 : -1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        for (let i = 0; i < rows; i++) { const x = w[po + i], y = w[qo + i]; w[po + i] = c * x - s * y; w[qo + i] = s * x + c * y; }
        const pv = p * cols, qv = q * cols;
        for (let i = 0; i < cols; i++) { const x = v[pv + i], y = v[qv + i]; v[pv + i] = c * x - s * y; v[qv + i] = s * x + c * y; }
      }
    }
    if (!rotated) break;
  }
  const sig = new Float64Array(cols);
  for (let j = 0; j < cols; j++) { let t = 0; for (let i = 0; i < rows; i++) t += w[j * rows + i] ** 2; sig[j] = Math.sqrt(t); }
  const order = Array.from({ length: cols }, (_, j) => j).sort((x, y) => sig[y] - sig[x] || x - y);
  // T = W' · Vᵀ with W' columns = σ_j · û_j: left vectors of T are û_j, right are V's columns
  const k = cols;
  const left = new Float64Array(rows * k);   // [rows, k]
  const right = new Float64Array(k * cols);  // [k, cols] = Vᵀ rows
  const s = new Float64Array(k);
  for (let jj = 0; jj < k; jj++) {
    const j = order[jj];
    s[jj] = sig[j];
    if (sig[j] > 0) { const inv = 1 / sig[j]; for (let i = 0; i < rows; i++) left[i * k + jj] = w[j * rows + i] * inv; }
    right.set(v.subarray(j * cols, j * cols + cols), jj * cols);
  }
  if (tall) return { m, n, k, u: left, s, vt: right };
  // A = Tᵀ = V · S · Ûᵀ: U_A = V [m=cols, k], Vt_A = Ûᵀ [k, n=rows]
  const u = new Float64Array(m * k);
  for (let jj = 0; jj < k; jj++) for (let i = 0; i < m; i++) u[i * k + jj] = right[jj * cols + i];
  const vt = new Float64Array(k * n);
  for (let jj = 0; jj < k; jj++) for (let i = 0; i < n; i++) vt[jj * n + i] = left[i * k + jj];
  return { m, n, k, u, s, vt };
}

// ---- Gram matrix + symmetric eigen-decomposition ----------------------------------------------

function gramSvd(a: Float64Array | Float32Array, m: number, n: number, leading: number): Svd {
  const tall = m >= n;
  const k = Math.min(m, n);
  // G = AᵀA [n, n] when tall, else AAᵀ [m, m]
  const g = new Float64Array(k * k);
  if (tall) gramTall(a, m, n, g);
  else {
    for (let i = 0; i < m; i++) {
      const oi = i * n;
      for (let j = i; j < m; j++) {
        const oj = j * n;
        let t = 0;
        for (let l = 0; l < n; l++) t += a[oi + l] * a[oj + l];
        g[i * m + j] = t;
      }
    }
  }
  for (let i = 0; i < k; i++) for (let j = 0; j < i; j++) g[i * k + j] = g[j * k + i];
  const { values, vectors } = symmetricEigen(g, k, Math.min(leading, k)); // descending; vectors[j*k + i] = i-th entry of vector j
  const s = new Float64Array(k);
  for (let j = 0; j < k; j++) s[j] = Math.sqrt(Math.max(values[j], 0));
  const tol = s[0] * k * 2.220446049250313e-16;
  if (tall) {
    // V columns = eigenvectors; U[:, j] = A v_j / σ_j
    const vt = vectors; // [k, n]
    const u = new Float64Array(m * k);
    for (let i = 0; i < m; i++) {
      const off = i * n;
      for (let j = 0; j < Math.min(k, leading); j++) {
        if (!(s[j] > tol)) continue;
        const vo = j * n;
        let t = 0;
        for (let l = 0; l < n; l++) t += a[off + l] * vt[vo + l];
        u[i * k + j] = t / s[j];
      }
    }
    return { m, n, k, u, s, vt };
  }
  // U columns = eigenvectors; Vt[j, :] = u_jᵀ A / σ_j
  const u = new Float64Array(m * k);
  for (let j = 0; j < k; j++) for (let i = 0; i < m; i++) u[i * k + j] = vectors[j * m + i];
  const vt = new Float64Array(k * n);
  for (let j = 0; j < k; j++) {
    if (!(s[j] > tol)) continue; // (all of Vt is computed: normaliseSigns reads every row)
    const row = vt.subarray(j * n, j * n + n);
    for (let i = 0; i < m; i++) {
      const c = vectors[j * m + i];
      if (c === 0) continue;
      const off = i * n;
      for (let l = 0; l < n; l++) row[l] += c * a[off + l];
    }
    const inv = 1 / s[j];
    for (let l = 0; l < n; l++) row[l] *= inv;
  }
  return { m, n, k, u, s, vt };
}

// Upper triangle of AᵀA [n, n] += over tiles of TILE rows of A, each transposed so that the dot
// products run over contiguous memory and G is streamed once per tile, not once per row.
function gramTall(a: Float64Array | Float32Array, m: number, n: number, g: Float64Array): void {
  const TILE = 64;
  const tt = new Float64Array(n * TILE);
  for (let i0 = 0; i0 < m; i0 += TILE) {
    const h = Math.min(TILE, m - i0);
    for (let ii = 0; ii < h; ii++) { const off = (i0 + ii) * n; for (let j = 0; j < n; j++) tt[j * TILE + ii] = a[off + j]; }
    for (let j = 0; j < n; j++) {
      const oj = j * TILE;
      const go = j * n;
      for (let l = j; l < n; l++) {
        const ol = l * TILE;
        let t = 0;
        for (let ii = 0; ii < h; ii++) t += tt[oj + ii] * tt[ol + ii];
        g[go + l] += t;
      }
    }
  }
}

// Eigen-decomposition of a symmetric matrix (row-major [n, n]): values descending, vectors as rows.
// With top < n, every value is computed but only the first `top` vectors (the others are zero rows):
// eigenvalues by QL without vectors, then inverse iteration on the tridiagonal matrix, re-orthogonalised
// (Gram–Schmidt) against the vectors already found, and carried back through the Householder basis.
export function symmetricEigen(sym: Float64Array, n: number, top = n): { values: Float64Array; vectors: Float64Array } {
  const V = Float64Array.from(sym);
  const d = new Float64Array(n);
  const e = new Float64Array(n);
  tred2(V, d, e, n); // leaves Qᵀ (the tridiagonal basis as rows), ready for tql2
  if (top >= n) {
    tql2(V, d, e, n);
    const order = Array.from({ length: n }, (_, j) => j).sort((x, y) => d[y] - d[x] || x - y);
    const values = new Float64Array(n);
    const vectors = new Float64Array(n * n);
    order.forEach((j, jj) => { values[jj] = d[j]; vectors.set(V.subarray(j * n, j * n + n), jj * n); });
    return { values, vectors };
  }
  const diag = Float64Array.from(d);
  const sub = Float64Array.from(e); // sub[i] couples rows i−1 and i (sub[0] = 0)
  tql2(null, d, e, n);
  const values = Float64Array.from(d).sort().reverse();
  const vectors = new Float64Array(n * n);
  const ys = tridiagonalVectors(diag, sub, values, Math.max(top, 0), n);
  for (let j = 0; j < ys.length; j++) {
    const y = ys[j];
    const row = vectors.subarray(j * n, j * n + n);
    for (let i = 0; i < n; i++) { const c = y[i]; if (c === 0) continue; const o = i * n; for (let l = 0; l < n; l++) row[l] += c * V[o + l]; }
  }
  return { values, vectors };
}

// Eigenvectors of the symmetric tridiagonal matrix (diag, sub) for the first `top` of `values`
// (descending) by inverse iteration with partial pivoting (as LAPACK dgtsv), each orthogonalised
// against the ones before it.
function tridiagonalVectors(diag: Float64Array, sub: Float64Array, values: Float64Array, top: number, n: number): Float64Array[] {
  let norm = 0;
  for (let i = 0; i < n; i++) norm = Math.max(norm, Math.abs(diag[i]) + Math.abs(sub[i]) + (i + 1 < n ? Math.abs(sub[i + 1]) : 0));
  const eps = 2.220446049250313e-16;
  const tiny = Math.max(norm * eps, Number.MIN_VALUE);
  const out: Float64Array[] = [];
  const dd = new Float64Array(n), du = new Float64Array(n), dl = new Float64Array(n);
  let seed = 0x2545f491;
  const rand = () => { seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5; return ((seed >>> 0) / 4294967296) - 0.5; };
  for (let j = 0; j < top; j++) {
    // a shift a hair off the eigenvalue keeps T − σI invertible; nearby values get distinct shifts
    const sigma = values[j] + norm * eps * 10 * (1 + j % 7);
    let x = Float64Array.from({ length: n }, rand);
    for (let it = 0; it < 4; it++) {
      for (let i = 0; i < n; i++) { dd[i] = diag[i] - sigma; du[i] = i + 1 < n ? sub[i + 1] : 0; dl[i] = i + 1 < n ? sub[i + 1] : 0; }
      const b = x;
      const du2 = new Float64Array(n);
      for (let i = 0; i < n - 1; i++) {
        if (Math.abs(dd[i]) >= Math.abs(dl[i])) {
          if (dd[i] === 0) dd[i] = tiny;
          const fact = dl[i] / dd[i];
          dd[i + 1] -= fact * du[i];
          b[i + 1] -= fact * b[i];
          du2[i] = 0;
        } else {
          const fact = dd[i] / dl[i];
          dd[i] = dl[i];
          const temp = dd[i + 1];
          dd[i + 1] = du[i] - fact * temp;
          if (i + 1 < n - 1) { du2[i] = du[i + 1]; du[i + 1] = -fact * du[i + 1]; }
          du[i] = temp;
          const tb = b[i];
          b[i] = b[i + 1];
          b[i + 1] = tb - fact * b[i + 1];
        }
      }
      if (dd[n - 1] === 0) dd[n - 1] = tiny;
      b[n - 1] /= dd[n - 1];
      if (n > 1) b[n - 2] = (b[n - 2] - du[n - 2] * b[n - 1]) / dd[n - 2];
      for (let i = n - 3; i >= 0; i--) b[i] = (b[i] - du[i] * b[i + 1] - du2[i] * b[i + 2]) / dd[i];
      for (let pass = 0; pass < 2; pass++) {
        for (const y of out) { let t = 0; for (let i = 0; i < n; i++) t += y[i] * b[i]; for (let i = 0; i < n; i++) b[i] -= t * y[i]; }
      }
      let nrm = 0;
      for (let i = 0; i < n; i++) nrm += b[i] * b[i];
      nrm = Math.sqrt(nrm);
      if (!(nrm > 0) || !Number.isFinite(nrm)) { x = Float64Array.from({ length: n }, rand); continue; }
      for (let i = 0; i < n; i++) b[i] /= nrm;
      x = b;
    }
    out.push(x);
  }
  return out;
}

// Householder reduction to tridiagonal form (EISPACK tred2, as in JAMA), written on the TRANSPOSE:
// every V[r][c] of JAMA is V[c * n + r] here, so its column walks are contiguous rows. In: the
// symmetric matrix (its own transpose); out: Qᵀ, whose rows are the basis vectors tql2 rotates.
function tred2(V: Float64Array, d: Float64Array, e: Float64Array, n: number): void {
  for (let j = 0; j < n; j++) d[j] = V[j * n + (n - 1)];
  for (let i = n - 1; i > 0; i--) {
    let scale = 0;
    let h = 0;
    for (let k = 0; k < i; k++) scale += Math.abs(d[k]);
    if (scale === 0) {
      e[i] = d[i - 1];
      for (let j = 0; j < i; j++) { d[j] = V[j * n + (i - 1)]; V[j * n + i] = 0; V[i * n + j] = 0; }
    } else {
      for (let k = 0; k < i; k++) { d[k] /= scale; h += d[k] * d[k]; }
      let f = d[i - 1];
      let g = Math.sqrt(h);
      if (f > 0) g = -g;
      e[i] = scale * g;
      h -= f * g;
      d[i - 1] = f - g;
      for (let j = 0; j < i; j++) e[j] = 0;
      for (let j = 0; j < i; j++) {
        f = d[j];
        V[i * n + j] = f;
        g = e[j] + V[j * n + j] * f;
        for (let k = j + 1; k <= i - 1; k++) { g += V[j * n + k] * d[k]; e[k] += V[j * n + k] * f; }
        e[j] = g;
      }
      f = 0;
      for (let j = 0; j < i; j++) { e[j] /= h; f += e[j] * d[j]; }
      const hh = f / (h + h);
      for (let j = 0; j < i; j++) e[j] -= hh * d[j];
      for (let j = 0; j < i; j++) {
        f = d[j];
        g = e[j];
        for (let k = j; k <= i - 1; k++) V[j * n + k] -= f * e[k] + g * d[k];
        d[j] = V[j * n + (i - 1)];
        V[j * n + i] = 0;
      }
    }
    d[i] = h;
  }
  for (let i = 0; i < n - 1; i++) {
    V[i * n + (n - 1)] = V[i * n + i];
    V[i * n + i] = 1;
    const h = d[i + 1];
    if (h !== 0) {
      for (let k = 0; k <= i; k++) d[k] = V[(i + 1) * n + k] / h;
      for (let j = 0; j <= i; j++) {
        let g = 0;
        for (let k = 0; k <= i; k++) g += V[(i + 1) * n + k] * V[j * n + k];
        for (let k = 0; k <= i; k++) V[j * n + k] -= g * d[k];
      }
    }
    for (let k = 0; k <= i; k++) V[(i + 1) * n + k] = 0;
  }
  for (let j = 0; j < n; j++) { d[j] = V[j * n + (n - 1)]; V[j * n + (n - 1)] = 0; }
  V[(n - 1) * n + (n - 1)] = 1;
  e[0] = 0;
}

// Implicit QL on the tridiagonal matrix (EISPACK tql2). W = Vᵀ: eigenvector j is row j.
function tql2(W: Float64Array | null, d: Float64Array, e: Float64Array, n: number): void {
  for (let i = 1; i < n; i++) e[i - 1] = e[i];
  e[n - 1] = 0;
  let f = 0;
  let tst1 = 0;
  const eps = 2.220446049250313e-16;
  for (let l = 0; l < n; l++) {
    tst1 = Math.max(tst1, Math.abs(d[l]) + Math.abs(e[l]));
    let m = l;
    while (m < n) { if (Math.abs(e[m]) <= eps * tst1) break; m++; }
    if (m === n) m = n - 1;
    if (m > l) {
      let iter = 0;
      do {
        if (++iter > 200) throw new Error('svd: the eigen-decomposition did not converge');
        let g = d[l];
        let p = (d[l + 1] - g) / (2 * e[l]);
        let r = Math.hypot(p, 1);
        if (p < 0) r = -r;
        d[l] = e[l] / (p + r);
        d[l + 1] = e[l] * (p + r);
        const dl1 = d[l + 1];
        let h = g - d[l];
        for (let i = l + 2; i < n; i++) d[i] -= h;
        f += h;
        p = d[m];
        let c = 1, c2 = 1, c3 = 1;
        const el1 = e[l + 1];
        let s = 0, s2 = 0;
        for (let i = m - 1; i >= l; i--) {
          c3 = c2; c2 = c; s2 = s;
          g = c * e[i];
          h = c * p;
          r = Math.hypot(p, e[i]);
          e[i + 1] = s * r;
          s = e[i] / r;
          c = p / r;
          p = c * d[i] - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]);
          if (!W) continue;
          const o0 = i * n, o1 = (i + 1) * n;
          for (let k = 0; k < n; k++) {
            const x = W[o1 + k];
            W[o1 + k] = s * W[o0 + k] + c * x;
            W[o0 + k] = c * W[o0 + k] - s * x;
          }
        }
        p = (-s * s2 * c3 * el1 * e[l]) / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (Math.abs(e[l]) > eps * tst1);
    }
    d[l] += f;
    e[l] = 0;
  }
}

// ---- the SVD of a product B·A of thin factors ------------------------------------------------

// SVD of B [m, R] · A [R, n] without forming it: B = Qb·Rb, Aᵀ = Qa·Ra (Gram–Schmidt, twice),
// Rb·Raᵀ = Uc·S·Vcᵀ (Jacobi), so B·A = (Qb·Uc)·S·(Qa·Vc)ᵀ. Returns k = R singular triplets
// (R ≤ min(m, n)); a rank-deficient product gets zero singular values and zero vectors.
export function svdProduct(b: Float64Array, a: Float64Array, m: number, R: number, n: number): Svd {
  if (R > Math.min(m, n)) throw new RangeError(`svdProduct: inner rank ${R} exceeds min(${m}, ${n})`);
  const qb = thinQr(b, m, R);                 // columns of B: b[i*R + j]
  const at = new Float64Array(n * R);
  for (let j = 0; j < R; j++) for (let i = 0; i < n; i++) at[i * R + j] = a[j * n + i];
  const qa = thinQr(at, n, R);
  const core = new Float64Array(R * R);       // Rb · Raᵀ
  for (let i = 0; i < R; i++) for (let j = 0; j < R; j++) { let t = 0; for (let l = 0; l < R; l++) t += qb.r[i * R + l] * qa.r[j * R + l]; core[i * R + j] = t; }
  const c = jacobiSvd(core, R, R);
  const u = new Float64Array(m * R);
  for (let i = 0; i < m; i++) for (let j = 0; j < R; j++) { let t = 0; for (let l = 0; l < R; l++) t += qb.q[i * R + l] * c.u[l * R + j]; u[i * R + j] = t; }
  const vt = new Float64Array(R * n);
  for (let j = 0; j < R; j++) for (let i = 0; i < n; i++) { let t = 0; for (let l = 0; l < R; l++) t += c.vt[j * R + l] * qa.q[i * R + l]; vt[j * n + i] = t; }
  const r: Svd = { m, n, k: R, u, s: c.s, vt };
  normaliseSigns(r);
  return r;
}

// Modified Gram–Schmidt with one re-orthogonalisation: X [rows, R] = Q [rows, R] · Rm [R, R].
function thinQr(x: Float64Array, rows: number, R: number): { q: Float64Array; r: Float64Array } {
  const q = new Float64Array(rows * R);
  const rm = new Float64Array(R * R);
  const col = new Float64Array(rows);
  let maxNorm = 0;
  for (let j = 0; j < R; j++) { let t = 0; for (let i = 0; i < rows; i++) t += x[i * R + j] ** 2; maxNorm = Math.max(maxNorm, Math.sqrt(t)); }
  for (let j = 0; j < R; j++) {
    for (let i = 0; i < rows; i++) col[i] = x[i * R + j];
    for (let pass = 0; pass < 2; pass++) {
      for (let p = 0; p < j; p++) {
        let t = 0;
        for (let i = 0; i < rows; i++) t += q[i * R + p] * col[i];
        rm[p * R + j] += t;
        for (let i = 0; i < rows; i++) col[i] -= t * q[i * R + p];
      }
    }
    let nrm = 0;
    for (let i = 0; i < rows; i++) nrm += col[i] * col[i];
    nrm = Math.sqrt(nrm);
    if (nrm > maxNorm * 1e-13) { rm[j * R + j] = nrm; for (let i = 0; i < rows; i++) q[i * R + j] = col[i] / nrm; }
  }
  return { q, r: rm };
}

// ---- helpers ----------------------------------------------------------------------------------

function normaliseSigns(r: Svd): void {
  const { k, n, m } = r;
  for (let j = 0; j < k; j++) {
    let best = 0, at = -1;
    for (let i = 0; i < n; i++) { const x = Math.abs(r.vt[j * n + i]); if (x > best) { best = x; at = i; } }
    if (at >= 0 && r.vt[j * n + at] < 0) {
      for (let i = 0; i < n; i++) r.vt[j * n + i] = -r.vt[j * n + i];
      for (let i = 0; i < m; i++) r.u[i * k + j] = -r.u[i * k + j];
    }
  }
}

// The rank-`rank` truncation as LoRA factors the way PEFT slices it: B = U[:, :rank]·diag(s[:rank])
// [m, rank], A = Vt[:rank, :] [rank, n]; relError = √(Σ discarded σ²) / √(Σ σ²) (0 for a zero matrix).
export function truncate(r: Svd, rank: number): { a: Float64Array; b: Float64Array; rank: number; relError: number } {
  if (!(Number.isInteger(rank) && rank >= 1 && rank <= r.k)) throw new RangeError(`truncate: rank ${rank} outside [1, ${r.k}]`);
  const { m, n, k } = r;
  const b = new Float64Array(m * rank);
  for (let i = 0; i < m; i++) for (let j = 0; j < rank; j++) b[i * rank + j] = r.u[i * k + j] * r.s[j];
  const a = Float64Array.from(r.vt.subarray(0, rank * n));
  return { a, b, rank, relError: truncationError(r.s, rank) };
}

export function truncationError(s: Float64Array, rank: number): number {
  let kept = 0, dropped = 0;
  for (let j = 0; j < s.length; j++) { const q = s[j] * s[j]; if (j < rank) kept += q; else dropped += q; }
  const tot = kept + dropped;
  return tot > 0 ? Math.sqrt(dropped / tot) : 0;
}

// torch.quantile(x, q) with its default linear interpolation (x flattened, q in [0, 1]).
export function quantileLinear(values: Float64Array, q: number): number {
  if (values.length === 0) throw new RangeError('quantile of an empty tensor');
  const sorted = Float64Array.from(values).sort();
  const pos = q * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

// PEFT's svd_clamp: hi = quantile(cat(U·S flattened, Vh flattened), q), then clamp both to [−hi, hi]
// (torch.clamp: min(max(x, −hi), hi), so a negative hi maps everything to hi).
export function clampFactors(b: Float64Array, a: Float64Array, q: number): void {
  const dist = new Float64Array(b.length + a.length);
  dist.set(b, 0);
  dist.set(a, b.length);
  const hi = quantileLinear(dist, q);
  const lo = -hi;
  for (const t of [b, a]) for (let i = 0; i < t.length; i++) t[i] = Math.min(Math.max(t[i], lo), hi);
}
