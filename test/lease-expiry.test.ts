// Expired leases and heartbeats: on nats-server 2.11+ each leaves a delete marker that the
// coordinator's watches see at once, also on buckets an older Partita created; on 2.10 they vanish
// silently, and the periodic rounds notice.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { it } from 'node:test';
import { StorageType } from '@nats-io/jetstream';
import { type KvEntry, Kvm, KvWatchInclude } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
import { ensureTopology, startNatsServer } from '../runtime/index.js';
import { kvKeys } from '../runtime/kv-keys.js';
import { PartitionLease } from '../runtime/partition-lease.js';
import { serverFeatures } from '../runtime/server-features.js';
import { LEASES_BUCKET, NODES_BUCKET } from '../runtime/subjects.js';
import { check } from './helpers/check.js';
import { announceNatsServer, TEST_SYNC_INTERVAL, tempDir } from './helpers/nats.js';

it('an expired lease or heartbeat leaves a marker the watch sees (2.11+), on a bucket created before', async () => {
  announceNatsServer();
  const dir = tempDir();
  const server = await startNatsServer({
    port: 0,
    dataDir: join(dir, 'nats'),
    partitions: 2,
    syncInterval: TEST_SYNC_INTERVAL,
  });
  const nc = await connect({ servers: server.url });
  try {
    // The buckets as an older Partita (or a 2.10 server) made them: a bucket-wide TTL, no markers.
    const kvm = new Kvm(nc);
    await kvm.create(NODES_BUCKET, { history: 1, ttl: 1000, storage: StorageType.Memory });
    await kvm.create(LEASES_BUCKET, { history: 1, ttl: 1000, storage: StorageType.File });
    const topo = await ensureTopology(nc, { partitions: 2 });
    const newer = serverFeatures(nc).expiryMarkers;
    console.log(`nats-server ${nc.info?.version}: expiry markers ${newer ? 'expected' : 'not expected'}`);
    assert.equal(topo.leaseTtlMs, 1000, 'the deployment keeps its lease TTL');
    assert.equal(topo.expiryMarkers, newer);
    for (const b of [NODES_BUCKET, LEASES_BUCKET]) {
      const cfg = (await topo.jsm.streams.info(`KV_${b}`)).config;
      assert.equal(cfg.max_age, 1000 * 1_000_000, `${b} keeps the lease TTL as its max age`);
      assert.equal((cfg.subject_delete_marker_ttl ?? 0) > 0, newer, `${b} leaves markers iff 2.11+`);
    }

    const seen: KvEntry[] = [];
    const watch = await topo.leases.watch({ include: KvWatchInclude.UpdatesOnly });
    void (async () => {
      for await (const e of watch) seen.push(e);
    })();
    const first = new PartitionLease(topo.leases, 0, { node: 'a', instance: '1' }, topo.leaseTtlMs);
    assert.ok(await first.acquire());
    await topo.nodes.put('a', '{}');
    assert.deepEqual(await kvKeys(topo.nodes), ['a']);

    // Neither is renewed: both expire.
    const lastOfNode = () =>
      topo.jsm.streams.getMessage(`KV_${NODES_BUCKET}`, { last_by_subj: `$KV.${NODES_BUCKET}.a` });
    if (newer) {
      await check(
        async () => (await lastOfNode())?.header?.get('Nats-Marker-Reason') === 'MaxAge',
        10_000,
        "the node's expiry marker",
      );
      assert.deepEqual(await kvKeys(topo.nodes), [], 'the listing skips a node whose last entry is a marker');
      const marker = await check(
        () => seen.find((e) => e.key === 'p0' && e.operation === 'PURGE'),
        10_000,
        "the lease's expiry in the watch",
      );
      assert.ok(marker.revision > first.epoch, 'the marker is a message after the lease');
    } else {
      await check(async () => (await kvKeys(topo.nodes)).length === 0, 10_000, 'the node to drop out');
      await check(async () => (await topo.leases.get('p0')) === null, 10_000, 'the lease to expire');
      assert.deepEqual(
        seen.map((e) => e.operation),
        ['PUT'],
        '2.10 expires entries without a marker: the watch saw only the lease',
      );
    }
    // The next owner takes the lease over the marker (or the empty key).
    const next = new PartitionLease(topo.leases, 0, { node: 'b', instance: '1' }, topo.leaseTtlMs);
    await check(() => next.acquire(), 10_000, 'the next owner to take the lease');
    assert.ok(next.epoch > first.epoch);
    assert.equal(await first.renew(), false, 'the first owner cannot renew');
    watch.stop();
  } finally {
    await nc.close();
    await server.stop('SIGKILL');
  }
});
