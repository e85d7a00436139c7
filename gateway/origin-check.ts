// Who may talk to the gateway from a browser. Every request's `Host` must name the gateway (its
// listen address, a loopback name, or an allowed host): a DNS-rebinding page reaches a loopback
// gateway under its own host name, and is refused here. Without tokens, push subscriptions (SSE,
// WebSocket) also check `Origin`: browsers let any page open a WebSocket (CORS does not apply), so
// only the gateway's own pages and allowed origins may. With tokens, the token is what protects.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { sendError } from './http-error.js';

export interface OriginOptions {
  /**
   * Host names (the Host header without its port) the gateway answers; `null` answers any, for a
   * gateway behind a proxy or Service whose name it cannot know. @default loopback names
   */
  allowedHosts?: readonly string[] | null;
  /** Origins (`scheme://host[:port]`) whose pages may open push subscriptions without tokens. */
  allowedOrigins?: readonly string[];
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** A route web pages of other origins must not open without a token (push). */
    sameOrigin?: boolean;
  }
}

export const LOOPBACK_NAMES: readonly string[] = ['localhost', '127.0.0.1', '::1'];

/** The host name of a Host header or address: without the port, without IPv6 brackets, lower case. */
export function hostName(host: string): string {
  const h = host.trim().toLowerCase();
  if (h.startsWith('[')) return h.slice(1, h.indexOf(']'));
  const colon = h.indexOf(':');
  // No colon, or a bare IPv6 address (a listen address, not a Host header).
  return colon < 0 || h.indexOf(':', colon + 1) >= 0 ? h : h.slice(0, colon);
}

function originOf(value: string): string | null {
  try {
    return new URL(value).origin;
  } catch {
    return null;
  }
}

/**
 * Installs the checks on the root instance (every route); `open` is a gateway without tokens.
 * Call it before the auth hook, so a foreign Host is refused before anything else.
 */
export function installOriginCheck(app: FastifyInstance, opts: OriginOptions, open: boolean): void {
  const hosts =
    opts.allowedHosts === null ? null : new Set((opts.allowedHosts ?? LOOPBACK_NAMES).map(hostName));
  const origins = new Set((opts.allowedOrigins ?? []).map((o) => originOf(o) ?? o));
  app.addHook('onRequest', async (req, reply) => {
    if (hosts) {
      const host = req.headers.host ?? '';
      if (!hosts.has(hostName(host))) {
        return sendError(
          reply,
          'PARTITA_ERR_HOST_NOT_ALLOWED',
          `"${host.slice(0, 100)}" is not a name of this gateway; add it with --allowed-hosts`,
        );
      }
    }
    if (open && req.routeOptions.config?.sameOrigin && !sameOrigin(req, origins)) {
      return sendError(
        reply,
        'PARTITA_ERR_ORIGIN_NOT_ALLOWED',
        `pages of ${String(req.headers.origin).slice(0, 100)} may not subscribe; add it with --allowed-origins, or configure tokens`,
      );
    }
  });
}

/** No Origin (not a browser), the gateway's own origin, or an allowed one. */
function sameOrigin(req: FastifyRequest, allowed: ReadonlySet<string>): boolean {
  const origin = req.headers.origin;
  if (origin === undefined) return true;
  const o = originOf(origin);
  if (o === null) return false; // "null": sandboxed frames, file: pages
  if (allowed.has(o)) return true;
  const u = new URL(o);
  const host = (req.headers.host ?? '').toLowerCase();
  const port = host.startsWith('[') ? host.slice(host.indexOf(']') + 2) : host.split(':')[1];
  return hostName(u.host) === hostName(host) && (u.port || '80') === (port || '80');
}
