import { connect } from '@nats-io/transport-node';
import type { FastifyInstance } from 'fastify';
import { defaultNatsUrl, ensureStateBucket } from '../runtime/index.js';
import { buildGateway } from './server.js';

export { buildGateway, type GatewayDeps } from './server.js';

export interface GatewayOptions {
  /** @default $PARTITA_NATS or nats://127.0.0.1:4222 */
  natsUrl?: string;
  /** @default 8080; 0 picks a free port */
  port?: number;
  /** @default '127.0.0.1' */
  host?: string;
}

export interface RunningGateway {
  readonly url: string;
  readonly app: FastifyInstance;
  stop(): Promise<void>;
}

export async function startGateway(opts: GatewayOptions = {}): Promise<RunningGateway> {
  const nc = await connect({
    servers: (opts.natsUrl ?? defaultNatsUrl()).split(','),
    name: 'partita-gateway',
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
  });
  // The gateway may start before any node: make sure the bucket it reads exists.
  const state = await ensureStateBucket(nc);
  const app = buildGateway({ state, connected: () => !nc.isClosed(), nc });
  const url = await app.listen({ port: opts.port ?? 8080, host: opts.host ?? '127.0.0.1' });
  return {
    url,
    app,
    async stop() {
      await app.close();
      await nc.drain().catch(() => undefined);
    },
  };
}
