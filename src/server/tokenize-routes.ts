// POST /tokenize and POST /detokenize (vLLM's tokenizer endpoints), read-only, guarded like the
// completions routes (API key, Host/Origin, body limit).
//   /tokenize    {model, prompt, add_special_tokens?}                           → {tokens, count, max_model_len}
//                {model, messages, add_generation_prompt?, add_special_tokens?}
//   /detokenize  {model, tokens}                                                → {prompt}
// `model` resolves as in inference (resolveAdapter: 404 for an unknown name, 503 for an adapter that
// cannot be served); every adapter shares the base model's tokenizer. A prompt is tokenized as
// /v1/completions does it (add_special_tokens defaults to true), messages are rendered as
// /v1/chat/completions does it (add_special_tokens defaults to false), so `count` is the
// prompt_tokens of the same completion. Tokenizing, templates and decoding run in the prompt
// worker. Like vLLM, /tokenize counts a prompt longer than the context (count > max_model_len)
// rather than refusing it; a text that cannot fit by its byte length alone is refused (400).
//
// The bodies are validated by their JSON schemas (request-schemas.ts: types, ranges, the chat
// message shape), as every route's are; what is left to the parsers below is between fields
// ('prompt' or 'messages', not both), the refused vLLM fields, and a null assistant content.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ChatMessage } from '../runtime/chat-template.ts';
import { invalidField } from '../runtime/errors.ts';
import { asObject, modelField, refuseUnsupported } from './openai-request.ts';
import { parseMessages } from './chat-messages.ts';
import { booleanField, describeValue } from './sampling-fields.ts';
import { errorResponses, messagesSchema, modelSchema } from './request-schemas.ts';
import { resolveAdapter } from './generation.ts';
import type { AdapterRegistry } from '../adapters/registry.ts';
import type { PromptPreparer } from './prompt-preparer.ts';

export interface TokenizeDeps {
  registry: AdapterRegistry;
  modelName: string;
  prompts: PromptPreparer;
  limits: { vocabSize: number; maxContext: number };
}

export type TokenizeRequest = { model: string; addSpecialTokens: boolean } & (
  | { prompt: string }
  | { messages: ChatMessage[]; addGenerationPrompt: boolean });

export interface DetokenizeRequest { model: string; tokens: number[] }

// vLLM's tokenize fields this server does not implement: refused when set, never ignored.
const UNSUPPORTED = ['return_token_strs', 'continue_final_message', 'chat_template', 'chat_template_kwargs', 'tools', 'mm_processor_kwargs'];

export function parseTokenizeBody(body: unknown): TokenizeRequest {
  const b = asObject(body);
  const model = modelField(b);
  const hasPrompt = b.prompt != null;
  const hasMessages = b.messages != null;
  if (hasPrompt && hasMessages) throw invalidField('messages', `send either 'prompt' or 'messages', not both`);
  if (!hasPrompt && !hasMessages) throw invalidField('prompt', `'prompt' (a string) or 'messages' (a non-empty array of chat messages) is required`);
  refuseUnsupported(b, UNSUPPORTED);
  if (hasPrompt) {
    if (typeof b.prompt !== 'string') throw invalidField('prompt', `'prompt' must be a string, got ${describeValue(b.prompt)}`);
    return { model, prompt: b.prompt, addSpecialTokens: booleanField(b, 'add_special_tokens', true) };
  }
  const messages = parseMessages(b.messages);
  return { model, messages, addGenerationPrompt: booleanField(b, 'add_generation_prompt', true), addSpecialTokens: booleanField(b, 'add_special_tokens', false) };
}

// Token ids: integers in [0, vocabSize), at most the context (as a token-id prompt of /v1/completions).
export function parseDetokenizeBody(body: unknown, limits: TokenizeDeps['limits']): DetokenizeRequest {
  const b = asObject(body);
  const model = modelField(b);
  const tokens = b.tokens;
  if (!Array.isArray(tokens)) throw invalidField('tokens', `'tokens' must be an array of token ids (integers in [0, ${limits.vocabSize})), got ${describeValue(tokens)}`);
  if (tokens.length > limits.maxContext) throw invalidField('tokens', `'tokens' holds ${tokens.length} token ids, more than the context of ${limits.maxContext}`);
  tokens.forEach((t: unknown, i) => {
    if (typeof t !== 'number' || !Number.isInteger(t)) throw invalidField(`tokens[${i}]`, `'tokens[${i}]' must be an integer token id in [0, ${limits.vocabSize}), got ${describeValue(t)}`);
    if (t < 0 || t >= limits.vocabSize) throw invalidField(`tokens[${i}]`, `'tokens[${i}]' is token id ${t}, outside [0, ${limits.vocabSize}) (the vocabulary size is ${limits.vocabSize})`);
  });
  return { model, tokens: tokens as number[] };
}

export async function tokenize(req: TokenizeRequest, deps: TokenizeDeps): Promise<{ tokens: number[]; count: number; max_model_len: number }> {
  resolveAdapter(req.model, deps.modelName, deps.registry);
  let ids: number[];
  if ('prompt' in req) {
    [ids] = await deps.prompts.encode([req.prompt], req.addSpecialTokens, 'prompt');
  } else {
    const chat = await deps.prompts.renderChat(req.messages, req.addGenerationPrompt); // the template adds BOS itself
    ids = req.addSpecialTokens ? (await deps.prompts.encode([chat.text], true, 'messages'))[0] : chat.ids;
  }
  return { tokens: ids, count: ids.length, max_model_len: deps.limits.maxContext };
}

export async function detokenize(req: DetokenizeRequest, deps: TokenizeDeps): Promise<{ prompt: string }> {
  resolveAdapter(req.model, deps.modelName, deps.registry);
  if (req.tokens.length === 0) return { prompt: '' }; // the tokenizer library refuses an empty list
  const [prompt] = await deps.prompts.decode([req.tokens]);
  return { prompt };
}

export function tokenizeSchemas(modelName: string, limits: TokenizeDeps['limits']) {
  const errors = errorResponses;
  const tokenize = {
    tags: ['tokenizer'],
    summary: "Tokenize a prompt, or chat messages with the model's chat template (vLLM's /tokenize)",
    body: {
      type: 'object',
      required: ['model'],
      properties: {
        model: modelSchema,
        prompt: { type: ['string', 'null'], description: "text, tokenized as /v1/completions tokenizes it (either 'prompt' or 'messages')" },
        messages: { ...messagesSchema, type: ['array', 'null'], description: 'chat messages, rendered and tokenized as /v1/chat/completions does it' },
        add_special_tokens: { type: ['boolean', 'null'], description: "add the tokenizer's special tokens (BOS); default true with 'prompt', false with 'messages' (the chat template adds them)" },
        add_generation_prompt: { type: ['boolean', 'null'], default: true, description: "with 'messages': end with the template's assistant turn opener" },
      },
      examples: [
        { model: modelName, prompt: 'Once upon a time' },
        { model: modelName, messages: [{ role: 'user', content: 'Tell me a story' }], add_generation_prompt: true },
      ],
    },
    response: {
      200: {
        type: 'object',
        required: ['tokens', 'count', 'max_model_len'],
        properties: {
          tokens: { type: 'array', items: { type: 'integer' } },
          count: { type: 'integer', description: 'the number of tokens: the prompt_tokens of the same completion' },
          max_model_len: { type: 'integer', description: 'the context length in tokens' },
        },
      },
      ...errors,
    },
  };
  const detokenize = {
    tags: ['tokenizer'],
    summary: "Token ids → text (vLLM's /detokenize)",
    body: {
      type: 'object',
      required: ['model', 'tokens'],
      properties: {
        model: modelSchema,
        tokens: { type: 'array', maxItems: limits.maxContext, items: { type: 'integer', minimum: 0, exclusiveMaximum: limits.vocabSize }, description: 'token ids' },
      },
      examples: [{ model: modelName, tokens: [1, 403, 407, 261, 378].filter((t) => t < limits.vocabSize) }],
    },
    response: {
      200: { type: 'object', required: ['prompt'], properties: { prompt: { type: 'string' } } },
      ...errors,
    },
  };
  return { tokenize, detokenize };
}

// `auth` is the completions routes' own guard (API key, prompt logging); it runs before the body is
// judged, as it does for completions.
export function registerTokenizeRoutes(app: FastifyInstance, deps: TokenizeDeps, auth: (req: FastifyRequest) => Promise<void>): void {
  const schemas = tokenizeSchemas(deps.modelName, deps.limits);
  app.post('/tokenize', { preValidation: auth, schema: schemas.tokenize }, async (req) => tokenize(parseTokenizeBody(req.body), deps));
  app.post('/detokenize', { preValidation: auth, schema: schemas.detokenize }, async (req) => detokenize(parseDetokenizeBody(req.body, deps.limits), deps));
}
