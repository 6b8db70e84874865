// Reverse-mode differentiation over the graph IR: forward graph + loss + inputs → the same graph
// with backward nodes appended and one output `grad.<input>` per input. onnxruntime then runs the
// forward and the backward pass as one graph, so every activation the backward needs is simply a
// value of that graph (kept by ORT for the run, freed after it).
//
//   1. the path: nodes that depend on a differentiated input (forward sweep, nodes are in
//      topological order) and that the loss depends on (backward sweep). Nothing else gets a rule:
//      frozen branches (embedding lookup, RoPE tables, the mask, labels) are left alone.
//   2. walk the path in reverse; each node's rule (backward-rules.ts) turns its outputs' gradients
//      into its inputs' gradients. A value read by several nodes (fan-out: x into q/k/v, the
//      residual stream, gate into Sigmoid and Mul) collects one contribution per reader; they are
//      summed with Add when the value's own producer is reached (reverse topological order
//      guarantees every reader has been visited by then).
import { GraphBuilder, graph } from '../runtime/graph/ir.ts';
import type { Graph, Node } from '../runtime/graph/ir.ts';
import { ruleFor, sumToShape } from './backward-rules.ts';
import type { Unbroadcast } from './backward-rules.ts';

export const gradName = (input: string): string => `grad.${input}`;

export interface DifferentiateOptions {
  // true: only frozen operands of binary ops broadcast (a differentiated operand always has the
  // output's shape), so gradients need no reduction to their operand's shape. The caller vouches
  // for it; the default (false) reduces at run time (backward-rules.ts, sumToShape).
  onlyFrozenBroadcast?: boolean;
  // A bool [1] value of the forward graph: the backward runs as the then-branch of If(gate) and
  // the else-branch outputs zeros, so one session serves training steps and cheap evaluations
  // (the weights resident once). Forward values the backward reads are outer-scope values of the
  // branch, kept alive by ORT until the If has run.
  gate?: string;
}

export function differentiate(forward: Graph, loss: string, wrt: string[], opts: DifferentiateOptions = {}): Graph {
  const unbroadcast: Unbroadcast = opts.onlyFrozenBroadcast ? (_b, g) => g : sumToShape;
  const active = new Set(wrt);
  for (const n of forward.nodes) if (n.inputs.some((v) => active.has(v))) n.outputs.forEach((v) => active.add(v));
  if (!active.has(loss)) throw new Error(`autodiff: ${loss} does not depend on ${wrt.join(', ')}`);
  const needed = new Set([loss]);
  const path: Node[] = []; // reverse topological order
  for (let i = forward.nodes.length - 1; i >= 0; i--) {
    const n = forward.nodes[i];
    if (!n.outputs.some((v) => needed.has(v)) || !n.inputs.some((v) => active.has(v))) continue;
    path.push(n);
    n.inputs.forEach((v) => { if (active.has(v)) needed.add(v); });
  }

  const b = new GraphBuilder(`${forward.name}.backward`);
  const contributions = new Map<string, string[]>([[loss, [b.float32Scalar(1)]]]);
  const total = (v: string): string | undefined => {
    const parts = contributions.get(v);
    if (!parts) return undefined;
    const sum = parts.reduce((acc, g) => b.op('Add', [acc, g]));
    contributions.set(v, [sum]);
    return sum;
  };
  for (const n of path) {
    const rule = ruleFor(n);
    if (!rule) throw new Error(`autodiff: no backward rule for ${n.domain || 'ai.onnx'}.${n.op} (${n.outputs[0]}), which lies between the inputs and ${loss}`);
    const dY = n.outputs.map(total);
    if (dY.every((g) => g === undefined)) continue;
    const needs = n.inputs.map((v) => active.has(v));
    const dX = rule(b, fromForward(n), dY, needs, unbroadcast);
    n.inputs.forEach((v, i) => {
      if (!needs[i]) return;
      const g = dX[i];
      if (g === undefined) throw new Error(`autodiff: the ${n.op} rule gave no gradient for input ${i} (${v})`);
      contributions.set(v, [...(contributions.get(v) ?? []), g]);
    });
  }

  const outputs = wrt.map((v) => {
    const g = total(v);
    if (g === undefined) throw new Error(`autodiff: ${loss} does not depend on ${v}`);
    const info = forward.inputs.find((i) => i.name === v);
    if (!info) throw new Error(`autodiff: ${v} is not a graph input`);
    return { name: b.op('Identity', [g], {}, { out: gradName(v) }), type: info.type, dims: info.dims };
  });
  const zero = b.float32Scalar(0);
  return merge(forward, b.build(), outputs, opts.gate === undefined ? undefined : { cond: opts.gate, zero, wrt });
}

// The backward builder names its values as the forward's builder does (Op_3, const_i64_0), so the
// two could clash: rules see the forward node's values under a marker (fromForward), and merge()
// drops the marker and gives every other backward value a prefix (but the gradient outputs).
const FORWARD = 'fwd::';
const fromForward = (n: Node): Node => ({ ...n, inputs: n.inputs.map((v) => (v ? FORWARD + v : v)), outputs: n.outputs.map((v) => FORWARD + v) });

function merge(forward: Graph, backward: Graph, gradOutputs: Graph['outputs'], gate?: { cond: string; zero: string; wrt: string[] }): Graph {
  const keep = new Set(gate ? [] : gradOutputs.map((o) => o.name));
  const rename = (v: string): string => (v === '' || keep.has(v) ? v : v.startsWith(FORWARD) ? v.slice(FORWARD.length) : `bwd.${v}`);
  const nodes = backward.nodes.map((n) => ({ ...n, inputs: n.inputs.map(rename), outputs: n.outputs.map(rename) }));
  const initializers = [...forward.initializers, ...backward.initializers.map((t) => ({ ...t, name: rename(t.name) }))];
  const outputs = [...forward.outputs, ...gradOutputs];
  if (!gate) return { ...forward, outputs, nodes: [...forward.nodes, ...nodes], initializers };
  // If(gate): then = the backward nodes, else = zeros shaped like each differentiated input
  const zeros = gate.wrt.flatMap((v, i): Node[] => {
    const o = gradOutputs[i].name;
    return [
      { op: 'Shape', domain: '', inputs: [v], outputs: [`${o}.shape`], attrs: {} },
      { op: 'Expand', domain: '', inputs: [rename(gate.zero), `${o}.shape`], outputs: [`${o}.zeros`], attrs: {} },
    ];
  });
  const branch = (name: string, body: Node[], suffix: (o: string) => string): Graph => ({
    name, inputs: [], nodes: body, initializers: [], outputs: gradOutputs.map((o) => ({ ...o, name: suffix(o.name) })),
  });
  const ifNode: Node = {
    op: 'If', domain: '', inputs: [gate.cond], outputs: gradOutputs.map((o) => o.name),
    attrs: { then_branch: graph(branch('backward', nodes, rename)), else_branch: graph(branch('no_backward', zeros, (o) => `${o}.zeros`)) },
  };
  return { ...forward, outputs, nodes: [...forward.nodes, ifNode], initializers };
}
