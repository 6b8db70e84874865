// npm run bench [-- --only memory|runtime|lora|batching|serving (repeatable)] [-- --quick]
// Prints tables and saves JSON under bench/results/. A benchmark, not a test: nothing here asserts.
import { mkdirSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { runtimeBench } from './runtime-bench.ts';
import { loraBench } from './lora-bench.ts';
import { batchingBench } from './batching-bench.ts';
import { memoryBench } from './memory-bench.ts';
import { servingBench } from './serving-bench.ts';

const { values } = parseArgs({ options: { only: { type: 'string', multiple: true }, quick: { type: 'boolean', default: false } } });
const only = new Set(values.only ?? []);
const want = (name: string): boolean => only.size === 0 || only.has(name);

const results: Record<string, unknown> = {
  date: new Date().toISOString(),
  node: process.version,
  cpus: (await import('node:os')).cpus().map((c) => c.model)[0],
  cores: (await import('node:os')).cpus().length,
};
// memory first, while the process holds nothing else (RSS is the process's)
if (want('memory')) results.memory = await memoryBench({ quick: values.quick });
if (want('runtime')) results.runtime = await runtimeBench({ quick: values.quick });
if (want('lora')) results.lora = await loraBench({ quick: values.quick });
if (want('batching')) results.batching = await batchingBench({ quick: values.quick });
if (want('serving')) results.serving = await servingBench({ quick: values.quick });

const dir = fileURLToPath(new URL('./results/', import.meta.url));
mkdirSync(dir, { recursive: true });
const file = `${dir}bench-${results.date as string}.json`.replace(/:/g, '-');
writeFileSync(file, JSON.stringify(results, null, 2));
writeFileSync(`${dir}latest.json`, JSON.stringify(results, null, 2));
console.log(`\nsaved ${file}`);
