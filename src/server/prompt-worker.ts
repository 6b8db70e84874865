// The prompt worker thread: tokenizes prompts and renders chat templates (prompt-text.ts) so the
// HTTP thread never does. One request at a time, in arrival order.
import { parentPort, workerData } from 'node:worker_threads';
import { setPriority } from 'node:os';
import { PromptText } from './prompt-text.ts';
import type { PromptTextOptions } from './prompt-text.ts';
import { serializeError } from '../runtime/errors.ts';
import type { PromptJob } from './prompt-preparer.ts';

const port = parentPort!;
try { setPriority(0, 5); } catch { /* not permitted: normal priority */ } // like the engine: HTTP first

const text = new PromptText(workerData as PromptTextOptions);
port.on('message', ({ id, job }: { id: number; job: PromptJob }) => {
  try {
    const value = job.op === 'encode' ? text.encode(job.texts, job.addSpecialTokens, job.param)
      : job.op === 'decode' ? text.decode(job.prompts)
        : text.renderChat(job.messages, job.addGenerationPrompt);
    port.postMessage({ id, value });
  } catch (err) {
    port.postMessage({ id, error: serializeError(err) });
  }
});
port.postMessage({ ready: text.maxPromptBytes });
