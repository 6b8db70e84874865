// Graph IR → ONNX ModelProto bytes. Large initializers go to an in-memory external-data blob, so
// models above protobuf's 2 GB limit load (onnxruntime-node notes §7).
import onnxPkg from 'onnx-proto';
import type { Graph, Attr, ElemType, Initializer } from './ir.ts';

const { onnx } = onnxPkg;

const DATA_TYPE: Record<ElemType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  int64: onnx.TensorProto.DataType.INT64,
  int32: onnx.TensorProto.DataType.INT32,
  uint8: onnx.TensorProto.DataType.UINT8,
};

export const EXTERNAL_DATA_PATH = 'weights.bin';

export interface ExportedModel {
  model: Uint8Array;
  externalData: Uint8Array | null; // to pass as { path: EXTERNAL_DATA_PATH, data }
}

export interface ExportOptions {
  externalThresholdBytes?: number; // initializers at least this large go external (default 1 KiB)
  useExternalData?: boolean;       // default: only when the total would not fit in protobuf
}

const PROTOBUF_SAFE_BYTES = 1.8 * 1024 ** 3;

export function exportOnnx(graph: Graph, opts: ExportOptions = {}): ExportedModel {
  const threshold = opts.externalThresholdBytes ?? 1024;
  const total = graph.initializers.reduce((a, t) => a + t.data.byteLength, 0);
  const external = opts.useExternalData ?? total > PROTOBUF_SAFE_BYTES;

  const externalSize = external ? graph.initializers.reduce((a, t) => a + (t.data.byteLength >= threshold ? align(t.data.byteLength) : 0), 0) : 0;
  const blob = external ? new Uint8Array(externalSize) : null;
  let offset = 0;
  const initializer = graph.initializers.map((t) => {
    const raw = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    if (blob && t.data.byteLength >= threshold) {
      blob.set(raw, offset);
      const entry = tensorProto(t, null);
      entry.dataLocation = onnx.TensorProto.DataLocation.EXTERNAL;
      entry.externalData = [
        { key: 'location', value: EXTERNAL_DATA_PATH },
        { key: 'offset', value: String(offset) },
        { key: 'length', value: String(t.data.byteLength) },
      ];
      offset += align(t.data.byteLength);
      return entry;
    }
    return tensorProto(t, raw);
  });

  const model = onnx.ModelProto.create({
    irVersion: 10,
    producerName: 'loraserve',
    opsetImport: [{ domain: '', version: 21 }, { domain: 'com.microsoft', version: 1 }],
    graph: onnx.GraphProto.create({
      name: graph.name,
      node: nodeProtos(graph.nodes),
      input: graph.inputs.map(valueInfo),
      output: graph.outputs.map(valueInfo),
      initializer,
    }),
  });
  return { model: onnx.ModelProto.encode(model).finish(), externalData: blob };
}

function nodeProtos(nodes: Graph['nodes'], prefix = ''): onnxPkg.onnx.NodeProto[] {
  return nodes.map((n, i) => onnx.NodeProto.create({
    name: `${prefix}${n.op}_${i}`,
    opType: n.op,
    domain: n.domain,
    input: n.inputs,
    output: n.outputs,
    attribute: Object.entries(n.attrs).map(([name, a]) => attribute(name, a, `${prefix}${i}.`)),
  }));
}

function align(n: number): number {
  return Math.ceil(n / 64) * 64;
}

function tensorProto(t: Initializer, raw: Uint8Array | null): onnxPkg.onnx.TensorProto {
  return onnx.TensorProto.create({ name: t.name, dims: t.dims, dataType: DATA_TYPE[t.type], ...(raw ? { rawData: raw } : {}) });
}

function valueInfo(v: { name: string; type: ElemType; dims: (number | string)[] }): onnxPkg.onnx.ValueInfoProto {
  return onnx.ValueInfoProto.create({
    name: v.name,
    type: {
      tensorType: {
        elemType: DATA_TYPE[v.type],
        shape: { dim: v.dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  });
}

function attribute(name: string, a: Attr, prefix: string): onnxPkg.onnx.AttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  switch (a.kind) {
    case 'int': return onnx.AttributeProto.create({ name, type: T.INT, i: a.value });
    case 'float': return onnx.AttributeProto.create({ name, type: T.FLOAT, f: a.value });
    case 'ints': return onnx.AttributeProto.create({ name, type: T.INTS, ints: a.value });
    case 'string': return onnx.AttributeProto.create({ name, type: T.STRING, s: new TextEncoder().encode(a.value) });
    // a subgraph keeps no initializers or inputs of its own: it reads the outer graph's by name
    case 'graph': return onnx.AttributeProto.create({ name, type: T.GRAPH, g: onnx.GraphProto.create({ name: a.value.name, node: nodeProtos(a.value.nodes, `${prefix}${name}.`), output: a.value.outputs.map(valueInfo) }) });
  }
}
