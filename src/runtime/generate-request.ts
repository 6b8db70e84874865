// The seam between the server and the runtime: what one generation asks for, and what it yields.
import type { SamplingParams } from './sampler.ts';
import type { SerializedError } from './errors.ts';

export interface GenerateRequest {
  promptTokens: number[];
  maxTokens: number;
  sampling: SamplingParams;
  seed: number | bigint | null; // null: a random seed (a bigint where seed + choice is past 2^53)
  stop: string[];               // stop strings; never part of the output
  stopTokenIds: number[];       // extra stop ids besides EOS
  ignoreEos: boolean;
  logprobs: number | null;      // null: none; k ≥ 0: the chosen token plus the top k alternatives
  promptLogprobs?: number | null; // logprobs of the prompt tokens too (echo), with top k alternatives
  adapter: AdapterRef | null;   // null: the base model
  embed?: boolean;              // an embedding: the prompt's final hidden states, mean-pooled, in an
                                // 'embedding' event before 'done'; nothing is generated (maxTokens 0)
  group?: string;               // the API request it belongs to: its choices share one fair share of rows
}

// An adapter version as the registry resolved it when the request started: the request keeps
// this version even if the adapter is replaced meanwhile.
export interface AdapterRef {
  name: string;
  version: string;
  dir: string;
  retiredDir?: string;  // where the store keeps this version's files if it is replaced while in use
  mixture?: { ref: AdapterRef; weight: number }[]; // a per-request blend Σ wᵢ·ΔWᵢ (adapters/mixture.ts): name and version are the blend's
}

export interface TopLogprob {
  id: number;
  text: string;
  logprob: number;
  bytes?: number[]; // the token's own bytes (a byte-fallback token's one byte): chat logprobs' `bytes`
}

export interface PromptLogprob {
  id: number;
  tokenText: string;
  logprob: number | null;       // null for the first prompt token
  top: TopLogprob[];
}

export type TokenEvent =
  | { type: 'prompt'; logprobs: PromptLogprob[] }
  | { type: 'token'; id: number; text: string; tokenText: string; logprob?: number; top?: TopLogprob[]; bytes?: number[] }
  | { type: 'embedding'; vector: number[] }
  | { type: 'done'; finishReason: 'stop' | 'length'; stopReason: string | number | null; promptTokens: number; completionTokens: number; text: string; path: 'base' | 'merged' | 'unmerged' }
  | { type: 'error'; error: SerializedError };

export type FinishReason = 'stop' | 'length';

export interface ModelInfo {
  name: string;
  vocabSize: number;
  maxContext: number;
  eosTokenIds: number[];
  bosTokenId: number | null;
  numLayers: number;
  hiddenSize: number;
  weightBytes: number;
}
