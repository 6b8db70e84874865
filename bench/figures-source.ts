// Where a report script's figures come from: the latest `npm run bench` run
// (bench/results/latest.json) when it has the script's section, else the copy kept in
// docs/figures/<name>.json, so that the docs can be re-rendered without a new run. keep() stores
// the run's JSON there once its figures are written.
import { copyFileSync, existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface Figures<R> {
  run: R;
  file: string;      // the JSON read
  keep(): void;      // copy it to docs/figures/<name>.json (nothing when it is that copy)
}

const here = (p: string): string => fileURLToPath(new URL(p, import.meta.url));

export function figuresSource<R extends object>(section: keyof R & string, name: string): Figures<R> | null {
  const latest = here('./results/latest.json');
  const kept = here(`../docs/figures/${name}.json`);
  const read = (file: string): R => JSON.parse(readFileSync(file, 'utf8')) as R;
  const fromLatest = existsSync(latest) ? read(latest) : null;
  const [run, file] = fromLatest?.[section] ? [fromLatest, latest] : existsSync(kept) ? [read(kept), kept] : [null, null];
  if (!run || !file) return null;
  return { run, file, keep: () => { if (file !== kept) copyFileSync(file, kept); } };
}
