// The one way tests get a NATS server: a real nats-server on a free port with a fresh store dir.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  ensureTopology,
  type NatsServerHandle,
  natsServerBinary,
  natsServerVersion,
  startNatsServer,
} from '../../runtime/index.js';

export interface TestNats {
  readonly url: string;
  readonly server: NatsServerHandle;
  readonly dir: string;
  /** A client connection, closed by `stop`. */
  connect(): Promise<NatsConnection>;
  stop(): Promise<void>;
}

/**
 * The tests' JetStream `sync_interval`: the server's default, not the `always` that `partita nats`
 * configures. The tests kill processes, never the machine, and the page cache survives a kill -9 of
 * nats-server, so the fsync policy changes nothing they check; `always` makes every stored write
 * several times slower here (the quick backlog bench: 3.1k against 21k events/s), and the kill -9
 * test's core (unacknowledged) publishes then went missing on 2.15.1 (139 of 20,000).
 */
export const TEST_SYNC_INTERVAL = '2m';

let announced = false;

/**
 * Prints the version of the nats-server the tests run, once per test process, so that a run's log
 * names the server it was green (or red) on. Called by the helpers that start servers.
 */
export function announceNatsServer(): void {
  if (announced) return;
  announced = true;
  const bin = natsServerBinary();
  try {
    console.log(`nats-server ${natsServerVersion(bin).text} (${bin})`);
  } catch (err) {
    console.log(`nats-server: ${(err as Error).message}`);
  }
}

export function tempDir(prefix = 'partita-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export async function startTestNats(
  /** `mapping`: the legacy server-side partition mapping, as deployments before the ingest stream. */
  opts: { partitions?: number; leaseTtlMs?: number; mapping?: boolean } = {},
): Promise<TestNats> {
  announceNatsServer();
  const dir = tempDir();
  const partitions = opts.partitions ?? 8;
  const server = await startNatsServer({
    port: 0,
    dataDir: join(dir, 'nats'),
    partitions,
    mapping: opts.mapping,
    syncInterval: TEST_SYNC_INTERVAL,
  });
  const conns: NatsConnection[] = [];
  // Record the partition count, as `partita nats` does.
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
