// LoraserveError → OpenAI's error body, the same for HTTP responses, SSE frames and WebSocket events.
// {"error": {"message", "type", "param", "code"}} (shared/reference/formats-and-apis.md §5.5).
import { toLoraserveError } from '../runtime/errors.ts';
import type { ErrorCode } from '../runtime/errors.ts';

const TYPE_BY_CODE: Record<ErrorCode, string> = {
  invalid_request: 'invalid_request_error',
  unauthorized: 'authentication_error',
  forbidden: 'permission_error',
  model_not_found: 'invalid_request_error',
  not_found: 'invalid_request_error',
  conflict: 'invalid_request_error',
  payload_too_large: 'invalid_request_error',
  unsupported_media_type: 'invalid_request_error',
  invalid_adapter: 'invalid_request_error',
  invalid_file: 'invalid_request_error',
  overloaded: 'rate_limit_error',
  client_closed: 'invalid_request_error',
  invalid_model: 'server_error',
  internal: 'server_error',
  unavailable: 'server_error',
};

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null; problems?: string[] };
}

export function errorBody(err: unknown): { status: number; body: OpenAIErrorBody; retryAfter?: number } {
  const e = toLoraserveError(err);
  const body: OpenAIErrorBody = { error: { message: e.message, type: TYPE_BY_CODE[e.code], param: e.param, code: e.code } };
  if (e.problems.length) body.error.problems = e.problems;
  return { status: e.status, body, retryAfter: e.retryAfterSeconds };
}
