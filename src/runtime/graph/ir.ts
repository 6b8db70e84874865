// A small, readable graph IR. Nodes are plain data, so later passes (a backward-rule pass for the
// trainer, a LoRA-hook pass) can walk and rewrite them before export to ONNX (onnx-export.ts).

export type ElemType = 'float32' | 'int64' | 'int32' | 'uint8';
export type Dim = number | string; // a number, or a symbolic name such as 'batch'

export type Attr =
  | { kind: 'int'; value: number }
  | { kind: 'float'; value: number }
  | { kind: 'ints'; value: number[] }
  | { kind: 'string'; value: string }
  | { kind: 'graph'; value: Graph };   // a subgraph (If branches): its nodes may read outer-scope names

export interface Node {
  op: string;
  domain: string; // '' for ai.onnx, 'com.microsoft' for contrib ops
  inputs: string[]; // '' leaves an optional input out
  outputs: string[];
  attrs: Record<string, Attr>;
}

export interface ValueInfo {
  name: string;
  type: ElemType;
  dims: Dim[];
}

export interface Initializer {
  name: string;
  type: ElemType;
  dims: number[];
  data: Float32Array | BigInt64Array | Int32Array | Uint8Array;
}

export interface Graph {
  name: string;
  inputs: ValueInfo[];
  outputs: ValueInfo[];
  nodes: Node[];
  initializers: Initializer[];
}

export const int = (value: number): Attr => ({ kind: 'int', value });
export const float = (value: number): Attr => ({ kind: 'float', value });
export const ints = (value: number[]): Attr => ({ kind: 'ints', value });
export const graph = (value: Graph): Attr => ({ kind: 'graph', value });

export class GraphBuilder {
  private readonly graph: Graph;
  private counter = 0;
  private readonly constants = new Map<string, string>();

  constructor(name: string) {
    this.graph = { name, inputs: [], outputs: [], nodes: [], initializers: [] };
  }

  input(name: string, type: ElemType, dims: Dim[]): string {
    this.graph.inputs.push({ name, type, dims });
    return name;
  }

  output(value: string, type: ElemType, dims: Dim[]): void {
    this.graph.outputs.push({ name: value, type, dims });
  }

  initializer(name: string, data: Initializer['data'], dims: number[]): string {
    const type: ElemType = data instanceof Float32Array ? 'float32' : data instanceof BigInt64Array ? 'int64' : data instanceof Uint8Array ? 'uint8' : 'int32';
    const count = dims.reduce((a, b) => a * b, 1);
    if (count !== data.length) throw new Error(`initializer ${name}: ${data.length} values for dims [${dims}]`);
    this.graph.initializers.push({ name, type, dims, data });
    return name;
  }

  // An int64 constant, shared by value (used for Reshape shapes and axes).
  int64(values: number[]): string {
    const key = `i64:${values.join(',')}`;
    let name = this.constants.get(key);
    if (!name) {
      name = `const_i64_${this.constants.size}`;
      this.initializer(name, BigInt64Array.from(values.map(BigInt)), [values.length]);
      this.constants.set(key, name);
    }
    return name;
  }

  float32Scalar(value: number): string {
    const key = `f32:${value}`;
    let name = this.constants.get(key);
    if (!name) {
      name = `const_f32_${this.constants.size}`;
      this.initializer(name, Float32Array.of(value), []);
      this.constants.set(key, name);
    }
    return name;
  }

  // One node; returns its single output's name. `out` names the output explicitly.
  op(op: string, inputs: string[], attrs: Record<string, Attr> = {}, opts: { domain?: string; out?: string } = {}): string {
    return this.opN(op, inputs, 1, attrs, { domain: opts.domain, outs: opts.out ? [opts.out] : undefined })[0];
  }

  opN(op: string, inputs: string[], outputs: number, attrs: Record<string, Attr> = {}, opts: { domain?: string; outs?: string[] } = {}): string[] {
    const outs = opts.outs ?? Array.from({ length: outputs }, (_, i) => `${op}_${this.counter}${outputs > 1 ? `_${i}` : ''}`);
    this.counter++;
    this.graph.nodes.push({ op, domain: opts.domain ?? '', inputs, outputs: outs, attrs });
    return outs;
  }

  build(): Graph {
    return this.graph;
  }
}
