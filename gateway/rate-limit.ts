// The request limit: @fastify/rate-limit, registered once for the whole gateway (auth.ts builds its
// failed-authentication limiter on the same registration with `createRateLimit`). Off unless
// configured: a gateway on loopback serves its own dashboards and feature clients, and a limit that
// guesses their volume refuses ordinary work. When on, each token holder (or, without tokens, each
// client address) gets `max` requests per window, fixed windows as the plugin counts them, with its
// headers (`x-ratelimit-limit`, `-remaining`, `-reset`; `retry-after` on a 429). A WebSocket or SSE
// subscription counts once, when it opens.
import rateLimit from '@fastify/rate-limit';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { PartitaError } from '../runtime/index.js';

export interface RateLimitOptions {
  /** Requests per window per token holder (or client address without tokens); 0 turns it off. @default 0 */
  max?: number;
  /** @default 1000 */
  windowMs?: number;
}

/** Who a request counts against: the token holder, else the client address. */
export function rateLimitKey(req: FastifyRequest): string {
  return req.principal && req.principal.name !== 'anonymous' ? `t:${req.principal.name}` : `ip:${req.ip}`;
}

/** Registers the plugin; call it before `installAuth` and before any route. */
export function installRateLimit(app: FastifyInstance, opts: RateLimitOptions = {}): void {
  const max = Math.max(0, Math.trunc(opts.max ?? 0));
  const windowMs = opts.windowMs ?? 1000;
  app.register(rateLimit, {
    // Without a limit the plugin is still registered: auth's failure limiter is built on it.
    global: max > 0,
    max,
    timeWindow: windowMs,
    // The plugin's hook runs per route, after the root's auth hook, so the principal is known.
    keyGenerator: rateLimitKey,
    allowList: (req) => req.routeOptions.config?.scope === 'public',
    // Thrown by the plugin, so the error handler answers in the one Partita error shape.
    errorResponseBuilder: (_req, ctx) =>
      new PartitaError(
        'PARTITA_ERR_RATE_LIMITED',
        `more than ${ctx.max} requests in ${ctx.after}; retry later`,
      ),
  });
}
