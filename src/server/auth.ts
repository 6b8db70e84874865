// Bearer keys: --api-key guards inference, --admin-key guards adapter management, --metrics-key
// (or else the API key) guards /metrics. Without an admin key, adapter management is refused
// unless --enable-local-admin is given, and then only for clients on a loopback address.
import { timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { LoraserveError } from '../runtime/errors.ts';
import { isLoopbackAddress } from './request-guard.ts';

function bearer(req: FastifyRequest): string | null {
  const h = req.headers.authorization;
  if (typeof h !== 'string') return null;
  const m = /^Bearer\s+(.+)$/i.exec(h.trim());
  return m ? m[1] : null;
}

function same(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

export function checkApiKey(req: FastifyRequest, key: string | null, what = 'API key'): void {
  if (key === null) return;
  const got = bearer(req);
  if (got === null || !same(got, key)) throw new LoraserveError('unauthorized', `Incorrect or missing ${what}: send "Authorization: Bearer <key>"`);
}

export function checkAdminKey(req: FastifyRequest, adminKey: string | null, enableLocalAdmin: boolean): void {
  if (adminKey === null) {
    if (enableLocalAdmin && isLoopbackAddress(req.socket.remoteAddress)) return;
    if (enableLocalAdmin) throw new LoraserveError('forbidden', '--enable-local-admin allows adapter management from this machine (a loopback address) only; use --admin-key for remote clients');
    throw new LoraserveError('forbidden', 'adapter management is disabled: start the server with --admin-key KEY, or with --enable-local-admin for local use');
  }
  const got = bearer(req);
  if (got === null || !same(got, adminKey)) throw new LoraserveError('unauthorized', 'Incorrect or missing admin key: send "Authorization: Bearer <admin key>"');
}
