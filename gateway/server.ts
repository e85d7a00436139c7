// The gateway as an app: `buildGateway` wires routes onto fastify; only `startGateway` listens,
// so tests use `inject()`. The gateway never writes state: it reads the state KV bucket.
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import Fastify, { type FastifyInstance } from 'fastify';
import { Counter, collectDefaultMetrics, Histogram, Registry } from 'prom-client';
import { stateKvKey } from '../runtime/index.js';
import { governanceRoutes } from './governance.js';

export interface GatewayDeps {
  state: KV;
  /** True while the NATS connection is up. */
  connected: () => boolean;
  registry?: Registry;
  /** For the governance routes (schemas, lineage); without it they are not served. */
  nc?: NatsConnection;
}

export function buildGateway(deps: GatewayDeps): FastifyInstance {
  const app = Fastify({ logger: false });
  const registry = deps.registry ?? new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'partita_gateway_' });
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
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unknown';
    requests.inc({ route, status: String(reply.statusCode) });
    duration.observe({ route }, reply.elapsedTime / 1000);
  });

  if (deps.nc) app.register(governanceRoutes, { nc: deps.nc, state: deps.state });
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    if (deps.connected()) return { status: 'ready' };
    return reply.code(503).send({ status: 'not ready', reason: 'no NATS connection' });
  });
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', registry.contentType);
    return registry.metrics();
  });
  app.get<{ Params: { actor: string; key: string } }>('/v1/actors/:actor/:key', async (req, reply) => {
    const { actor, key } = req.params;
    const entry = await deps.state.get(stateKvKey(actor, key));
    if (entry?.operation !== 'PUT') {
      return reply
        .code(404)
        .send({ error: 'PARTITA_ERR_NOT_FOUND', message: `no state for ${actor}/${key}` });
    }
    reply.header('content-type', 'application/json; charset=utf-8');
    return entry.string();
  });
  return app;
}
