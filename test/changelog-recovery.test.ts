// Recovery by changelog (`recovery: 'changelog'`) with real nodes: a node that takes partitions
// restores them from their changelogs, not from the state bucket, and resumes where the changelog
// ends; an owner whose changelog another has claimed stops appending, and takes the partition
// again from the changelog with nothing lost or doubled.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { claimChangelog } from '../runtime/changelog.js';
import { type PartitaNode, STATE_BUCKET, startNode } from '../runtime/index.js';
import { check, testSeed } from './helpers/check.js';
import { startTestNats } from './helpers/nats.js';
import { Workload } from './helpers/workload.js';

const PARTITIONS = 4;
const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));

async function total(node: PartitaNode, name: string): Promise<number> {
  const metric = node.metrics.registry.getSingleMetric(name);
  assert.ok(metric, `${name} is registered`);
  return (await metric.get()).values.reduce((a, v) => a + v.value, 0);
}

it('restores moved partitions from their changelogs, not the bucket, and reads no event twice', async () => {
  const seed = testSeed();
  console.log(`changelog recovery seed: ${seed}`);
  const nats = await startTestNats({ partitions: PARTITIONS });
  const nc = await nats.connect();
  const work = new Workload(nc, seed, 40);
  try {
    const a = await startNode({
      natsUrl: nats.url,
      actorsDir: FIXTURE_ACTORS,
      dataDir: join(nats.dir, 'a'),
      threads: 1,
      recovery: 'changelog',
    });
    // The push path: every committed change of a key on partita.state.*, in commit order.
    const seqs = new Map<string, number[]>();
    const sub = nc.subscribe('partita.state.account.>', {
      callback: (_e, m) => {
        const v = m.json<{ key: string; seq: number }>();
        seqs.set(v.key, [...(seqs.get(v.key) ?? []), v.seq]);
      },
    });
    await nc.flush();
    try {
      await work.publish(1500);
      await work.verify(PARTITIONS);
      const jsm = await jetstreamManager(nc);
      assert.equal(
        (await jsm.streams.info(`KV_${STATE_BUCKET}`)).config.republish,
        undefined,
        'the bucket, an export coalesced per key, does not republish',
      );
      const lastSeqs = new Map<string, number>();
      for (const [key, list] of seqs) {
        assert.deepEqual(
          list,
          [...list].sort((x, y) => x - y),
          `changes of ${key} in commit order`,
        );
        assert.equal(new Set(list).size, list.length, `each change of ${key} once`);
        lastSeqs.set(key, list[list.length - 1]!);
      }
      for (const key of work.expected.keys()) {
        const entry = (await (await new Kvm(nc).open(STATE_BUCKET)).get(`account.${key}`))!.json<{
          seq: number;
        }>();
        assert.equal(lastSeqs.get(key), entry.seq, `the push path ends at the committed state of ${key}`);
      }
    } finally {
      sub.unsubscribe();
      await a.stop();
    }
    // The bucket now says something else of a hot key: a restore from it would carry it on.
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    const entry = (await kv.get('account.k0'))!.json<Record<string, unknown>>();
    await kv.put('account.k0', JSON.stringify({ ...entry, state: { count: 1_000_000, total: 0, chain: 0 } }));

    const b = await startNode({
      natsUrl: nats.url,
      actorsDir: FIXTURE_ACTORS,
      dataDir: join(nats.dir, 'b'),
      threads: 1,
      recovery: 'changelog',
    });
    try {
      await work.publish(1500);
      // k0 takes about 6% of the events: the second half gave it new ones, so its exported state
      // is the fold of all of them only if its restored state was.
      await work.verify(PARTITIONS);
      assert.equal(await total(b, 'partita_events_in_total'), 1500, 'the new node read only the new events');
    } finally {
      await b.stop();
    }
    // A node of the other mode cannot see what these committed, and says so.
    await assert.rejects(
      startNode({
        natsUrl: nats.url,
        actorsDir: FIXTURE_ACTORS,
        dataDir: join(nats.dir, 'c'),
        threads: 1,
        recovery: 'bucket',
      }),
      (err: Error & { code?: string }) =>
        err.code === 'PARTITA_ERR_RECOVERY_MODE' && /--recovery changelog/.test(err.message),
    );
  } finally {
    await nats.stop();
  }
});

it('stops appending once another owner claims the changelog, and takes the partition again from it', async () => {
  const seed = testSeed();
  console.log(`changelog fencing seed: ${seed}`);
  const nats = await startTestNats({ partitions: 1 });
  const nc = await nats.connect();
  const work = new Workload(nc, seed, 30);
  try {
    const node = await startNode({
      natsUrl: nats.url,
      actorsDir: FIXTURE_ACTORS,
      dataDir: join(nats.dir, 'a'),
      threads: 1,
      recovery: 'changelog',
    });
    try {
      await work.publish(500);
      await check(
        async () => (await total(node, 'partita_events_in_total')) >= 500,
        20_000,
        'first events read',
      );
      // Another owner's claim, as a node that took the lease while this one was paused would make.
      const js = jetstream(nc);
      await claimChangelog(nc, js, await jetstreamManager(nc), 0, 1_000_000, 'intruder');
      await work.publish(1000);
      await check(
        async () => (await total(node, 'partita_fenced_batches_total')) > 0,
        20_000,
        'a batch refused by the changelog',
      );
      // The node takes the partition again (a new lease, a new claim past the intruder's) and
      // every event is applied exactly once.
      await work.verify(1);
    } finally {
      await node.stop();
    }
  } finally {
    await nats.stop();
  }
});

it('refuses to recover from changelogs a deployment run with recovery from the bucket', async () => {
  const nats = await startTestNats({ partitions: 2 });
  const nc = await nats.connect();
  try {
    const opts = { natsUrl: nats.url, actorsDir: FIXTURE_ACTORS, threads: 1 };
    const a = await startNode({ ...opts, dataDir: join(nats.dir, 'a'), recovery: 'bucket' });
    try {
      nc.publish('events.tx.k1', JSON.stringify({ id: 1, amount: 1 }));
      await check(async () => (await total(a, 'partita_events_in_total')) === 1, 20_000, 'the event read');
    } finally {
      await a.stop();
    }
    await assert.rejects(
      startNode({ ...opts, dataDir: join(nats.dir, 'b'), recovery: 'changelog' }),
      (err: Error & { code?: string }) =>
        err.code === 'PARTITA_ERR_RECOVERY_MODE' && /--recovery bucket/.test(err.message),
    );
  } finally {
    await nats.stop();
  }
});
