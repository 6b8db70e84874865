// Worker bootstrap: lets the training worker thread load the TypeScript sources (tsx), then starts it.
import { register } from 'tsx/esm/api';

register();
await import('./train-worker.ts');
