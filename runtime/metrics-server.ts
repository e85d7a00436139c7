// A node's small HTTP face: /metrics (Prometheus text), /healthz and /readyz.
import Fastify from 'fastify';
import type { Registry } from 'prom-client';

export interface MetricsServer {
  readonly url: string;
  close(): Promise<void>;
}

export async function startMetricsServer(opts: {
  port: number;
  host?: string;
  registry: Registry;
  /** Undefined when ready, else why not (the 503's `reason`). */
  notReady: () => string | undefined;
  beforeScrape?: () => void;
}): Promise<MetricsServer> {
  const app = Fastify({ logger: false });
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    const reason = opts.notReady();
    if (reason === undefined) return { status: 'ready' };
    return reply.code(503).send({ status: 'not ready', reason });
  });
  app.get('/metrics', async (_req, reply) => {
    opts.beforeScrape?.();
    reply.header('content-type', opts.registry.contentType);
    return opts.registry.metrics();
  });
  const address = await app.listen({ port: opts.port, host: opts.host ?? '127.0.0.1' });
  return { url: address, close: () => app.close() };
}
