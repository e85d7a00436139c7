// The one way tests get a NATS cluster: real nats-servers on free ports, each with a fresh store
// dir, formed and with a JetStream meta leader before the test starts.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { type NatsCluster, startNatsCluster } from '../../runtime/index.js';
import { announceNatsServer, TEST_SYNC_INTERVAL, tempDir } from './nats.js';

export interface TestNatsCluster {
  readonly cluster: NatsCluster;
  /** Client URLs of every member. */
  readonly servers: readonly string[];
  readonly dir: string;
  /** A client connection to every member that reconnects forever; closed by `stop`. */
  connect(opts?: { name?: string }): Promise<NatsConnection>;
  stop(): Promise<void>;
}

export async function startTestNatsCluster(
  opts: { size?: number; partitions?: number } = {},
): Promise<TestNatsCluster> {
  announceNatsServer();
  const dir = tempDir('partita-cluster-');
  const cluster = await startNatsCluster({
    size: opts.size ?? 3,
    dataDir: join(dir, 'nats'),
    partitions: opts.partitions ?? 8,
    syncInterval: TEST_SYNC_INTERVAL,
  });
  const conns: NatsConnection[] = [];
  return {
    cluster,
    servers: cluster.servers,
    dir,
    async connect(o = {}) {
      const nc = await connect({
        servers: [...cluster.servers],
        name: o.name,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 100,
      });
      conns.push(nc);
      return nc;
    },
    async stop() {
      for (const nc of conns) await nc.close().catch(() => undefined);
      await cluster.stop('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
