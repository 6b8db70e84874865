// The engine worker's entry: lets the thread load the TypeScript sources (tsx), then runs the
// engine thread's composition root.
import { register } from 'tsx/esm/api';

register();
await import('./engine-thread.ts');
