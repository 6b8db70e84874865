// Embeddings and routing (issue 14), read-only, guarded like the completions routes:
//   POST /v1/embeddings  {model, input, encoding_format?}   OpenAI's shape: the base model's embedding
//                        (its final hidden states, mean-pooled over the input: embedder.ts) of each input
//   POST /v1/route       {prompt | messages, model?}        what model "auto" / "auto:mix" would pick,
//                        with every adapter's score, without generating
// Embeddings always come from the base model: `model` must be its id. A text input is tokenized
// as /v1/completions tokenizes a prompt (BOS added); token-id inputs are taken as they are.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { invalidField } from '../runtime/errors.ts';
import { embedTokens, routingTokens } from './embedder.ts';
import { abortOnClose } from './client-abort.ts';
import type { EmbedDeps } from './embedder.ts';
import type { PromptPreparer } from './prompt-preparer.ts';
import type { SemanticRouter } from './semantic-routing.ts';
import { errorResponses, messagesSchema, modelSchema } from './request-schemas.ts';
import { pickRoute } from '../adapters/semantic-router.ts';

export interface RoutingRouteDeps extends EmbedDeps {
  modelName: string;
  prompts: PromptPreparer;
  router: SemanticRouter | null;
  limits: { vocabSize: number; maxContext: number; maxInputs: number };
}

type EmbeddingsBody = { model: string; input: string | string[] | number[] | number[][]; encoding_format?: 'float' | 'base64' | null; dimensions?: number | null; user?: string | null };
type RouteBody = { model?: string | null; prompt?: string | null; messages?: { role: string; content: string | null }[] | null };

export function registerRoutingRoutes(app: FastifyInstance, deps: RoutingRouteDeps, guard: (req: FastifyRequest) => Promise<void>): void {
  const schemas = routingSchemas(deps.modelName, deps.limits);

  app.post('/v1/embeddings', { preValidation: guard, schema: schemas.embeddings }, async (req, reply) => {
    const b = req.body as EmbeddingsBody;
    if (b.model !== deps.modelName) throw invalidField('model', `embeddings come from the base model: 'model' must be ${JSON.stringify(deps.modelName)}, got ${JSON.stringify(b.model)}`);
    if (b.dimensions != null) throw invalidField('dimensions', `'dimensions' is not supported: embeddings have the model's hidden size`);
    const inputs = await tokenizedInputs(b.input, deps);
    const vectors = await embedTokens(deps, inputs, abortOnClose(req, reply)); // a client that leaves cancels the rest
    const tokens = inputs.reduce((s, x) => s + x.length, 0);
    const base64 = b.encoding_format === 'base64';
    return {
      object: 'list',
      data: vectors.map((v, index) => ({ object: 'embedding', index, embedding: base64 ? Buffer.from(Float32Array.from(v).buffer).toString('base64') : v })),
      model: deps.modelName,
      usage: { prompt_tokens: tokens, total_tokens: tokens },
    };
  });

  app.post('/v1/route', { preValidation: guard, schema: schemas.route }, async (req, reply) => {
    const b = req.body as RouteBody;
    if (!deps.router) throw invalidField('model', 'semantic routing is off on this server');
    if ((b.prompt == null) === (b.messages == null)) throw invalidField(b.prompt == null ? 'prompt' : 'messages', `send either 'prompt' or 'messages'`);
    const text = b.prompt ?? b.messages!.filter((m) => m.role === 'user').map((m) => m.content ?? '').join('\n');
    if (text.trim() === '') throw invalidField(b.prompt != null ? 'prompt' : 'messages', 'there is no text to route by');
    const [ids] = await routingTokens(deps.prompts, [text], deps.limits.maxContext, b.prompt != null ? 'prompt' : 'messages');
    const [query] = await embedTokens(deps, [ids], abortOnClose(req, reply));
    const scores = await deps.router.scores(query);
    const o = deps.router.options;
    return {
      object: 'route',
      adapter: pickRoute(scores, o.threshold),
      mixture: deps.router.mixture(scores),
      threshold: o.threshold,
      scores: scores.map((s) => ({ adapter: s.name, score: s.score })),
    };
  });
}

// input: a string, strings, token ids, or lists of token ids (each non-empty, within the context).
async function tokenizedInputs(input: EmbeddingsBody['input'], deps: RoutingRouteDeps): Promise<number[][]> {
  const { vocabSize, maxContext, maxInputs } = deps.limits;
  const list: (string | number[])[] = typeof input === 'string' ? [input] : input.length > 0 && typeof input[0] === 'number' ? [input as number[]] : (input as (string | number[])[]);
  if (list.length > maxInputs) throw invalidField('input', `'input' holds ${list.length} inputs, more than ${maxInputs}`);
  const texts = list.filter((x): x is string => typeof x === 'string');
  const encoded = texts.length ? await deps.prompts.encode(texts, true, 'input') : [];
  let t = 0;
  return list.map((x, i) => {
    const ids = typeof x === 'string' ? encoded[t++] : x;
    const where = list.length === 1 && typeof input !== 'string' && typeof input[0] === 'number' ? 'input' : `input[${i}]`;
    if (ids.length === 0) throw invalidField(where, `${where} is empty`);
    if (ids.length > maxContext) throw invalidField(where, `${where} is ${ids.length} tokens, more than the context of ${maxContext}`);
    ids.forEach((id, k) => { if (!Number.isInteger(id) || id < 0 || id >= vocabSize) throw invalidField(`${where}[${k}]`, `${where}[${k}] is token id ${id}, outside [0, ${vocabSize})`); });
    return ids;
  });
}

export function routingSchemas(modelName: string, limits: RoutingRouteDeps['limits']) {
  const ids = { type: 'array', minItems: 1, items: { type: 'integer', minimum: 0, maximum: limits.vocabSize - 1 } };
  return {
    embeddings: {
      tags: ['embeddings'],
      summary: "The base model's embeddings: final hidden states, mean-pooled (OpenAI's shape)",
      body: {
        type: 'object',
        required: ['model', 'input'],
        additionalProperties: false,
        properties: {
          model: { type: 'string', minLength: 1, description: "the base model's id" },
          input: {
            description: 'a string, strings, token ids, or lists of token ids',
            anyOf: [
              { type: 'string', minLength: 1 },
              { type: 'array', minItems: 1, maxItems: limits.maxInputs, items: { type: 'string', minLength: 1 } },
              ids,
              { type: 'array', minItems: 1, maxItems: limits.maxInputs, items: ids },
            ],
          },
          encoding_format: { type: ['string', 'null'], enum: ['float', 'base64', null], description: 'base64: little-endian float32' },
          dimensions: { type: ['integer', 'null'], description: 'not supported (the hidden size)' },
          user: { type: ['string', 'null'] },
        },
        examples: [{ model: modelName, input: ['Once upon a time', 'The little dog ran to the park.'] }],
      },
      response: {
        200: {
          type: 'object',
          properties: {
            object: { type: 'string', enum: ['list'] },
            data: { type: 'array', items: { type: 'object', properties: { object: { type: 'string' }, index: { type: 'integer' }, embedding: { type: ['array', 'string'] } } } },
            model: { type: 'string' },
            usage: { type: 'object', properties: { prompt_tokens: { type: 'integer' }, total_tokens: { type: 'integer' } } },
          },
        },
        ...errorResponses,
      },
    },
    route: {
      tags: ['routing'],
      summary: 'What model "auto" would choose for a prompt, with every adapter\'s score (no generation)',
      body: {
        type: 'object',
        additionalProperties: false,
        properties: {
          model: { ...modelSchema, type: ['string', 'null'], description: 'ignored apart from its type (routing is over every adapter with examples)' },
          prompt: { type: ['string', 'null'], minLength: 1 },
          messages: { ...messagesSchema, type: ['array', 'null'] },
        },
        examples: [{ prompt: 'Once upon a time, there was a little girl named Lily.' }],
      },
      response: {
        200: {
          type: 'object',
          properties: {
            object: { type: 'string', enum: ['route'] },
            adapter: { type: ['string', 'null'], description: 'the choice of model "auto" (null: the base model)' },
            mixture: { type: 'array', items: { type: 'object', properties: { name: { type: 'string' }, weight: { type: 'number' } } }, description: 'the blend of model "auto:mix"' },
            threshold: { type: 'number' },
            scores: { type: 'array', items: { type: 'object', properties: { adapter: { type: 'string' }, score: { type: 'number' } } } },
          },
        },
        ...errorResponses,
      },
    },
  };
}
