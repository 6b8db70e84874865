import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// The shared read-only fixture, beside the checkout (../shared) as in CI.
export const STORIES_DIR = fileURLToPath(new URL('../../../shared/fixtures/stories260K', import.meta.url));
export const hasStories = existsSync(`${STORIES_DIR}/model.safetensors`);

export interface StoriesExpected {
  unconditional_story: { prompt_ids: number[]; greedy_ids_first_256: number[]; text: string };
  generation_cases: { prompt: string; prompt_ids: number[]; greedy_ids: number[]; greedy_text: string; full_text: string; last_position_top5: { id: number; logprob: number }[] }[];
  tokenizer_cases: { text: string; ids: number[]; decoded: string }[];
}

export function storiesExpected(): StoriesExpected {
  return JSON.parse(readFileSync(`${STORIES_DIR}/EXPECTED.json`, 'utf8')) as StoriesExpected;
}
