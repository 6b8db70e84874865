// Reverse-mode rules, one per forward op: given a node and the gradients of its outputs (dY),
// emit the nodes that compute the gradients of the inputs that need one (autodiff.ts says which).
// Only ops that lie between the LoRA inputs and the loss need a rule; frozen branches (embedding
// lookup, RoPE tables, the causal mask, label handling) are never differentiated.
//
// Broadcasting: ONNX binary ops broadcast numpy-style, so the gradient of a broadcast input is the
// output-shaped gradient summed over the broadcast axes. Binary rules hand it to `unbroadcast`:
// by default sumToShape, which does this at run time (the shapes are symbolic: batch, seq), a
// ReduceSum over the axes where the input has size 1 (or is missing) and the gradient does not.
// That costs ~10 small nodes and, even where nothing is broadcast, a copy of the gradient; a graph
// whose broadcast operands are all frozen (train-graph.ts) passes the identity instead.
import { int, ints, float } from '../runtime/graph/ir.ts';
import type { Attr, GraphBuilder, Node } from '../runtime/graph/ir.ts';

// dY[i] is undefined when output i does not reach the loss; the result has one entry per input,
// defined at least where needs[i].
export type BackwardRule = (b: GraphBuilder, node: Node, dY: (string | undefined)[], needs: boolean[], unbroadcast: Unbroadcast) => (string | undefined)[];
export type Unbroadcast = (b: GraphBuilder, g: string, x: string) => string;

const attr = (n: Node, name: string): Attr | undefined => n.attrs[name];
const intAttr = (n: Node, name: string, def: number): number => {
  const a = attr(n, name);
  return a?.kind === 'int' ? a.value : def;
};
const floatAttr = (n: Node, name: string, def: number): number => {
  const a = attr(n, name);
  return a?.kind === 'float' ? a.value : def;
};

const shapeOf = (b: GraphBuilder, v: string): string => b.op('Shape', [v]);
export const zerosLike = (b: GraphBuilder, v: string): string => b.op('Expand', [b.float32Scalar(0), shapeOf(b, v)]);

// The gradient g (the output's shape) of a broadcast operand x, summed back to x's shape.
export function sumToShape(b: GraphBuilder, g: string, x: string): string {
  const gShape = shapeOf(b, g);
  const xShape = shapeOf(b, x);
  // x's shape left-padded with 1s to g's rank (numpy broadcasting aligns trailing axes)
  const missing = b.op('Sub', [shapeOf(b, gShape), shapeOf(b, xShape)]);
  const padded = b.op('Concat', [b.op('Expand', [b.int64([1]), missing]), xShape], { axis: int(0) });
  const broadcast = b.op('And', [b.op('Equal', [padded, b.int64([1])]), b.op('Not', [b.op('Equal', [gShape, b.int64([1])])])]);
  const axes = b.op('Reshape', [b.op('NonZero', [broadcast]), b.int64([-1])]);
  const summed = b.op('ReduceSum', [g, axes], { keepdims: int(1), noop_with_empty_axes: int(1) });
  return b.op('Reshape', [summed, xShape]);
}

const one = (g: string | undefined): string => {
  if (g === undefined) throw new Error('backward rule: missing output gradient');
  return g;
};

// Y = α·op(A)·op(B), batched over leading axes (MatMul: α = 1, no transposes). The four cases
// of each operand's gradient are again one FusedMatMul, so no transposed copy is ever made
// (a frozen W [in, out] gives dX = FusedMatMul(dY, W, transB=1)).
const matMul: BackwardRule = (b, n, dY, needs) => {
  if (intAttr(n, 'transBatchA', 0) || intAttr(n, 'transBatchB', 0)) throw new Error('FusedMatMul: transBatch is not differentiated');
  const g = one(dY[0]);
  const [A, B] = n.inputs;
  const alpha = floatAttr(n, 'alpha', 1);
  const ta = intAttr(n, 'transA', 0);
  const tb = intAttr(n, 'transB', 0);
  const mm = (x: string, y: string, transA: number, transB: number): string =>
    b.op('FusedMatMul', [x, y], { alpha: float(alpha), transA: int(transA), transB: int(transB) }, { domain: 'com.microsoft' });
  return [
    needs[0] ? (ta ? mm(B, g, tb, 1) : mm(g, B, 0, 1 - tb)) : undefined,
    needs[1] ? (tb ? mm(g, A, 1, ta) : mm(A, g, 1 - ta, 0)) : undefined,
  ];
};

const reshapeBack: BackwardRule = (b, n, dY) => [b.op('Reshape', [one(dY[0]), shapeOf(b, n.inputs[0])])];

// ReduceSum: spread dY back over the reduced axes (re-inserting them when keepdims = 0).
const reduceSum: BackwardRule = (b, n, dY) => {
  let g = one(dY[0]);
  const axes = n.inputs[1];
  if (intAttr(n, 'keepdims', 1) === 0 && axes) g = b.op('Unsqueeze', [g, axes]);
  return [b.op('Expand', [g, shapeOf(b, n.inputs[0])])];
};

// y = x · r ⊙ w with r = (mean(x²) + eps)^-½ over the last axis; w is frozen. With gw = dY ⊙ w:
//   dx = r ⊙ (gw − x ⊙ r² ⊙ mean(gw ⊙ x))
// (the [.., 1] factors broadcast forward, so nothing needs reducing back).
const rmsNorm: BackwardRule = (b, n, dY, needs) => {
  if (needs[1]) throw new Error('SimplifiedLayerNormalization: the scale is frozen');
  if (intAttr(n, 'axis', -1) !== -1) throw new Error('SimplifiedLayerNormalization: only axis -1 is differentiated');
  const [x, w] = n.inputs;
  const last = b.int64([-1]);
  const mean = (v: string): string => b.op('ReduceMean', [v, last], { keepdims: int(1) });
  const r = b.op('Reciprocal', [b.op('Sqrt', [b.op('Add', [mean(b.op('Mul', [x, x])), b.float32Scalar(floatAttr(n, 'epsilon', 1e-5))])])]);
  const gw = b.op('Mul', [one(dY[0]), w]);
  const proj = b.op('Mul', [x, b.op('Mul', [b.op('Mul', [r, r]), mean(b.op('Mul', [gw, x]))])]);
  return [b.op('Mul', [r, b.op('Sub', [gw, proj])]), undefined];
};

export const RULES: Record<string, BackwardRule> = {
  Identity: (_b, _n, dY) => [one(dY[0])],
  Neg: (b, _n, dY) => [b.op('Neg', [one(dY[0])])],
  Add: (b, n, dY, needs, unbroadcast) => n.inputs.map((x, i) => (needs[i] ? unbroadcast(b, one(dY[0]), x) : undefined)),
  Sub: (b, n, dY, needs, unbroadcast) => [
    needs[0] ? unbroadcast(b, one(dY[0]), n.inputs[0]) : undefined,
    needs[1] ? unbroadcast(b, b.op('Neg', [one(dY[0])]), n.inputs[1]) : undefined,
  ],
  Mul: (b, n, dY, needs, unbroadcast) => {
    const [x, y] = n.inputs;
    return [
      needs[0] ? unbroadcast(b, b.op('Mul', [one(dY[0]), y]), x) : undefined,
      needs[1] ? unbroadcast(b, b.op('Mul', [one(dY[0]), x]), y) : undefined,
    ];
  },
  // z = x / y: dx = g / y, dy = −g · z / y
  Div: (b, n, dY, needs, unbroadcast) => {
    const [x, y] = n.inputs;
    const g = one(dY[0]);
    return [
      needs[0] ? unbroadcast(b, b.op('Div', [g, y]), x) : undefined,
      needs[1] ? unbroadcast(b, b.op('Neg', [b.op('Mul', [g, b.op('Div', [n.outputs[0], y])])]), y) : undefined,
    ];
  },
  // s = σ(x): ds/dx = s (1 − s), from the output
  Sigmoid: (b, n, dY) => {
    const s = n.outputs[0];
    return [b.op('Mul', [one(dY[0]), b.op('Mul', [s, b.op('Sub', [b.float32Scalar(1), s])])])];
  },
  Reshape: reshapeBack,
  Squeeze: reshapeBack,
  Unsqueeze: reshapeBack,
  Transpose: (b, n, dY) => {
    const perm = attr(n, 'perm');
    if (perm?.kind !== 'ints') throw new Error('Transpose: perm is required for the backward pass');
    const inverse = perm.value.map((_, i) => perm.value.indexOf(i));
    return [b.op('Transpose', [one(dY[0])], { perm: ints(inverse) })];
  },
  // Split's gradient is the concatenation of its outputs' gradients (zeros where one has none).
  Split: (b, n, dY) => [b.op('Concat', n.outputs.map((y, i) => dY[i] ?? zerosLike(b, y)), { axis: int(intAttr(n, 'axis', 0)) })],
  // Concat's gradient splits dY back at the inputs' sizes along the axis (read at run time).
  Concat: (b, n, dY) => {
    const axis = intAttr(n, 'axis', 0);
    const sizes = b.op('Concat', n.inputs.map((x) => b.op('Shape', [x], axis === -1 ? { start: int(-1) } : { start: int(axis), end: int(axis + 1) })), { axis: int(0) });
    return b.opN('Split', [one(dY[0]), sizes], n.inputs.length, { axis: int(axis) });
  },
  MatMul: matMul,
  FusedMatMul: matMul,
  // y = softmax(x): dx = y ⊙ (g − Σ g ⊙ y)
  Softmax: (b, n, dY) => {
    const y = n.outputs[0];
    const g = one(dY[0]);
    const dot = b.op('ReduceSum', [b.op('Mul', [g, y]), b.int64([intAttr(n, 'axis', -1)])], { keepdims: int(1) });
    return [b.op('Mul', [y, b.op('Sub', [g, dot])])];
  },
  // y = log softmax(x): dx = g − exp(y) ⊙ Σ g
  LogSoftmax: (b, n, dY) => {
    const g = one(dY[0]);
    const total = b.op('ReduceSum', [g, b.int64([intAttr(n, 'axis', -1)])], { keepdims: int(1) });
    return [b.op('Sub', [g, b.op('Mul', [b.op('Exp', [n.outputs[0]]), total])])];
  },
  // The indices are integers (no gradient); dY scatters back into zeros shaped like the data.
  GatherElements: (b, n, dY) => {
    const [data, indices] = n.inputs;
    const scattered = b.op('ScatterElements', [zerosLike(b, data), indices, one(dY[0])], { axis: int(intAttr(n, 'axis', 0)), reduction: { kind: 'string', value: 'add' } });
    return [scattered, undefined];
  },
  ReduceSum: reduceSum,
  SimplifiedLayerNormalization: rmsNorm,
};

export function ruleFor(node: Node): BackwardRule | undefined {
  if (node.domain !== '' && node.domain !== 'com.microsoft') return undefined;
  return RULES[node.op];
}
