// npm run bench [-- --only memory|runtime|lora|batching|serving|train|merge|mixture|quant|sampling|spinning|kv (repeatable)] [-- --quick]
//   serving only: [-- --itl-target-ms N (default: the server's, 200)] [-- --scheduling goodput|strict (default goodput)]
// Then `npm run bench:report` writes docs/benchmarks.md's serving section and the README's summary
// from bench/results/latest.json.
// Prints tables and saves JSON under bench/results/. A benchmark, not a test: nothing here asserts.
import { mkdirSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { runtimeBench } from './runtime-bench.ts';
import { loraBench } from './lora-bench.ts';
import { batchingBench } from './batching-bench.ts';
import { memoryBench } from './memory-bench.ts';
import { servingBench } from './serving-suite.ts';
import { trainBench } from './train-bench.ts';
import { mergeBench } from './merge-bench.ts';
import { mixtureBench } from './mixture-bench.ts';
import { quantBench } from './quant-bench.ts';
import { samplingBench } from './sampling-bench.ts';
import { spinningBench } from './spinning-bench.ts';
import { kvDtypeProbe } from './kv-dtype-probe.ts';
import type { Scheduling } from './serving-suite.ts';

const { values } = parseArgs({ options: {
  only: { type: 'string', multiple: true },
  quick: { type: 'boolean', default: false },
  'itl-target-ms': { type: 'string', default: '200' },
  scheduling: { type: 'string', default: 'goodput' },
} });
const itlTargetMs = Number(values['itl-target-ms']);
if (!Number.isInteger(itlTargetMs) || itlTargetMs < 1) throw new Error(`--itl-target-ms must be a positive integer, got ${values['itl-target-ms']}`);
if (values.scheduling !== 'goodput' && values.scheduling !== 'strict') throw new Error(`--scheduling must be goodput or strict, got ${values.scheduling}`);
const scheduling: Scheduling = values.scheduling;
const only = new Set(values.only ?? []);
const want = (name: string): boolean => only.size === 0 || only.has(name);

const results: Record<string, unknown> = {
  date: new Date().toISOString(),
  node: process.version,
  cpus: (await import('node:os')).cpus().map((c) => c.model)[0],
  cores: (await import('node:os')).cpus().length,
  quick: values.quick,
  argv: process.argv.slice(2),
};
// memory first, while the process holds nothing else (RSS is the process's)
if (want('memory')) results.memory = await memoryBench({ quick: values.quick });
if (want('runtime')) results.runtime = await runtimeBench({ quick: values.quick });
if (want('lora')) results.lora = await loraBench({ quick: values.quick });
if (want('batching')) results.batching = await batchingBench({ quick: values.quick });
if (want('serving')) results.serving = await servingBench({ quick: values.quick, itlTargetMs, scheduling });
if (want('train')) results.train = await trainBench({ quick: values.quick });
if (want('merge')) results.merge = await mergeBench({ quick: values.quick });
if (want('mixture')) results.mixture = await mixtureBench({ quick: values.quick });
if (want('quant')) results.quant = await quantBench({ quick: values.quick });
if (want('sampling')) results.sampling = await samplingBench({ quick: values.quick });
if (want('spinning')) results.spinning = await spinningBench({ quick: values.quick });
if (want('kv')) results.kv = await kvDtypeProbe({ quick: values.quick });

const dir = fileURLToPath(new URL('./results/', import.meta.url));
mkdirSync(dir, { recursive: true });
const file = `${dir}bench-${results.date as string}.json`.replace(/:/g, '-');
writeFileSync(file, JSON.stringify(results, null, 2));
writeFileSync(`${dir}latest.json`, JSON.stringify(results, null, 2));
console.log(`\nsaved ${file}`);
