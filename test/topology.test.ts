// A node refuses to run against a server whose legacy partition mapping disagrees with it, rather
// than apply events on the wrong partition; a matching mapping, or none, is accepted.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { it } from 'node:test';
import { connect } from '@nats-io/transport-node';
import {
  ensureTopology,
  INGEST_STREAM,
  inStream,
  PartitaError,
  startNatsServer,
  startNode,
} from '../runtime/index.js';
import { verifyPartitionMapping } from '../runtime/topology.js';
import { tempDir } from './helpers/nats.js';

it('detects a server that maps events with another partition count, and stores no probe', async () => {
  const dir = tempDir();
  // The server maps to 4 partitions; the deployment records 8.
  const server = await startNatsServer({ port: 0, dataDir: join(dir, 'nats'), partitions: 4, mapping: true });
  const nc = await connect({ servers: server.url });
  try {
    await assert.rejects(
      startNode({ natsUrl: server.url, dataDir: join(dir, 'node'), partitions: 8, threads: 1 }),
      (err: unknown) =>
        err instanceof PartitaError &&
        err.code === 'PARTITA_ERR_PARTITIONS_CONFLICT' &&
        /another partition count; remove its `mappings`/.test(err.message),
    );
    const topo = await ensureTopology(nc);
    assert.equal(topo.partitions, 8);
    let stored = 0;
    for (let p = 0; p < 8; p++) stored += (await topo.jsm.streams.info(inStream(p))).state.messages;
    stored += (await topo.jsm.streams.info(INGEST_STREAM)).state.messages;
    assert.equal(stored, 0, 'mapping probes are never stored');
  } finally {
    await nc.close();
    await server.stop('SIGKILL');
  }
});

for (const mapping of [true, false]) {
  it(`accepts a server ${mapping ? 'whose mapping matches' : 'without a mapping'}`, async () => {
    const dir = tempDir();
    const server = await startNatsServer({ port: 0, dataDir: join(dir, 'nats'), partitions: 6, mapping });
    const nc = await connect({ servers: server.url });
    try {
      const topo = await ensureTopology(nc, { partitions: 6 });
      await verifyPartitionMapping(nc, 6);
      let stored = 0;
      for (let p = 0; p < 6; p++) stored += (await topo.jsm.streams.info(inStream(p))).state.messages;
      stored += (await topo.jsm.streams.info(INGEST_STREAM)).state.messages;
      assert.equal(stored, 0);
    } finally {
      await nc.close();
      await server.stop('SIGKILL');
    }
  });
}
