// Run as a child process by warm-buffers.test.ts: asks the helper thread for spares several times
// and then simply ends. The process must exit on its own (the helper never keeps it alive).
import { prepareSpare, spareSettled, takeBuffer } from '../../src/adapters/warm-buffers.ts';

const alive = setInterval(() => undefined, 1000); // the helper is unref'd: something must keep the loop up while it waits
for (let i = 0; i < 4; i++) {
  prepareSpare(2_000_000 + i);
  await spareSettled();
  takeBuffer(2_000_000 + i);
}
clearInterval(alive);
prepareSpare(3_000_000); // still being touched when the script ends
console.log('done');
