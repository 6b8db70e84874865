// Run as a child process by adapter-store.test.ts: opens the store at argv[2] and runs the steps
// that follow, in one process (so copies kept for requests are still there, as in a server):
//   put:<name>:<text>[:<keepPrevious>]  stage <text> as both files of <name> and commit it
//   remove:<name>                       delete <name>
//   marker:<name>:<text>                write .replacing-<name> (a stale marker, as if a clean-up failed)
// The last step crashes: the store's fault hook exits the process (no clean-up, no finally blocks)
// between the renames of a replace, or after the rename of a delete. 'not crashed' if it never did.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AdapterStore } from '../../src/adapters/adapter-store.ts';

const [root, ...steps] = process.argv.slice(2);
let armed = false;
const crash = () => { if (armed) process.exit(1); };
const store = new AdapterStore(root, { faults: { beforeSecondRename: crash, afterRemoveRename: crash } });
for (const [i, step] of steps.entries()) {
  armed = i === steps.length - 1;
  const [op, name, text, keepPrevious] = step.split(':');
  if (op === 'put') {
    const bytes = new TextEncoder().encode(text);
    await (await store.stage(name, { config: bytes, weights: bytes })).commit(keepPrevious || undefined);
  } else if (op === 'remove') {
    store.remove(name);
  } else if (op === 'marker') {
    writeFileSync(join(root, `.replacing-${name}`), text);
  } else {
    throw new Error(`unknown step ${step}`);
  }
}
console.log('not crashed');
