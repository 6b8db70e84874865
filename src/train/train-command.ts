// `loraserve train` / `npm run train --`: flags → a training run → a summary on stdout.
// Every refusal (flags, paths, data) is thrown before anything is written; main.ts prints it and
// exits 1.
import { parseTrainArgs } from './train-args.ts';
import { train } from './trainer.ts';

export async function trainCommand(argv: string[]): Promise<void> {
  const args = parseTrainArgs(argv);
  const r = await train(args);
  const loss = (v: number | null): string => (v === null ? '–' : v.toFixed(4));
  const lines = [
    `adapter written to ${r.out}`,
    `steps ${r.steps}; last train loss ${loss(r.trainLoss)}; eval loss ${loss(r.evalLossBase)} (base) → ${loss(r.evalLossFinal)} (adapter)` +
      (r.evalLossBase !== null && r.evalLossFinal !== null ? ` (${((1 - r.evalLossFinal / r.evalLossBase) * 100).toFixed(1)}% lower)` : ''),
    `${r.trainTokensPerS.toFixed(0)} training tokens/s; peak RSS ${(r.peakRssBytes / 2 ** 20).toFixed(0)} MiB; ${r.seconds.toFixed(1)} s`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}
