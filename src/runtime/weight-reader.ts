// Reads single base weights back from the checkpoint on disk, by offset, as float32. Lets the
// engine drop its JS copy of W0 once the session holds it, and still merge adapters or compute
// DoRA norms later (W0 stays resident once: in the session). In a GPTQ checkpoint (gptq.ts), a
// quantized projection's `<path>.weight` is read as dequant(W0) from its packed tensors.
import { closeSync, openSync, readSync } from 'node:fs';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { bytesToF32 } from './dtype.ts';
import type { Dtype, TensorEntry } from './safetensors.ts';
import { dequantizeGptq, gptqTensorsOf } from './gptq.ts';
import type { GptqConfig } from './gptq.ts';
import { targetOfPath, targetShape } from './model-targets.ts';
import type { ModelConfig } from './model-config.ts';

interface Location { file: string; offset: number; length: number; dtype: Dtype; shape: number[] }

export class WeightReader {
  private readonly index = new Map<string, Location>();

  // gptq: the checkpoint's quantization_config (LoadedModel.quantization) and its model's config
  constructor(dir: string, private readonly gptq: { quantization: GptqConfig; config: ModelConfig } | null = null) {
    const idxPath = join(dir, 'model.safetensors.index.json');
    const files = existsSync(idxPath)
      ? [...new Set(Object.values((JSON.parse(readFileSync(idxPath, 'utf8')) as { weight_map: Record<string, string> }).weight_map))].map((f) => join(dir, f))
      : [join(dir, 'model.safetensors')];
    for (const file of files) {
      const fd = openSync(file, 'r');
      try {
        const head = Buffer.alloc(8);
        readSync(fd, head, 0, 8, 0);
        const n = Number(head.readBigUInt64LE(0));
        const json = Buffer.alloc(n);
        readSync(fd, json, 0, n, 8);
        const header = JSON.parse(json.toString('utf8')) as Record<string, { dtype: Dtype; shape: number[]; data_offsets: [number, number] }>;
        for (const [name, t] of Object.entries(header)) {
          if (name === '__metadata__') continue;
          this.index.set(name, { file, offset: 8 + n + t.data_offsets[0], length: t.data_offsets[1] - t.data_offsets[0], dtype: t.dtype, shape: t.shape });
        }
      } finally {
        closeSync(fd);
      }
    }
  }

  read(name: string): Float32Array {
    const path = name.endsWith('.weight') ? name.slice(0, -'.weight'.length) : null;
    if (this.gptq && path && !this.index.has(name) && this.index.has(`${path}.qweight`)) {
      const t = gptqTensorsOf(path, (n) => (this.index.has(n) ? this.entry(n) : undefined));
      const [n, k] = targetShape(this.gptq.config, targetOfPath(path)!);
      return dequantizeGptq(this.gptq.quantization, t, n, k, path);
    }
    return bytesToF32(this.bytes(name), this.index.get(name)!.dtype, name);
  }

  private entry(name: string): TensorEntry {
    const loc = this.index.get(name)!;
    return { name, dtype: loc.dtype, shape: loc.shape, bytes: this.bytes(name) };
  }

  private bytes(name: string): Uint8Array {
    const loc = this.index.get(name);
    if (!loc) throw new Error(`weight ${name} is not in the checkpoint`);
    const buf = new Uint8Array(loc.length);
    const fd = openSync(loc.file, 'r');
    try {
      let done = 0;
      while (done < loc.length) done += readSync(fd, buf, done, loc.length - done, loc.offset + done);
    } finally {
      closeSync(fd);
    }
    return buf;
  }
}
