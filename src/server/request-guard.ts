// Who may send what, checked on every request before routing (a Fastify onRequest hook):
//   Host     must name this server: a loopback name when it listens on loopback, else the listen
//            address, or a name given with --allowed-host. A DNS-rebinding page reaches a local
//            server under the attacker's host name, so it is refused (403). A server listening
//            on every address (0.0.0.0, ::) with no --allowed-host accepts any Host.
//   Origin   a browser's cross-origin request that changes state (any method but GET, HEAD and
//            OPTIONS) or opens a WebSocket is refused (403) unless its origin is allowed by
//            --cors-origin. Same-origin requests (Origin's host = Host) and clients that send no
//            Origin (curl, SDKs) are not affected. CORS headers are sent only with --cors-origin.
// Loopback clients are told apart for --enable-local-admin (auth.ts).
import type { FastifyRequest } from 'fastify';
import { isIP } from 'node:net';
import { LoraserveError } from '../runtime/errors.ts';

export interface GuardConfig {
  host: string;              // the listen address
  allowedHosts: string[];    // extra Host names (lower case)
  corsOrigins: string[];     // allowed cross-origin origins, or ['*']
}

const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '::1', '[::1]']);
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

export function isLoopbackAddress(addr: string | undefined): boolean {
  if (!addr) return false;
  const a = addr.startsWith('::ffff:') ? addr.slice(7) : addr;
  return a === '::1' || (isIP(a) === 4 && a.startsWith('127.'));
}

// The host name of a Host header or an origin's authority, without the port, lower case.
export function hostName(authority: string): string {
  const h = authority.trim().toLowerCase();
  if (h.startsWith('[')) return h.slice(0, h.indexOf(']') + 1);
  const colon = h.lastIndexOf(':');
  return colon === -1 ? h : h.slice(0, colon);
}

export function hostAllowed(hostHeader: string | undefined, cfg: GuardConfig): boolean {
  if (!hostHeader) return false;
  const name = hostName(hostHeader);
  if (cfg.allowedHosts.includes(name)) return true;
  const listen = cfg.host.toLowerCase();
  if (isLoopbackAddress(listen) || listen === 'localhost') return LOOPBACK_NAMES.has(name) || (isIP(name) === 4 && name.startsWith('127.'));
  // on every address: any name, or the names allowed, loopback ones and IP literals (a kubelet's
  // probe or a scraper dials the pod's IP; rebinding needs a name, so an IP Host is never one)
  if (listen === '0.0.0.0' || listen === '::' || listen === '[::]') return cfg.allowedHosts.length === 0 || LOOPBACK_NAMES.has(name) || isIP(name.replace(/^\[(.*)\]$/, '$1')) !== 0;
  return name === listen || name === `[${listen}]` || LOOPBACK_NAMES.has(name);
}

export function originAllowed(origin: string, hostHeader: string | undefined, cfg: GuardConfig): boolean {
  if (cfg.corsOrigins.includes('*') || cfg.corsOrigins.includes(origin)) return true;
  let url: URL;
  try { url = new URL(origin); } catch { return false; }
  return hostHeader !== undefined && url.host.toLowerCase() === hostHeader.trim().toLowerCase();
}

export function guardRequest(req: FastifyRequest, cfg: GuardConfig): void {
  const host = req.headers.host;
  if (!hostAllowed(host, cfg)) {
    throw new LoraserveError('forbidden', `the Host header ${JSON.stringify(host ?? '')} does not name this server; add it with --allowed-host if it should`, { param: 'host' });
  }
  const origin = req.headers.origin;
  const upgrade = (req.headers.upgrade ?? '').toLowerCase() === 'websocket';
  if (origin !== undefined && (upgrade || !SAFE_METHODS.has(req.method)) && !originAllowed(origin, host, cfg)) {
    throw new LoraserveError('forbidden', `cross-origin ${upgrade ? 'WebSocket' : req.method} from ${JSON.stringify(origin)} is not allowed; allow the origin with --cors-origin`, { param: 'origin' });
  }
}
