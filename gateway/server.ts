// The gateway as an app: `buildGateway` wires plugins onto fastify; only `startGateway` listens,
// so tests use `inject()`. The gateway never writes state: it reads states from their partitions'
// owners (the state KV bucket when no owner answers) and subscribes to `partita.state.>`.
//
// One plugin per concept: auth (auth.ts, rate-limit.ts), state reads (state.ts), Feast features
// (features.ts), push (push.ts over push-hub.ts), the dashboard (dashboard.ts), the OpenAPI document
// (openapi.ts). A new route file is one `app.register(...)` line below; its routes get auth, rate
// limiting, validation errors and an OpenAPI entry by declaring `schema` and `config: { scope }`.

import websocket from '@fastify/websocket';
import { jetstream } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import Fastify, { type FastifyInstance } from 'fastify';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { readStatus } from '../runtime/status.js';
import { type AuthFailureLimit, installAuth, type TokenSpec, TokenTable } from './auth.js';
import { dashboardRoutes } from './dashboard.js';
import { featureRoutes } from './features.js';
import { governanceRoutes } from './governance.js';
import { clientErrorHandler, frameworkErrors, installErrorHandler } from './http-error.js';
import { installKeyLimit } from './key-limit.js';
import { installRequestMetrics } from './metrics.js';
import { installOpenApi } from './openapi.js';
import { installOriginCheck, type OriginOptions } from './origin-check.js';
import { pushRoutes } from './push.js';
import { PushHub, type PushHubOptions } from './push-hub.js';
import { installRateLimit, type RateLimitOptions } from './rate-limit.js';
import { stateRoutes } from './state.js';
import { StateReader } from './state-reader.js';

export interface GatewayDeps {
  state: KV;
  /** True while the NATS connection is up. */
  connected: () => boolean;
  /**
   * Push and `/v1/status` need the connection (without it they answer 503), and so do the
   * governance routes (schemas, lineage; without it they are not served).
   */
  nc?: NatsConnection;
  registry?: Registry;
  /** Bearer tokens; none means every route is open (and `startGateway` listens on loopback only). */
  tokens?: readonly TokenSpec[];
  /** Requests per window per token holder or client address. @default off */
  rateLimit?: RateLimitOptions;
  /** Failed authentications allowed per client address. @default 10 a second */
  authFailures?: AuthFailureLimit;
  /** The Host names served and the origins allowed to subscribe without tokens. */
  origins?: OriginOptions;
  /** Entities × features one feature request may ask for. @default 100000 */
  maxFeatureCells?: number;
  /** Feature values committed longer ago than this are served as OUTSIDE_MAX_AGE. */
  featureMaxAgeSeconds?: number;
  /**
   * How long the partitions' owners have to answer a state or feature read before its keys are
   * read from the state bucket instead, ms. @default 500
   */
  ownerReadTimeoutMs?: number;
  push?: PushHubOptions & { wsHighWaterBytes?: number };
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The push fan-out, when the gateway has a NATS connection. */
    pushHub: PushHub | null;
  }
}

export function buildGateway(deps: GatewayDeps): FastifyInstance {
  const app = Fastify({
    logger: false,
    bodyLimit: 4 * 1024 * 1024,
    // A key of MAX_KEY_BYTES percent-encoded is three times as long; longer keys still reach the
    // route, to be refused as PARTITA_ERR_KEY_TOO_LONG (Node bounds the whole URL at 16 KB).
    routerOptions: { maxParamLength: 8 * 1024 },
    frameworkErrors,
    clientErrorHandler,
    // No array coercion (a string where a list belongs is a 400, not a list of one), and an unknown
    // property is an error, not silently dropped.
    ajv: { customOptions: { allowUnionTypes: true, coerceTypes: true, removeAdditional: false } },
  });
  const registry = deps.registry ?? new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'partita_gateway_' });
  installRequestMetrics(app, registry);
  app.addHook('onResponse', async (req) => {
    // A WebSocket upgrade refused over HTTP (401, 403, 429) before @fastify/websocket's own hooks
    // saw it: nothing else ends its socket, and a lingering one would hold up close().
    if (req.headers.upgrade && !req.ws) req.raw.socket.destroy();
  });

  // Order matters: hooks on the root instance apply to every plugin registered after them.
  installErrorHandler(app);
  installOpenApi(app, { title: 'Partita gateway', version: '0.1.0' });
  const tokens = new TokenTable(deps.tokens ?? []);
  installOriginCheck(app, deps.origins ?? {}, tokens.size === 0);
  installRateLimit(app, deps.rateLimit);
  installAuth(app, tokens, deps.authFailures);
  installKeyLimit(app);

  const nc = deps.nc;
  const status = nc ? () => readStatus(nc) : undefined;
  const reader = new StateReader({
    state: deps.state,
    nc,
    registry,
    ownerTimeoutMs: deps.ownerReadTimeoutMs,
  });
  const hub = nc
    ? new PushHub(nc, jetstream(nc), deps.state, { readStatus: status, registry, reader, ...deps.push })
    : null;
  app.decorate('pushHub', hub);
  if (hub) {
    app.addHook('onReady', async () => hub.start());
    app.addHook('preClose', async () => hub.stop());
  }

  app.register(websocket, { options: { maxPayload: 64 * 1024 } });
  app.register(async (core) => {
    core.get(
      '/healthz',
      { config: { scope: 'public' }, schema: { summary: 'Liveness', tags: ['meta'] } },
      async () => ({ status: 'ok' }),
    );
    core.get(
      '/readyz',
      { schema: { summary: 'Ready while NATS is connected', tags: ['meta'] } },
      async (_req, reply) => {
        if (deps.connected()) return { status: 'ready' };
        return reply.code(503).send({ status: 'not ready', reason: 'no NATS connection' });
      },
    );
    core.get(
      '/metrics',
      { schema: { summary: 'Prometheus metrics', tags: ['meta'] } },
      async (_req, reply) => {
        reply.header('content-type', registry.contentType);
        return registry.metrics();
      },
    );
  });
  app.register(stateRoutes, { reader, readStatus: status });
  app.register(featureRoutes, {
    reader,
    connected: deps.connected,
    maxAgeSeconds: deps.featureMaxAgeSeconds,
    maxCells: deps.maxFeatureCells,
  });
  app.register(pushRoutes, { hub, wsHighWaterBytes: deps.push?.wsHighWaterBytes });
  app.register(dashboardRoutes);
  if (nc) app.register(governanceRoutes, { nc, state: deps.state });
  return app;
}
