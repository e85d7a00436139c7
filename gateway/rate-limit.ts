// A token bucket per token holder (or per client address without tokens): `perSecond` requests a
// second on average, bursts of `burst`. A WebSocket or SSE subscription counts once, when it opens.
import type { FastifyInstance } from 'fastify';
import { sendError } from './http-error.js';

export interface RateLimitOptions {
  /** Requests per second per client; 0 turns the limit off. @default 100 */
  perSecond?: number;
  /** @default 2 × perSecond */
  burst?: number;
}

interface Bucket {
  tokens: number;
  at: number;
}

/** Buckets idle this long are full again and can be forgotten. */
const SWEEP_MS = 60_000;

export function installRateLimit(app: FastifyInstance, opts: RateLimitOptions = {}): void {
  const perSecond = opts.perSecond ?? 100;
  if (perSecond <= 0) return;
  const burst = opts.burst ?? perSecond * 2;
  const buckets = new Map<string, Bucket>();
  const sweep = setInterval(() => {
    const old = Date.now() - SWEEP_MS;
    for (const [k, b] of buckets) if (b.at < old) buckets.delete(k);
  }, SWEEP_MS);
  sweep.unref();
  app.addHook('onClose', async () => clearInterval(sweep));
  // Runs after the auth hook (hooks run in the order added), so the principal is known.
  app.addHook('onRequest', async (req, reply) => {
    if (req.routeOptions.config?.scope === 'public') return;
    const who =
      req.principal && req.principal.name !== 'anonymous' ? `t:${req.principal.name}` : `ip:${req.ip}`;
    const now = Date.now();
    const b = buckets.get(who) ?? { tokens: burst, at: now };
    b.tokens = Math.min(burst, b.tokens + ((now - b.at) / 1000) * perSecond);
    b.at = now;
    buckets.set(who, b);
    if (b.tokens < 1) {
      const wait = Math.ceil((1 - b.tokens) / perSecond);
      reply.header('retry-after', String(Math.max(1, wait)));
      return sendError(reply, 'PARTITA_ERR_RATE_LIMITED', `more than ${perSecond} requests/s; retry later`);
    }
    b.tokens -= 1;
  });
}
