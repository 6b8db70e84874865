// Worker bootstrap: lets the prompt worker thread load the TypeScript sources (tsx), then starts it.
import { register } from 'tsx/esm/api';

register();
await import('./prompt-worker.ts');
