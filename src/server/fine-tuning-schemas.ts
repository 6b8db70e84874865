// The JSON schemas of the files and fine-tuning routes (files-routes.ts, fine-tuning-routes.ts), as
// request-schemas.ts does for the others: validated by the one validator (schema-validator.ts),
// published in GET /openapi.json. Rules that need the model, the server's limits or the stored
// files stay in code (src/train/jobs/job-spec.ts, manager.ts). Examples sit on the fields: a
// whole-body example would name a file id that exists on no other server.
import { errorResponses } from './request-schemas.ts';
import { SUFFIX_PATTERN } from '../train/jobs/job-spec.ts';
import { TARGETS } from '../runtime/model-targets.ts';

const orNull = (type: string | string[]): string[] => [...(Array.isArray(type) ? type : [type]), 'null'];
const digits = (description: string) => ({ type: 'string', pattern: '^[0-9]+$', description });

const fileObject = {
  type: 'object',
  description: "an uploaded file (OpenAI's File object)",
  properties: {
    id: { type: 'string', examples: ['file-3f2a9c0d1e4b5a6978c1d2e3'] },
    object: { type: 'string', enum: ['file'] },
    bytes: { type: 'integer' },
    created_at: { type: 'integer' },
    filename: { type: 'string' },
    purpose: { type: 'string', enum: ['fine-tune', 'fine-tune-results'] },
    status: { type: 'string' },
    lines: { type: 'integer', description: 'fine-tune files: the number of examples' },
  },
} as const;

const listOf = (item: object) => ({
  type: 'object',
  properties: { object: { type: 'string', enum: ['list'] }, data: { type: 'array', items: item }, has_more: { type: 'boolean' }, first_id: { type: ['string', 'null'] }, last_id: { type: ['string', 'null'] } },
});

const fileParams = { type: 'object', required: ['file_id'], properties: { file_id: { type: 'string', description: 'file-<24 hex digits>' } } } as const;
const jobParams = { type: 'object', required: ['fine_tuning_job_id'], properties: { fine_tuning_job_id: { type: 'string', description: 'ftjob-<24 hex digits>' } } } as const;
const pageQuery = (extra: Record<string, object> = {}) => ({
  type: 'object',
  additionalProperties: false,
  properties: { after: { type: 'string', description: 'the id of the last item of the previous page' }, limit: digits('items per page, 1–100 (default 20)'), ...extra },
});

const hyperparameters = {
  type: orNull('object'),
  additionalProperties: false,
  properties: {
    n_epochs: { description: '"auto" (3) or an integer in [1, 1000]', anyOf: [{ type: 'string', enum: ['auto'] }, { type: 'integer', minimum: 1, maximum: 1000 }, { type: 'null' }], examples: [2] },
    batch_size: { description: '"auto" (8) or an integer in [1, 256]', anyOf: [{ type: 'string', enum: ['auto'] }, { type: 'integer', minimum: 1, maximum: 256 }, { type: 'null' }], examples: [4] },
    learning_rate_multiplier: { description: '"auto" (1) or a number in (0, 100]: the learning rate is 2e-4 × it', anyOf: [{ type: 'string', enum: ['auto'] }, { type: 'number', exclusiveMinimum: 0, maximum: 100 }, { type: 'null' }], examples: [1] },
  },
} as const;

const hyperparametersOut = { type: 'object', properties: { n_epochs: { type: 'integer' }, batch_size: { type: 'integer' }, learning_rate_multiplier: { type: 'number' } } } as const;

// loraserve's extra object: the LoRA run's settings (docs/fine-tuning.md)
const lora = {
  type: orNull('object'),
  additionalProperties: false,
  description: "loraserve's LoRA settings (not OpenAI's): rank, alpha, targets, learning rate, dropout, sequence length",
  properties: {
    rank: { type: orNull('integer'), minimum: 1, maximum: 1024, description: 'LoRA rank r (default 8; at most --max-lora-rank)', examples: [8] },
    alpha: { type: orNull('number'), exclusiveMinimum: 0, description: 'lora_alpha (default 16); the scale is alpha / r', examples: [16] },
    targets: {
      description: `"all-linear" (the default) or a list of ${TARGETS.join(', ')}`,
      anyOf: [{ type: 'string', enum: ['all-linear'] }, { type: 'array', minItems: 1, maxItems: TARGETS.length, items: { type: 'string', enum: [...TARGETS] } }, { type: 'null' }],
      examples: [['q_proj', 'v_proj']],
    },
    learning_rate: { type: orNull('number'), exclusiveMinimum: 0, maximum: 1, description: 'overrides 2e-4 × learning_rate_multiplier', examples: [0.001] },
    dropout: { type: orNull('number'), minimum: 0, exclusiveMaximum: 1, description: 'lora_dropout (default 0)' },
    seq_len: { type: orNull('integer'), minimum: 2, maximum: 1_048_576, description: "tokens per training row (default 256, at most the model's context); a longer example fails the job, naming its line" },
  },
} as const;

const jobObject = {
  type: 'object',
  description: "a fine-tuning job (OpenAI's FineTuningJob object, plus `lora`)",
  properties: {
    id: { type: 'string' },
    object: { type: 'string', enum: ['fine_tuning.job'] },
    created_at: { type: 'integer' },
    finished_at: { type: ['integer', 'null'] },
    status: { type: 'string', enum: ['validating_files', 'queued', 'running', 'succeeded', 'failed', 'cancelled'] },
    model: { type: 'string' },
    fine_tuned_model: { type: ['string', 'null'], description: '<base>:ft-<suffix>-<short id>, served once the job succeeded' },
    training_file: { type: 'string' },
    validation_file: { type: ['string', 'null'] },
    result_files: { type: 'array', items: { type: 'string' }, description: 'file ids: metrics.jsonl and the loss curve (loss.png)' },
    trained_tokens: { type: ['integer', 'null'] },
    seed: { type: 'integer' },
    user_provided_suffix: { type: ['string', 'null'] },
    error: { type: ['object', 'null'], properties: { code: { type: 'string' }, message: { type: 'string' }, param: { type: ['string', 'null'] } } },
    hyperparameters: hyperparametersOut,
    method: { type: 'object', properties: { type: { type: 'string' }, supervised: { type: 'object', properties: { hyperparameters: hyperparametersOut } } } },
    lora: { type: 'object', properties: { rank: { type: 'integer' }, alpha: { type: 'number' }, targets: { type: 'array', items: { type: 'string' } }, learning_rate: { type: 'number' }, dropout: { type: 'number' }, seq_len: { type: 'integer' } } },
  },
} as const;

const eventObject = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    object: { type: 'string', enum: ['fine_tuning.job.event'] },
    created_at: { type: 'integer' },
    level: { type: 'string', enum: ['info', 'warn', 'error'] },
    message: { type: 'string' },
    type: { type: 'string', enum: ['message', 'metrics'] },
    data: { type: ['object', 'null'], description: 'metrics events: step, total_steps, train_loss, eval_loss, tokens_per_s, lr' },
  },
} as const;

const checkpointObject = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    object: { type: 'string', enum: ['fine_tuning.job.checkpoint'] },
    created_at: { type: 'integer' },
    fine_tuned_model_checkpoint: { type: 'string' },
    fine_tuning_job_id: { type: 'string' },
    step_number: { type: 'integer' },
    metrics: { type: 'object', properties: { step: { type: 'integer' }, train_loss: { type: ['number', 'null'] }, valid_loss: { type: ['number', 'null'] } } },
  },
} as const;

export function fileSchemas() {
  return {
    upload: {
      summary: 'Upload a training file (multipart/form-data; OpenAI /v1/files)',
      description: 'Parts: the file ("file") and "purpose": "fine-tune". The file is JSON lines, one example per line ({"messages": […]}, {"prompt", "completion"} or {"text"}); every line is checked before anything is stored: 422 with every bad line and its number. Over --max-training-file-mb or --max-training-file-lines: 413.',
      tags: ['fine-tuning'],
      consumes: ['multipart/form-data'],
      body: {
        type: 'object',
        required: ['file', 'purpose'],
        properties: {
          file: { type: 'string', contentMediaType: 'application/jsonl', description: 'the JSONL file (a file part)' },
          purpose: { type: 'string', enum: ['fine-tune'], examples: ['fine-tune'] },
        },
      },
      response: { 200: fileObject, ...errorResponses },
    },
    list: {
      summary: 'Every file, newest first',
      tags: ['fine-tuning'],
      querystring: pageQuery({ purpose: { type: 'string', maxLength: 64, description: 'only files of this purpose (any of OpenAI\'s; this server stores fine-tune and fine-tune-results)' }, order: { type: 'string', enum: ['asc', 'desc'] } }),
      response: { 200: listOf(fileObject), ...errorResponses },
    },
    get: { summary: 'One file', tags: ['fine-tuning'], params: fileParams, response: { 200: fileObject, ...errorResponses } },
    content: { summary: "A file's bytes", tags: ['fine-tuning'], params: fileParams, produces: ['application/octet-stream'], response: { 200: { type: 'string', description: 'the bytes as uploaded' }, ...errorResponses } },
    remove: {
      summary: 'Delete a file (409 while a job that has not ended uses it)',
      tags: ['fine-tuning'],
      params: fileParams,
      response: { 200: { type: 'object', properties: { id: { type: 'string' }, object: { type: 'string' }, deleted: { type: 'boolean' } } }, ...errorResponses },
    },
  };
}

export function fineTuningSchemas(modelName: string) {
  const trainingFile = { type: 'string', minLength: 1, description: 'the id of an uploaded file with purpose "fine-tune"', examples: ['file-3f2a9c0d1e4b5a6978c1d2e3'] };
  return {
    create: {
      summary: 'Create a fine-tuning job (OpenAI /v1/fine_tuning/jobs): a LoRA adapter trained while the server serves',
      description: `One job trains at a time (in its own worker thread); the others queue, at most --fine-tune-max-queue (429 beyond). On success the adapter is in the store and served as fine_tuned_model, ${modelName}:ft-<suffix>-<short id>. Unknown fields are refused (400 naming them).`,
      tags: ['fine-tuning'],
      body: {
        type: 'object',
        additionalProperties: false,
        required: ['model', 'training_file'],
        properties: {
          model: { type: 'string', minLength: 1, description: "the base model's id", examples: [modelName] },
          training_file: trainingFile,
          validation_file: { ...trainingFile, type: orNull('string'), description: 'held-out examples: eval loss each epoch' },
          suffix: { type: orNull('string'), pattern: SUFFIX_PATTERN, description: "in the model's name: 1–40 letters, digits, '_' or '-'; not one that a job in progress or a served adapter uses (409)", examples: ['pirate'] },
          seed: { type: orNull('integer'), minimum: 0, maximum: 2 ** 31 - 1, examples: [42] },
          metadata: { type: orNull('object'), maxProperties: 16, additionalProperties: { type: 'string', maxLength: 512 } },
          hyperparameters: { ...hyperparameters, description: 'legacy: the same as method.supervised.hyperparameters' },
          method: {
            type: orNull('object'),
            additionalProperties: false,
            required: ['type'],
            properties: {
              type: { type: 'string', enum: ['supervised'] },
              supervised: { type: orNull('object'), additionalProperties: false, properties: { hyperparameters } },
            },
            examples: [{ type: 'supervised', supervised: { hyperparameters: { n_epochs: 2, batch_size: 4 } } }],
          },
          lora,
        },
      },
      response: { 200: jobObject, ...errorResponses },
    },
    list: {
      summary: 'Fine-tuning jobs, newest first',
      description: 'Filter by metadata as OpenAI does: metadata[key]=value (all given must match), or metadata=null for jobs without metadata.',
      tags: ['fine-tuning'],
      querystring: { ...pageQuery({ metadata: { type: 'string', enum: ['null'], description: 'null: only jobs without metadata' } }), patternProperties: { '^metadata\\[[^\\[\\]]{1,64}\\]$': { type: 'string', maxLength: 512 } } },
      response: { 200: listOf(jobObject), ...errorResponses },
    },
    get: { summary: 'One fine-tuning job', tags: ['fine-tuning'], params: jobParams, response: { 200: jobObject, ...errorResponses } },
    events: {
      summary: "A job's events, newest first; ?stream=true: server-sent events, oldest first, live until the job ends",
      description: 'Metrics events (type "metrics") carry data {step, total_steps, train_loss, eval_loss, tokens_per_s, lr}. With stream=true the answer is text/event-stream: every event so far, then each new one, each as `data: {event}`, ending with `data: [DONE]` once the job has ended. The WebSocket API offers the same: {"type": "fine_tuning.job.subscribe", "fine_tuning_job_id"}.',
      tags: ['fine-tuning'],
      params: jobParams,
      querystring: pageQuery({ stream: { type: 'string', enum: ['true', 'false'] } }),
      produces: ['application/json', 'text/event-stream'],
      response: { 200: listOf(eventObject), ...errorResponses },
    },
    checkpoints: { summary: "A job's checkpoints (one per epoch), newest first", tags: ['fine-tuning'], params: jobParams, querystring: pageQuery(), response: { 200: listOf(checkpointObject), ...errorResponses } },
    cancel: { summary: 'Cancel a job: a queued one at once, a running one at its next step; no adapter is registered', tags: ['fine-tuning'], params: jobParams, response: { 200: jobObject, ...errorResponses } },
  };
}

// The WebSocket subscription message (websocket.ts hands these types to fine-tuning-ws.ts).
export const wsSubscribeSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['type', 'fine_tuning_job_id'],
  properties: {
    type: { type: 'string', enum: ['fine_tuning.job.subscribe', 'fine_tuning.job.unsubscribe'] },
    fine_tuning_job_id: { type: 'string', minLength: 1, maxLength: 64 },
  },
} as const;
