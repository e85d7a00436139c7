// The gateway's public face.
import { connect } from '@nats-io/transport-node';
import type { FastifyInstance } from 'fastify';
import { defaultNatsUrl, ensureStateBucket, PartitaError } from '../runtime/index.js';
import type { TokenSpec } from './auth.js';
import type { RateLimitOptions } from './rate-limit.js';
import { buildGateway, type GatewayDeps } from './server.js';

export {
  loadTokensFile,
  type Principal,
  parseTokenList,
  requireScope,
  type Scope,
  type TokenSpec,
} from './auth.js';
export type { FeastColumn, FeastRequest, FeastResponse, FeastStatus } from './features.js';
export { errorBody, sendError } from './http-error.js';
export type { FrameType, PushFilter, PushHub, PushHubOptions } from './push-hub.js';
export type { RateLimitOptions } from './rate-limit.js';
export { buildGateway, type GatewayDeps } from './server.js';

export interface GatewayOptions {
  /** @default $PARTITA_NATS or nats://127.0.0.1:4222 */
  natsUrl?: string;
  /** @default 8080; 0 picks a free port */
  port?: number;
  /** @default '127.0.0.1'; any other address needs tokens */
  host?: string;
  /** Bearer tokens; without any, the gateway is open and listens on loopback only. */
  tokens?: readonly TokenSpec[];
  /** @default { perSecond: 100 } per token (or client address) */
  rateLimit?: RateLimitOptions;
  featureMaxAgeSeconds?: number;
  push?: GatewayDeps['push'];
}

export interface RunningGateway {
  readonly url: string;
  readonly app: FastifyInstance;
  stop(): Promise<void>;
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

export async function startGateway(opts: GatewayOptions = {}): Promise<RunningGateway> {
  const host = opts.host ?? '127.0.0.1';
  const tokens = opts.tokens ?? [];
  if (tokens.length === 0 && !LOOPBACK.test(host)) {
    throw new PartitaError(
      'PARTITA_ERR_GATEWAY_CONFIG',
      `without tokens the gateway is open, so it listens on loopback only, not on ${host}; configure --tokens FILE or PARTITA_TOKENS`,
    );
  }
  const nc = await connect({
    servers: (opts.natsUrl ?? defaultNatsUrl()).split(','),
    name: 'partita-gateway',
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
  });
  // The gateway may start before any node: make sure the bucket it reads exists.
  const state = await ensureStateBucket(nc);
  const app: FastifyInstance = buildGateway({
    state,
    nc,
    connected: () => !nc.isClosed() && (app.pushHub?.natsUp ?? true),
    tokens,
    rateLimit: opts.rateLimit,
    featureMaxAgeSeconds: opts.featureMaxAgeSeconds,
    push: opts.push,
  });
  let url: string;
  try {
    url = await app.listen({ port: opts.port ?? 8080, host });
  } catch (err) {
    await app.close().catch(() => undefined);
    await nc.close();
    throw err;
  }
  return {
    url,
    app,
    async stop() {
      await app.close();
      await nc.drain().catch(() => undefined);
    },
  };
}
