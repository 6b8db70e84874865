import { fileURLToPath } from 'node:url';

// The model `npm start` serves on a fresh clone: the pretrained stories260K (models/README.md).
export const DEFAULT_MODEL_DIR = fileURLToPath(new URL('../../models/default', import.meta.url));

// The demo adapters served beside it (trained by `npm run make-demo-adapters`): the default of
// --preload-adapters when --model is the default model.
export const DEFAULT_ADAPTERS_DIR = fileURLToPath(new URL('../../models/default-adapters', import.meta.url));
