// The one error family of loraserve. Every layer throws LoraserveError (or a subclass);
// the server maps it the same way to an HTTP body, an SSE data frame and a WebSocket event.

export type ErrorCode =
  | 'invalid_request'     // 400: a field is missing, has the wrong type, or is out of range
  | 'unauthorized'        // 401
  | 'forbidden'           // 403
  | 'model_not_found'     // 404: unknown model / adapter name
  | 'not_found'           // 404: no such route
  | 'conflict'            // 409: e.g. adapter already exists, or is in use
  | 'payload_too_large'   // 413
  | 'unsupported_media_type' // 415: a body that is not JSON (or multipart for uploads)
  | 'invalid_adapter'     // 422: adapter files fail validation (all problems listed)
  | 'invalid_file'        // 422: an uploaded training file fails validation (every bad line listed)
  | 'overloaded'          // 429: queue full
  | 'client_closed'       // 499: the client went away
  | 'invalid_model'       // model directory cannot be served (start-up only)
  | 'internal'            // 500
  | 'unavailable';        // 503: the engine is restarting, or an adapter cannot be served now

export const STATUS_BY_CODE: Record<ErrorCode, number> = {
  invalid_request: 400,
  unauthorized: 401,
  forbidden: 403,
  model_not_found: 404,
  not_found: 404,
  conflict: 409,
  payload_too_large: 413,
  unsupported_media_type: 415,
  invalid_adapter: 422,
  invalid_file: 422,
  overloaded: 429,
  client_closed: 499,
  invalid_model: 500,
  internal: 500,
  unavailable: 503,
};

export class LoraserveError extends Error {
  readonly code: ErrorCode;
  readonly param: string | null;
  readonly problems: string[];
  readonly retryAfterSeconds?: number;

  constructor(code: ErrorCode, message: string, opts: { param?: string | null; problems?: string[]; retryAfterSeconds?: number } = {}) {
    super(message);
    this.name = 'LoraserveError';
    this.code = code;
    this.param = opts.param ?? null;
    this.problems = opts.problems ?? [];
    this.retryAfterSeconds = opts.retryAfterSeconds;
  }

  get status(): number {
    return STATUS_BY_CODE[this.code];
  }
}

export class SafetensorsError extends LoraserveError {
  constructor(message: string) {
    super('invalid_request', message);
    this.name = 'SafetensorsError';
  }
}

export class ModelConfigError extends LoraserveError {
  constructor(message: string, field: string | null = null) {
    super('invalid_model', message, { param: field });
    this.name = 'ModelConfigError';
  }
}

export function invalidField(param: string, message: string): LoraserveError {
  return new LoraserveError('invalid_request', message, { param });
}

// Anything thrown → LoraserveError; unknown errors become 'internal' without leaking stacks.
export function toLoraserveError(err: unknown): LoraserveError {
  if (err instanceof LoraserveError) return err;
  if (err && typeof err === 'object' && 'code' in err && 'message' in err && typeof (err as { code: unknown }).code === 'string'
    && (err as { code: string }).code in STATUS_BY_CODE) {
    const e = err as { code: ErrorCode; message: string; param?: string | null; problems?: string[] };
    return new LoraserveError(e.code, e.message, { param: e.param ?? null, problems: e.problems });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new LoraserveError('internal', message);
}

// Plain-object form that survives postMessage between the worker and the main thread.
export interface SerializedError {
  code: ErrorCode;
  message: string;
  param: string | null;
  problems: string[];
  retryAfterSeconds?: number;
}

export function serializeError(err: unknown): SerializedError {
  const e = toLoraserveError(err);
  return { code: e.code, message: e.message, param: e.param, problems: e.problems, ...(e.retryAfterSeconds !== undefined ? { retryAfterSeconds: e.retryAfterSeconds } : {}) };
}

export function deserializeError(e: SerializedError): LoraserveError {
  return new LoraserveError(e.code, e.message, { param: e.param, problems: e.problems, retryAfterSeconds: e.retryAfterSeconds });
}
