// The gateway's request metrics. Every route has its series from the start, at 0 (the statuses its
// schema declares, 200 if none, and `unknown`/404 for requests no route matches), so `rate()` and
// `absent()` over a fresh gateway see 0 rather than nothing. Push metrics live in push-hub.ts.
import type { FastifyInstance, RouteOptions } from 'fastify';
import { Counter, Histogram, type Registry } from 'prom-client';

/** The route label of a request no route matched (fastify's 404). */
const UNMATCHED = 'unknown';

/** The statuses a route declares in `schema.response` (`2xx` and `default` are not statuses). */
function declaredStatuses(r: RouteOptions): string[] {
  const codes = Object.keys((r.schema?.response as Record<string, unknown> | undefined) ?? {});
  const statuses = codes.filter((c) => /^\d{3}$/.test(c));
  return statuses.length > 0 ? statuses : ['200'];
}

/**
 * Counts and times every request by route (its pattern, not its URL) and status. Install before
 * any route is registered: it sees routes as they are added.
 */
export function installRequestMetrics(app: FastifyInstance, registry: Registry): void {
  const requests = new Counter({
    name: 'partita_gateway_requests_total',
    help: 'HTTP requests served by the gateway',
    labelNames: ['route', 'status'],
    registers: [registry],
  });
  const duration = new Histogram({
    name: 'partita_gateway_request_seconds',
    help: 'HTTP request duration',
    labelNames: ['route'],
    buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1],
    registers: [registry],
  });
  const zero = (route: string, statuses: string[]) => {
    for (const status of statuses) requests.inc({ route, status }, 0);
    duration.zero({ route });
  };
  zero(UNMATCHED, ['404']);
  app.addHook('onRoute', (r) => {
    // fastify adds a HEAD route beside each GET: same pattern, same series.
    if (r.method !== 'HEAD') zero(r.url, declaredStatuses(r));
  });
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? UNMATCHED;
    requests.inc({ route, status: String(reply.statusCode) });
    duration.observe({ route }, reply.elapsedTime / 1000);
  });
}
