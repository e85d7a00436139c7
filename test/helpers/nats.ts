// The one way tests get a NATS server: a real nats-server on a free port with a fresh store dir.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { ensureTopology, type NatsServerHandle, startNatsServer } from '../../runtime/index.js';

export interface TestNats {
  readonly url: string;
  readonly server: NatsServerHandle;
  readonly dir: string;
  /** A client connection, closed by `stop`. */
  connect(): Promise<NatsConnection>;
  stop(): Promise<void>;
}

export function tempDir(prefix = 'partita-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export async function startTestNats(
  opts: { partitions?: number; leaseTtlMs?: number } = {},
): Promise<TestNats> {
  const dir = tempDir();
  const partitions = opts.partitions ?? 8;
  const server = await startNatsServer({ port: 0, dataDir: join(dir, 'nats'), partitions });
  const conns: NatsConnection[] = [];
  // Record the partition count the server maps with, as `partita nats` does.
  const admin = await connect({ servers: server.url });
  await ensureTopology(admin, { partitions, leaseTtlMs: opts.leaseTtlMs });
  await admin.close();
  return {
    url: server.url,
    server,
    dir,
    async connect() {
      const nc = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
      conns.push(nc);
      return nc;
    },
    async stop() {
      for (const nc of conns) await nc.close().catch(() => undefined);
      await server.stop('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
