// Worker bootstrap: lets the merge worker thread load the TypeScript sources (tsx), then starts it.
import { register } from 'tsx/esm/api';

register();
await import('./merge-worker.ts');
