// The coordinator with real lease and node buckets: a partition that fences itself while it is
// still being started is stopped, released and taken again, not left stopped under a live lease.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { Kvm } from '@nats-io/kv';
import { Coordinator } from '../runtime/coordinator.js';
import { createLogger, ensureTopology } from '../runtime/index.js';
import { LEASES_BUCKET, NODES_BUCKET } from '../runtime/subjects.js';
import { check } from './helpers/check.js';
import { startTestNats } from './helpers/nats.js';

it('takes again a partition that fenced itself during its start', async () => {
  const nats = await startTestNats({ partitions: 2 });
  const nc = await nats.connect();
  const topology = await ensureTopology(nc, { partitions: 2 });
  const kvm = new Kvm(nc);
  const starts: number[] = [];
  const stops: [number, boolean][] = [];
  let fencedOnce = false;
  const coordinator: Coordinator = new Coordinator({
    nodes: await kvm.open(NODES_BUCKET),
    leases: await kvm.open(LEASES_BUCKET),
    holder: { node: 'c1', instance: 'i1' },
    partitions: 2,
    leaseTtlMs: topology.leaseTtlMs,
    log: createLogger({ test: 'coordinator' }),
    async start(leases) {
      for (const l of leases) {
        starts.push(l.partition);
        // The runner of partition 0 finds its lease not provably held on its first batch, while
        // the round that starts it has not finished.
        if (l.partition === 0 && !fencedOnce) {
          fencedOnce = true;
          coordinator.fenced(0);
        }
      }
    },
    async stop(p, graceful) {
      stops.push([p, graceful]);
    },
  });
  try {
    await coordinator.start();
    await check(() => starts.filter((p) => p === 0).length >= 2, 15_000, 'partition 0 taken again');
    assert.deepEqual(
      stops.filter(([p]) => p === 0),
      [[0, false]],
      'stopped once, as fenced, before it was taken again',
    );
    assert.deepEqual(coordinator.owned, [0, 1]);
  } finally {
    await coordinator.stop();
    await nc.close();
    await nats.stop();
  }
});
