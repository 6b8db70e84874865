// The JSON schemas of every route: request bodies (with examples), query strings, path parameters
// and responses. Fastify validates requests with them (schema-validator.ts, one Ajv, no coercion),
// the WebSocket API validates its messages with the same objects, and @fastify/swagger publishes
// them as GET /openapi.json (OpenAPI 3.1). A schema holds what one field can say about itself:
// its type, range, length, enum, required-ness. Rules between fields (n × prompts, max_tokens plus
// the prompt within the context, top_logprobs with logprobs, prompt or messages), limits that depend
// on the form of a value (a token-id prompt vs a list of prompts), token ids of logit_bias keys,
// adapter names and paths, and refused-but-tolerated fields (suffix: null) stay in code.
// Every field accepts null where it did before ("not set"). Responses are documented, not
// enforced: they are sent with JSON.stringify (app.ts), never reshaped by a response serializer.
import { join } from 'node:path';
import { COMBINATION_TYPES } from '../merge/merge-options.ts';
import { MAX_PATH_CHARS } from './adapter-path.ts';
import { MAX_DESCRIPTION_CHARS, MAX_EXAMPLE_CHARS, MAX_EXAMPLES } from '../adapters/adapter-meta.ts';

export interface SchemaLimits {
  vocabSize: number;
  maxContext: number;
  maxN: number;
}

// Examples name real things of this server: its model, and the adapter the examples upload.
export interface SchemaContext {
  modelName: string;
  limits: SchemaLimits;
  storeRoot: string;             // the adapter store: load_lora_adapter's example points into it
}

export const EXAMPLE_ADAPTER = 'storyteller';
export const EXAMPLE_MERGED = 'storyteller-merged';

const ROLES = ['system', 'developer', 'user', 'assistant', 'tool'];

const orNull = (type: string | string[]): string[] => [...(Array.isArray(type) ? type : [type]), 'null'];
const bool = (description: string) => ({ type: orNull('boolean'), description });

export const errorSchema = {
  description: "OpenAI's error body; `param` names the field at fault",
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['message', 'type', 'param', 'code'],
      properties: {
        message: { type: 'string' },
        type: { type: 'string' },
        param: { type: ['string', 'null'] },
        code: { type: ['string', 'null'] },
        problems: { type: 'array', items: { type: 'string' } },
      },
    },
  },
} as const;

export const errorResponses = { '4xx': errorSchema, '5xx': errorSchema } as const;

export const modelSchema = { type: 'string', minLength: 1, description: "the base model's id, an adapter's name, or <base>:<adapter> (see GET /v1/models)" } as const;

// OpenAI chat messages (shared by /v1/chat/completions and /tokenize). A null or missing content
// is allowed for assistant messages only: parseMessages (chat-messages.ts).
export const messagesSchema = {
  type: 'array',
  minItems: 1,
  items: {
    type: 'object',
    required: ['role'],
    properties: {
      role: { type: 'string', enum: ROLES },
      content: {
        description: 'a string, an array of text parts {"type": "text", "text": "…"}, or null (assistant messages only)',
        anyOf: [
          { type: 'string' },
          { type: 'array', items: { type: 'object', required: ['type', 'text'], properties: { type: { type: 'string', enum: ['text'] }, text: { type: 'string' } } } },
          { type: 'null' },
        ],
      },
    },
  },
} as const;

// The fields /v1/completions and /v1/chat/completions share (sampling-fields.ts, openai-request.ts).
function generationFields(limits: SchemaLimits) {
  const tokens = (description: string) => ({ type: orNull('integer'), minimum: 0, maximum: limits.maxContext, description });
  return {
    n: { type: orNull('integer'), minimum: 1, maximum: limits.maxN, description: 'choices per prompt (prompts × n at most the server\'s --max-queue)' },
    adapters: {
      type: orNull('array'), minItems: 1,
      items: { type: 'object', additionalProperties: false, required: ['name', 'weight'], properties: { name: { type: 'string', minLength: 1 }, weight: { type: 'number' } } },
      description: 'a per-request mixture Σ weight·ΔW of served adapters (model: the base model; at most --max-mixture, |weight| ≤ 8); the same as model "a*0.7+b*0.3"',
    },
    stream: bool('send server-sent events (text/event-stream), ending with data: [DONE]'),
    stream_options: { type: orNull('object'), properties: { include_usage: bool('a last chunk with the usage') }, description: "with 'stream': true only" },
    max_tokens: tokens('new tokens at most; the prompt plus max_tokens must fit in the context'),
    max_completion_tokens: tokens('max_tokens by its newer name (takes precedence)'),
    temperature: { type: orNull('number'), minimum: 0, maximum: 2 },
    top_p: { type: orNull('number'), exclusiveMinimum: 0, maximum: 1 },
    top_k: { type: orNull('integer'), minimum: -1, maximum: 1_000_000, description: '0 or -1: disabled' },
    min_p: { type: orNull('number'), minimum: 0, maximum: 1 },
    repetition_penalty: { type: orNull('number'), minimum: 0.01, maximum: 100 },
    frequency_penalty: { type: orNull('number'), minimum: -2, maximum: 2 },
    presence_penalty: { type: orNull('number'), minimum: -2, maximum: 2 },
    seed: { type: orNull('integer'), minimum: -Number.MAX_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER, description: 'choice j of n uses seed + j' },
    stop: {
      description: 'a non-empty string or an array of at most 16 non-empty strings (or null)',
      anyOf: [{ type: 'string', minLength: 1 }, { type: 'array', maxItems: 16, items: { type: 'string', minLength: 1 } }, { type: 'null' }],
    },
    stop_token_ids: { type: orNull('array'), items: { type: 'integer', minimum: 0, exclusiveMaximum: limits.vocabSize } },
    ignore_eos: bool('keep generating past the end-of-sequence token'),
    logit_bias: {
      type: orNull('object'),
      description: `token id (a decimal string, below ${limits.vocabSize}) → a bias in [-100, 100] added to its logit`,
      propertyNames: { pattern: '^[0-9]+$' },
      additionalProperties: { type: 'number', minimum: -100, maximum: 100 },
    },
    echo: bool('completions: the prompt is part of each choice'),
    return_tokens_as_token_ids: bool('logprobs tokens as "token_id:<id>" (vLLM)'),
  };
}

export const PROMPT_FORMS = 'a string, an array of strings, an array of token ids, or an array of token-id arrays (non-empty)';

export function completionBodySchema(ctx: SchemaContext) {
  const { modelName, limits } = ctx;
  return {
    type: 'object',
    required: ['model', 'prompt'],
    properties: {
      model: modelSchema,
      prompt: {
        description: PROMPT_FORMS,
        anyOf: [
          { type: 'string' },
          { type: 'array', minItems: 1, items: { type: 'string' } },
          { type: 'array', minItems: 1, items: { type: 'integer' } },
          { type: 'array', minItems: 1, items: { type: 'array', minItems: 1, items: { type: 'integer' } } },
        ],
      },
      best_of: { type: orNull('integer'), minimum: 1, description: '1 or n only' },
      logprobs: { type: orNull('integer'), minimum: 0, maximum: 20, description: 'the top alternatives per token' },
      ...generationFields(limits),
    },
    examples: [
      { model: modelName, prompt: 'Once upon a time', max_tokens: 16, temperature: 0 },
      { model: modelName, prompt: ['Once upon a time', 'The cat'], max_tokens: 8, n: 2, seed: 7, stop: ['.'] },
    ],
  } as const;
}

export function chatBodySchema(ctx: SchemaContext) {
  const { modelName, limits } = ctx;
  return {
    type: 'object',
    required: ['model', 'messages'],
    properties: {
      model: modelSchema,
      messages: messagesSchema,
      logprobs: bool('log probabilities of the output tokens'),
      top_logprobs: { type: orNull('integer'), minimum: 0, maximum: 20, description: "with 'logprobs': true only" },
      response_format: { type: orNull('object'), required: ['type'], properties: { type: { type: 'string', enum: ['text'] } } },
      add_generation_prompt: bool("end the prompt with the template's assistant turn opener (default true)"),
      ...generationFields(limits),
    },
    examples: [
      { model: modelName, messages: [{ role: 'user', content: 'Tell me a story' }], max_tokens: 16, temperature: 0 },
    ],
  } as const;
}

const usageSchema = {
  type: 'object',
  properties: { prompt_tokens: { type: 'integer' }, completion_tokens: { type: 'integer' }, total_tokens: { type: 'integer' } },
} as const;

const completionResponse = (object: string) => ({
  description: `a ${object} object; with 'stream': true, server-sent events of ${object}.chunk objects, then data: [DONE]`,
  type: 'object',
  properties: {
    id: { type: 'string' },
    object: { type: 'string', enum: [object] },
    created: { type: 'integer' },
    model: { type: 'string' },
    choices: { type: 'array', items: { type: 'object', properties: { index: { type: 'integer' }, finish_reason: { type: ['string', 'null'] } } } },
    usage: usageSchema,
  },
});

export function inferenceSchemas(ctx: SchemaContext) {
  return {
    completion: {
      summary: 'Text completion (OpenAI /v1/completions, vLLM extensions)',
      tags: ['inference'],
      body: completionBodySchema(ctx),
      response: { 200: completionResponse('text_completion'), ...errorResponses },
    },
    chat: {
      summary: "Chat completion with the model's chat template (OpenAI /v1/chat/completions)",
      tags: ['inference'],
      body: chatBodySchema(ctx),
      response: { 200: completionResponse('chat.completion'), ...errorResponses },
    },
  };
}

const modelCard = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    object: { type: 'string', enum: ['model'] },
    created: { type: 'integer' },
    owned_by: { type: 'string' },
    root: { type: 'string' },
    parent: { type: ['string', 'null'] },
    max_model_len: { type: 'integer' },
    status: { type: 'string' },
    version: { type: 'string' },
    description: { type: 'string' },
  },
} as const;

export const modelSchemas = {
  list: {
    summary: 'The base model and every adapter (OpenAI /v1/models)',
    tags: ['models'],
    response: { 200: { type: 'object', properties: { object: { type: 'string', enum: ['list'] }, data: { type: 'array', items: modelCard } } }, ...errorResponses },
  },
  one: {
    summary: 'One model or adapter',
    tags: ['models'],
    params: { type: 'object', required: ['id'], properties: { id: { type: 'string' } } },
    response: { 200: modelCard, ...errorResponses },
  },
};

const adapterSchema = {
  type: 'object',
  description: 'an adapter as served',
  properties: {
    object: { type: 'string', enum: ['adapter'] },
    name: { type: 'string' },
    version: { type: 'string', description: 'content hash of its files' },
    status: { type: 'string', enum: ['ready', 'failed', 'unloading'] },
    source: { type: 'string', enum: ['store', 'path'] },
    rank: { type: 'integer' },
    targets: { type: 'array', items: { type: 'string' } },
    merged: { type: 'boolean', description: 'its weights are merged into a cached copy of the base model' },
    requestsServed: { type: 'integer' },
    description: { type: ['string', 'null'], description: 'one line (loraserve.json)' },
    examples: { type: 'array', items: { type: 'string' }, description: 'routing examples (loraserve.json)' },
    recipe: { type: ['object', 'null'] },
  },
} as const;

const nameParams = { type: 'object', required: ['name'], properties: { name: { type: 'string' } } } as const;
const plainText = { type: 'string', description: 'text/plain: "Success: …" (vLLM)' } as const;
const adapterName = { type: 'string', minLength: 1, maxLength: 128, description: "letters, digits, '.', '_' or '-', starting with a letter or digit" } as const;

export function adapterSchemas(ctx: SchemaContext) {
  return {
    upload: {
      summary: 'Upload a PEFT LoRA adapter (multipart/form-data)',
      description: 'Parts: the text field "name" (and "replace": "true" to replace one), the files adapter_config.json and adapter_model.safetensors. The parts are checked as they stream in (sizes, names, then the adapter itself: 422 with every problem), not by this schema.',
      tags: ['adapters'],
      consumes: ['multipart/form-data'],
      body: {
        type: 'object',
        required: ['name', 'adapter_config.json', 'adapter_model.safetensors'],
        properties: {
          name: adapterName,
          replace: { type: 'string', enum: ['true', 'false', '1', '0'] },
          'adapter_config.json': { type: 'string', contentMediaType: 'application/json', description: "PEFT's adapter config (a file part)" },
          'adapter_model.safetensors': { type: 'string', contentMediaType: 'application/octet-stream', description: 'the weights (a file part)' },
          'loraserve.json': { type: 'string', contentMediaType: 'application/json', description: 'optional (a file part): {description, examples}, the line /v1/models shows and the prompts semantic routing compares with' },
        },
        examples: [{ name: EXAMPLE_ADAPTER }],
      },
      response: { 201: adapterSchema, ...errorResponses },
    },
    list: {
      summary: 'Every adapter',
      tags: ['adapters'],
      response: { 200: { type: 'object', properties: { object: { type: 'string', enum: ['list'] }, data: { type: 'array', items: adapterSchema } } }, ...errorResponses },
    },
    get: { summary: 'One adapter', tags: ['adapters'], params: nameParams, response: { 200: adapterSchema, ...errorResponses } },
    patch: {
      summary: "Set a stored adapter's description and routing examples (its loraserve.json)",
      tags: ['adapters'],
      params: nameParams,
      body: {
        type: 'object',
        additionalProperties: false,
        properties: {
          description: { type: orNull('string'), maxLength: MAX_DESCRIPTION_CHARS, description: 'one line, shown in /v1/models' },
          examples: { type: orNull('array'), maxItems: MAX_EXAMPLES, items: { type: 'string', minLength: 1, maxLength: MAX_EXAMPLE_CHARS }, description: 'prompts in the adapter\'s domain: model "auto" routes by them' },
        },
        examples: [{ description: 'Tells short stories', examples: ['Once upon a time, there was a little girl named Lily.', 'One day, a boy found a big red ball in the park.'] }],
      },
      response: { 200: adapterSchema, ...errorResponses },
    },
    remove: {
      summary: 'Unload an adapter and delete its stored files',
      tags: ['adapters'],
      params: nameParams,
      querystring: {
        type: 'object',
        properties: { wait_ms: { type: 'string', pattern: '^[0-9]+$', description: 'how long to wait for requests in flight (milliseconds, at most --unload-wait-ms, the default; 0: refuse at once)' } },
      },
      response: { 200: { type: 'object', properties: { id: { type: 'string' }, object: { type: 'string' }, deleted: { type: 'boolean' } } }, ...errorResponses },
    },
    reload: { summary: "Read an adapter's directory again", tags: ['adapters'], params: nameParams, response: { 200: adapterSchema, ...errorResponses } },
    merge: {
      summary: 'Merge served adapters into a new one (docs/merging.md)',
      tags: ['adapters'],
      body: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'adapters', 'weights', 'combination_type'],
        properties: {
          name: { ...adapterName, description: "the merged adapter's name (not taken)" },
          adapters: { type: 'array', minItems: 1, items: { type: 'string', minLength: 1 }, description: 'served adapters, each once' },
          weights: { type: 'array', items: { type: 'number' }, description: 'one per adapter' },
          combination_type: { type: 'string', enum: [...COMBINATION_TYPES] },
          density: { type: orNull('number'), exclusiveMinimum: 0, maximum: 1, description: 'the fraction of values kept (the pruning types)' },
          majority_sign_method: { type: orNull('string'), enum: ['total', 'frequency', null] },
          svd_rank: { type: orNull('integer'), minimum: 1 },
          svd_clamp: { type: orNull('number'), minimum: 0, maximum: 1, description: 'a quantile' },
          seed: { type: orNull('integer'), description: 'dare_* types' },
          output: { type: orNull('string'), enum: ['factored', 'merged', null], description: "'merged': keep ΔW (delta types only)" },
        },
        examples: [{ name: EXAMPLE_MERGED, adapters: [EXAMPLE_ADAPTER], weights: [0.5], combination_type: 'linear' }],
      },
      response: { 201: adapterSchema, ...errorResponses },
    },
    load: {
      summary: 'Serve an adapter from a directory (vLLM); recorded, so it is served again after a restart',
      tags: ['adapters'],
      body: {
        type: 'object',
        required: ['lora_name', 'lora_path'],
        properties: {
          lora_name: adapterName,
          lora_path: { type: 'string', minLength: 1, maxLength: MAX_PATH_CHARS, description: 'a directory inside the adapter store or an --allow-adapter-dir' },
          load_inplace: bool('replace an adapter of that name'),
        },
        examples: [{ lora_name: EXAMPLE_ADAPTER, lora_path: join(ctx.storeRoot, EXAMPLE_ADAPTER), load_inplace: true }],
      },
      response: { 200: plainText, ...errorResponses },
    },
    unload: {
      summary: 'Stop serving an adapter (vLLM); its files stay',
      tags: ['adapters'],
      body: {
        type: 'object',
        required: ['lora_name'],
        properties: {
          lora_name: { type: 'string', minLength: 1 },
          wait_ms: { type: ['integer', 'string', 'null'], minimum: 0, pattern: '^[0-9]+$', description: 'as DELETE /v1/adapters/{name}?wait_ms' },
        },
        examples: [{ lora_name: EXAMPLE_ADAPTER }],
      },
      response: { 200: plainText, ...errorResponses },
    },
  };
}

export const serviceSchemas = {
  health: {
    summary: 'Liveness: the engine answers (503 while it restarts)',
    tags: ['service'],
    response: {
      200: { type: 'object', properties: { status: { type: 'string' }, model: { type: 'string' }, adapters: { type: 'integer' }, running: { type: 'integer' }, waiting: { type: 'integer' } } },
      503: { type: 'object', properties: { status: { type: 'string' }, model: { type: 'string' }, error: { type: 'string' } } },
    },
  },
  ready: {
    summary: 'Readiness: the adapter store is served and the engine answers',
    tags: ['service'],
    response: {
      200: { type: 'object', properties: { status: { type: 'string' }, model: { type: 'string' } } },
      503: { type: 'object', properties: { status: { type: 'string' }, model: { type: 'string' } } },
    },
  },
  metrics: {
    summary: 'Prometheus metrics (text exposition format)',
    tags: ['service'],
    produces: ['text/plain'],
    response: { 200: { type: 'string' }, ...errorResponses },
  },
  openapi: {
    summary: 'This description (OpenAPI 3.1)',
    tags: ['service'],
    response: { 200: { type: 'object' } },
  },
  stream: {
    summary: 'WebSocket streaming (upgrade); messages as the Responses API WebSocket mode',
    description: 'Client: {"type": "response.create", "response_id", …a /v1/completions or /v1/chat/completions body} or {"type": "response.cancel", "response_id"}; the body is validated with the same schemas. Server: response.created, response.output_text.delta, response.output_text.done, response.completed, response.incomplete, error {status, error}.',
    tags: ['inference'],
  },
};

// A WebSocket message's own fields; the rest of a response.create is a completions or chat body.
export const wsEnvelopeSchema = {
  type: 'object',
  required: ['response_id', 'type'],
  properties: {
    response_id: { type: 'string', minLength: 1, maxLength: 256 },
    type: { type: 'string', enum: ['response.create', 'response.cancel'] },
  },
} as const;
