// The common sampling cases without sorting the vocabulary (sampler.ts keeps the general path,
// candidateDistribution, for min-p, and topKDistribution for top-k). On a 32000-token row (measured, this VM): greedy
// ~0.1 ms; temperature alone ~0.35 ms instead of ~3 ms; top-p ~0.5 ms instead of 2.5–6 ms, which
// at a batch of 32 was 80–200 ms of JS per step. Each draws what the general path draws. All take a sanitized row (sampler.ts sanitize),
// except greedyToken, which reads any row and writes nothing.

// argmax(sanitize(logits)) without writing the logits: NaN counts as −∞, +∞ as the largest float,
// the first of equal values wins, and a row with nothing above −∞ gives 0 (sanitize's uniform row).
export function greedyToken(logits: Float32Array): number {
  let best = 0;
  let bestValue = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    let v = logits[i];
    if (v === Infinity) v = LARGEST;
    if (v > bestValue) { bestValue = v; best = i; } // NaN is never >
  }
  return best;
}

const LARGEST = Math.fround(3.4e38); // sanitize's +∞, as a float32 row stores it

// Temperature only: drawFrom(candidateDistribution(logits, p), coin) in two passes, without
// per-candidate arrays or a sort. The same token for the same coin: the candidates are every id
// with mass, in id order, and the probabilities and their running sum are the same operations.
export function drawUnfiltered(logits: Float32Array, temperature: number, coin: number): number {
  const V = logits.length;
  const max = maxOf(logits);
  const prob = scratch.floats(V);
  let total = 0;
  for (let i = 0; i < V; i++) total += prob[i] = Math.exp((logits[i] - max) / temperature);
  let cum = 0;
  let last = -1;
  for (let i = 0; i < V; i++) {
    if (!(prob[i] > 0)) continue;
    cum += prob[i] / total;
    last = i;
    if (coin < cum) return i;
  }
  return last >= 0 ? last : 0;
}

// Buckets of the distance below the best logit, in nats after temperature: 1/64 nat wide, up to
// 64 nats (a token further down has under e⁻⁶⁴ of the best one's mass; all such share the last).
const PER_NAT = 64;
const BUCKETS = 64 * PER_NAT;
const NO_MASS = BUCKETS; // exp underflowed to 0: never a candidate

// Top-p only: drawFrom(candidateDistribution(logits, p), coin) without sorting the vocabulary.
// The tokens are bucketed by how far below the best they are (bucket order is probability order);
// the nucleus takes whole buckets while its mass stays under top_p, and only the bucket that
// crosses it is sorted; the draw skips whole buckets the same way and sorts the one the coin falls
// in. Two passes over the vocabulary (probabilities and buckets; then the candidate buckets' ids,
// grouped by a counting sort), the rest over the candidates. The same candidates, probabilities
// and order as candidateDistribution, so the same token for the same coin (seeded output
// reproduces), except where the coin lies within rounding (~1e-16) of a boundary: sums over a
// bucket are added in id order, there in probability order.
export function drawNucleus(logits: Float32Array, temperature: number, topP: number, coin: number): number {
  const V = logits.length;
  const max = maxOf(logits);
  const prob = scratch.floats(V);
  const bucket = scratch.buckets(V);
  const { mass, count } = scratch.perBucket();
  const strong = scratch.strong(V); // the ids with q ≥ STRONG, ascending
  let strongCount = 0;
  let total = 0;
  for (let i = 0; i < V; i++) {
    const x = (logits[i] - max) / temperature; // ≤ 0
    const q = Math.exp(x);
    prob[i] = q;
    total += q;
    if (q >= STRONG) strong[strongCount++] = i;
    const d = -x * PER_NAT; // ≥ 0: truncation is floor
    const b = !(q > 0) ? NO_MASS : d < BUCKETS - 1 ? d | 0 : BUCKETS - 1;
    bucket[i] = b;
    if (b !== NO_MASS) { mass[b] += q; count[b]++; }
  }
  // the bucket the nucleus ends in: top_p is a fraction of the whole distribution's mass
  let cum = 0;
  let cross = 0;
  while (cross < BUCKETS - 1 && cum + mass[cross] / total < topP) cum += mass[cross++] / total;
  // the ids of buckets 0..cross, grouped by bucket: bucket b's are ids[start[b] .. start[b + 1])
  const start = new Int32Array(cross + 2);
  for (let b = 0; b <= cross; b++) start[b + 1] = start[b] + count[b];
  const ids = scratch.ids(start[cross + 1]);
  const next = start.slice(0, cross + 1);
  if (cross < STRONG_BUCKETS) { // every token of these buckets is a strong one: no pass over V
    for (let j = 0; j < strongCount; j++) { const i = strong[j]; const b = bucket[i]; if (b <= cross) ids[next[b]++] = i; }
  } else {
    for (let i = 0; i < V; i++) { const b = bucket[i]; if (b <= cross) ids[next[b]++] = i; }
  }
  const byProb = (x: number, y: number): number => prob[y] - prob[x] || x - y;
  const sorted = (b: number): Int32Array => ids.subarray(start[b], start[b + 1]).sort(byProb);
  // the nucleus: the buckets before `cross`, and the first `n` of `cross` in order
  const crossing = sorted(cross);
  let n = 0;
  while (n < crossing.length) {
    cum += prob[crossing[n++]] / total;
    if (cum >= topP) break;
  }
  let nucleus = 0;
  for (let b = 0; b < cross; b++) nucleus += mass[b];
  for (let j = 0; j < n; j++) nucleus += prob[crossing[j]];
  // the draw, in probability order
  let at = 0;
  for (let b = 0; b < cross; b++) {
    if (!(mass[b] > 0)) continue;
    if (coin >= at + mass[b] / nucleus) { at += mass[b] / nucleus; continue; }
    for (const id of sorted(b)) {
      at += prob[id] / nucleus;
      if (coin < at) return id;
    }
  }
  for (let j = 0; j < n; j++) {
    at += prob[crossing[j]] / nucleus;
    if (coin < at) return crossing[j];
  }
  return n > 0 ? crossing[n - 1] : greedyToken(logits);
}

// The strong tokens: q ≥ STRONG. Buckets whose tokens all are: d < 442/64 = 6.906 nats, under
// ln(1000) = 6.908
const STRONG = 1e-3;
const STRONG_BUCKETS = Math.floor(Math.log(1 / STRONG) * PER_NAT);

function maxOf(x: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] > max) max = x[i];
  return max;
}

// Per-thread buffers for a row (grown, never shrunk): a fresh 256 KB array per token would cost
// more than the pass that fills it.
const scratch = {
  floatBuffer: new Float64Array(0),
  bucketBuffer: new Uint16Array(0),
  massBuffer: new Float64Array(BUCKETS),
  countBuffer: new Int32Array(BUCKETS),
  idBuffer: new Int32Array(0),
  strongBuffer: new Int32Array(0),
  floats(n: number): Float64Array {
    if (this.floatBuffer.length < n) this.floatBuffer = new Float64Array(n);
    return this.floatBuffer;
  },
  buckets(n: number): Uint16Array {
    if (this.bucketBuffer.length < n) this.bucketBuffer = new Uint16Array(n);
    return this.bucketBuffer;
  },
  perBucket(): { mass: Float64Array; count: Int32Array } {
    return { mass: this.massBuffer.fill(0), count: this.countBuffer.fill(0) };
  },
  strong(n: number): Int32Array {
    if (this.strongBuffer.length < n) this.strongBuffer = new Int32Array(n);
    return this.strongBuffer;
  },
  ids(n: number): Int32Array {
    if (this.idBuffer.length < n) this.idBuffer = new Int32Array(Math.max(n, this.idBuffer.length * 2));
    return this.idBuffer;
  },
};
