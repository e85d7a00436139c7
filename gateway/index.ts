// The gateway's public face.
import { connect } from '@nats-io/transport-node';
import type { FastifyInstance } from 'fastify';
import { defaultNatsUrl, ensureStateBucket, PartitaError } from '../runtime/index.js';
import type { AuthFailureLimit, TokenSpec } from './auth.js';
import { hostName, LOOPBACK_NAMES } from './origin-check.js';
import type { RateLimitOptions } from './rate-limit.js';
import { buildGateway, type GatewayDeps } from './server.js';

export {
  type AuthFailureLimit,
  loadTokensFile,
  type Principal,
  parseTokenList,
  requireScope,
  type Scope,
  type TokenSpec,
} from './auth.js';
export type { FeastColumn, FeastRequest, FeastResponse, FeastStatus } from './features.js';
export { DEFAULT_MAX_FEATURE_CELLS } from './features.js';
export { errorBody, sendError } from './http-error.js';
export type { OriginOptions } from './origin-check.js';
export type { FrameType, PushFilter, PushHub, PushHubOptions } from './push-hub.js';
export type { RateLimitOptions } from './rate-limit.js';
export { buildGateway, type GatewayDeps } from './server.js';
export { STATE_SOURCE_HEADER, type StateSource } from './state-reader.js';

export interface GatewayOptions {
  /** @default $PARTITA_NATS or nats://127.0.0.1:4222 */
  natsUrl?: string;
  /** @default 8080; 0 picks a free port */
  port?: number;
  /** @default '127.0.0.1'; any other address needs tokens */
  host?: string;
  /** Bearer tokens; without any, the gateway is open and listens on loopback only. */
  tokens?: readonly TokenSpec[];
  /** Requests per window per token holder (or client address without tokens). @default off */
  rateLimit?: RateLimitOptions;
  featureMaxAgeSeconds?: number;
  /** Entities × features one feature request may ask for. @default 100000 */
  maxFeatureCells?: number;
  /** How long partition owners have to answer a read before the state bucket is read instead, ms. @default 500 */
  ownerReadTimeoutMs?: number;
  /** Failed authentications allowed per client address. @default 10 a second */
  authFailures?: AuthFailureLimit;
  /**
   * More Host names to answer besides the listen address and loopback names; `*` answers any.
   * A gateway on a wildcard address (0.0.0.0, ::) answers any unless this is given.
   */
  allowedHosts?: readonly string[];
  /** Origins whose pages may open push subscriptions without tokens, besides the gateway's own. */
  allowedOrigins?: readonly string[];
  push?: GatewayDeps['push'];
}

export interface RunningGateway {
  readonly url: string;
  readonly app: FastifyInstance;
  stop(): Promise<void>;
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;
const WILDCARD = /^(0\.0\.0\.0|::|\[::\])$/;

/** The Host names a gateway listening on `host` answers; null answers any. */
export function allowedHostsFor(host: string, extra: readonly string[] = []): string[] | null {
  if (extra.includes('*')) return null;
  // Behind a Service or proxy, a gateway on every interface cannot know its names: tokens protect it.
  if (WILDCARD.test(host) && extra.length === 0) return null;
  return [...LOOPBACK_NAMES, hostName(host), ...extra];
}

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
    maxFeatureCells: opts.maxFeatureCells,
    ownerReadTimeoutMs: opts.ownerReadTimeoutMs,
    authFailures: opts.authFailures,
    origins: { allowedHosts: allowedHostsFor(host, opts.allowedHosts), allowedOrigins: opts.allowedOrigins },
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
