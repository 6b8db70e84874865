// Fine-tuning test helpers: a tiny JSONL data set for stories260K, and waiting on a job.
import type OpenAI from 'openai';

const STORY = ' there was a big red ball. The ball liked to jump and roll in the sun.';
export const PROMPTS = ['Once upon a time', 'One day', 'Once there was', 'The little dog', 'Tom said', 'In the park', 'Lily saw', 'The sun'];

export function trainingJsonl(n = 8): string {
  return Array.from({ length: n }, (_, i) => JSON.stringify({ prompt: PROMPTS[i % PROMPTS.length], completion: STORY })).join('\n') + '\n';
}

export const TERMINAL = ['succeeded', 'failed', 'cancelled'];

export async function waitFor<T>(what: string, fn: () => Promise<T | null | undefined | false>, timeoutMs = 60_000, everyMs = 100): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export async function waitForJob(client: OpenAI, id: string, statuses: string[] = TERMINAL, timeoutMs = 90_000): Promise<OpenAI.FineTuning.FineTuningJob> {
  return waitFor(`job ${id} to reach ${statuses.join('|')}`, async () => {
    const j = await client.fineTuning.jobs.retrieve(id);
    return statuses.includes(j.status) ? j : null;
  }, timeoutMs);
}

// A job that trains long enough to be seen running (many epochs over the tiny data set).
export const LONG_JOB = { method: { type: 'supervised' as const, supervised: { hyperparameters: { n_epochs: 1000, batch_size: 2 } } } };
export const LORA_FAST = { rank: 4, alpha: 8, learning_rate: 0.02, seq_len: 64 };
