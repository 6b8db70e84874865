// What a batched decode step's attention costs over a float32 KV cache (what the engine runs) and
// over an 8-bit one (not served: a lossy format, priced here). `npm run bench -- --only kv`.
//
// The attention ops alone for the 12 layers of the 110M model's shape (12 heads, head size 64, no
// GQA), one new token per row, every row's past of P positions fed in place:
//   float32  K and V [B, H, P, d] as the engine feeds them (step.ts); scores = q·Kᵀ (FusedMatMul,
//            transB) + bias, softmax, · V: llama-graph.ts's ops
//   uint8    K stored transposed [B, H, d, P] (MatMulInteger has no transB) and V as the engine
//            has it, both int8 + 128 with one scale per (row, head, position); q and the
//            probabilities quantized per step (DynamicQuantizeLinear), MatMulInteger for both
//            products, the scales applied around them (a V scale folds into the probabilities)
// Median ms of 15 runs after 3 warm-ups, each pair measured twice, interleaved; the uint8 output's
// largest difference from the float32 one on the same data (beside the largest |float32 output|)
// shows that it computes the same thing, approximately: q and the probabilities are quantized with
// one scale per step here, coarser than a served format would (per row and head).
// Nothing here asserts.
import { GraphBuilder, int } from '../src/runtime/graph/ir.ts';
import { createSession, ort } from '../src/runtime/session.ts';
import { Rng } from '../src/runtime/random.ts';
import { printTable } from './stats.ts';

const HEADS = 12;
const HEAD = 64;
const LAYERS = 12;

export interface KvProbeRow { rows: number; positions: number; kv_mb_f32: number; f32_ms: number; u8_ms: number; u8_over_f32: number; max_abs_diff: number; max_abs_f32: number }

type Kind = 'f32' | 'u8';

function attentionGraph(kind: Kind, B: number, P: number) {
  const b = new GraphBuilder(`attention-${kind}`);
  const bias = b.input('bias', 'float32', [B, 1, 1, P]);
  if (kind === 'u8') b.input('zero', 'uint8', []);
  const outs: string[] = [];
  for (let l = 0; l < LAYERS; l++) {
    const q = b.input(`q.${l}`, 'float32', [B, HEADS, 1, HEAD]);
    if (kind === 'f32') {
      const k = b.input(`k.${l}`, 'float32', [B, HEADS, P, HEAD]);
      const v = b.input(`v.${l}`, 'float32', [B, HEADS, P, HEAD]);
      const scores = b.op('FusedMatMul', [q, k], { transB: int(1) }, { domain: 'com.microsoft' });
      const p = b.op('Softmax', [b.op('Add', [scores, bias])], { axis: int(-1) });
      outs.push(b.op('MatMul', [p, v]));
    } else {
      const kT = b.input(`k.${l}`, 'uint8', [B, HEADS, HEAD, P]);
      const v = b.input(`v.${l}`, 'uint8', [B, HEADS, P, HEAD]);
      const kScale = b.input(`k_scale.${l}`, 'float32', [B, HEADS, 1, P]);
      const vScale = b.input(`v_scale.${l}`, 'float32', [B, HEADS, 1, P]);
      const [qU8, qScale, qZero] = b.opN('DynamicQuantizeLinear', [q], 3);
      const scoresI32 = b.op('MatMulInteger', [qU8, kT, qZero, 'zero']);
      const scores = b.op('Mul', [b.op('Cast', [scoresI32], { to: int(1) }), b.op('Mul', [kScale, qScale])]);
      const p = b.op('Mul', [b.op('Softmax', [b.op('Add', [scores, bias])], { axis: int(-1) }), vScale]);
      const [pU8, pScale, pZero] = b.opN('DynamicQuantizeLinear', [p], 3);
      outs.push(b.op('Mul', [b.op('Cast', [b.op('MatMulInteger', [pU8, v, pZero, 'zero'])], { to: int(1) }), pScale]));
    }
  }
  b.output(b.op('Concat', outs, { axis: int(0) }), 'float32', [LAYERS * B, HEADS, 1, HEAD]);
  return b.build();
}

// int8 + 128 with one scale per vector of `len` values taken every `stride` (a key position is a
// column of the transposed keys: stride P; a value position is a row: stride 1)
function quantize(x: Float32Array, vectors: number, len: number, at: (vec: number, i: number) => number): { q: Uint8Array; scale: Float32Array } {
  const q = new Uint8Array(x.length);
  const scale = new Float32Array(vectors);
  for (let vec = 0; vec < vectors; vec++) {
    let max = 0;
    for (let i = 0; i < len; i++) max = Math.max(max, Math.abs(x[at(vec, i)]));
    const s = max / 127 || 1;
    scale[vec] = s;
    for (let i = 0; i < len; i++) q[at(vec, i)] = Math.round(x[at(vec, i)] / s) + 128;
  }
  return { q, scale };
}

// [heads, d, P] → [heads, P, d]
function positionMajor(kT: Float32Array, heads: number, P: number): Float32Array {
  const k = new Float32Array(kT.length);
  for (let h = 0; h < heads; h++) for (let i = 0; i < HEAD; i++) for (let p = 0; p < P; p++) k[(h * P + p) * HEAD + i] = kT[(h * HEAD + i) * P + p];
  return k;
}

async function measure(B: number, P: number, rng: Rng): Promise<KvProbeRow> {
  const uniform = (n: number): Float32Array => {
    const x = new Float32Array(n);
    for (let i = 0; i < n; i++) x[i] = rng.next() * 2 - 1;
    return x;
  };
  const f32: Record<string, ort.Tensor> = { bias: new ort.Tensor('float32', new Float32Array(B * P), [B, 1, 1, P]) };
  const u8: Record<string, ort.Tensor> = { bias: f32.bias, zero: new ort.Tensor('uint8', Uint8Array.of(128), []) };
  const heads = B * HEADS;
  for (let l = 0; l < LAYERS; l++) {
    const q = new ort.Tensor('float32', uniform(heads * HEAD), [B, HEADS, 1, HEAD]);
    const kT = uniform(heads * HEAD * P);
    const v = uniform(heads * HEAD * P);
    f32[`q.${l}`] = u8[`q.${l}`] = q;
    f32[`k.${l}`] = new ort.Tensor('float32', positionMajor(kT, heads, P), [B, HEADS, P, HEAD]);
    f32[`v.${l}`] = new ort.Tensor('float32', v, [B, HEADS, P, HEAD]);
    // key (h, p): kT[h·HEAD·P + i·P + p] over i; value (h, p): v[(h·P + p)·HEAD + i] over i
    const kq = quantize(kT, heads * P, HEAD, (vec, i) => Math.floor(vec / P) * HEAD * P + i * P + (vec % P));
    const vq = quantize(v, heads * P, HEAD, (vec, i) => vec * HEAD + i);
    u8[`k.${l}`] = new ort.Tensor('uint8', kq.q, [B, HEADS, HEAD, P]);
    u8[`v.${l}`] = new ort.Tensor('uint8', vq.q, [B, HEADS, P, HEAD]);
    u8[`k_scale.${l}`] = new ort.Tensor('float32', kq.scale, [B, HEADS, 1, P]);
    u8[`v_scale.${l}`] = new ort.Tensor('float32', vq.scale, [B, HEADS, 1, P]);
  }
  const sessions = { f32: await createSession(attentionGraph('f32', B, P)), u8: await createSession(attentionGraph('u8', B, P)) };
  const feeds = { f32, u8 };
  const out: Partial<Record<Kind, Float32Array>> = {};
  const time = async (kind: Kind): Promise<number> => {
    const s = sessions[kind];
    for (let i = 0; i < 3; i++) out[kind] = (await s.run(feeds[kind]))[s.outputNames[0]].data as Float32Array;
    const t: number[] = [];
    for (let i = 0; i < 15; i++) {
      const t0 = performance.now();
      await s.run(feeds[kind]);
      t.push(performance.now() - t0);
    }
    return t.sort((a, b) => a - b)[7];
  };
  try {
    const f = [await time('f32'), await time('u8'), await time('f32'), await time('u8')];
    const f32Ms = Math.min(f[0], f[2]);
    const u8Ms = Math.min(f[1], f[3]);
    let diff = 0;
    let size = 0;
    for (let i = 0; i < out.f32!.length; i++) {
      diff = Math.max(diff, Math.abs(out.f32![i] - out.u8![i]));
      size = Math.max(size, Math.abs(out.f32![i]));
    }
    return { rows: B, positions: P, kv_mb_f32: (LAYERS * 2 * heads * HEAD * P * 4) / 1e6, f32_ms: f32Ms, u8_ms: u8Ms, u8_over_f32: u8Ms / f32Ms, max_abs_diff: diff, max_abs_f32: size };
  } finally {
    await sessions.f32.release();
    await sessions.u8.release();
  }
}

export async function kvDtypeProbe(opts: { quick: boolean }): Promise<{ rows: KvProbeRow[] }> {
  const rng = new Rng(640);
  const rows: KvProbeRow[] = [];
  for (const B of opts.quick ? [1, 8] : [1, 8, 32]) rows.push(await measure(B, 640, rng));
  printTable(`decode attention alone, ${LAYERS} layers × ${HEADS} heads × ${HEAD}, one token a row over P past positions: float32 KV (served) vs uint8 KV with per-position scales (not served), median ms`, rows as unknown as Record<string, number>[]);
  return { rows };
}
