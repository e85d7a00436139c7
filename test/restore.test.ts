// A restore resumes a moved partition at its previous owner's acknowledged position, except where a
// former owner, paused past its lease, stored a state after the next owner took over: that state
// may have replaced a newer one, so the partition resumes just after it.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { it } from 'node:test';
import {
  AckPolicy,
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
} from '@nats-io/jetstream';
import { type KV, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { newestEpochConsumers } from '../runtime/consumer-names.js';
import {
  createLogger,
  ensureTopology,
  inStream,
  partitionOf,
  STATE_BUCKET,
  stateKvKey,
} from '../runtime/index.js';
import { acknowledgedSeq, restorePartitions } from '../runtime/restore.js';
import { openStateStore, type StateStore } from '../runtime/state-store.js';
import { check } from './helpers/check.js';
import { startTestNats } from './helpers/nats.js';
import { startTestNatsCluster } from './helpers/nats-cluster.js';

const PARTITIONS = 2;

/** The first `n` keys of `partition`, found by the partitioner. */
function keysOf(partition: number, n: number): string[] {
  const keys: string[] = [];
  for (let i = 0; keys.length < n; i++)
    if (partitionOf(`z${i}`, PARTITIONS) === partition) keys.push(`z${i}`);
  return keys;
}

/** An `account` state change as a node publishes it, for partition 0 (with its key count, if given). */
function stateJson(key: string, seq: number, epoch: number, partitionKeys?: number): string {
  return JSON.stringify({
    actor: 'account',
    key,
    state: { count: seq },
    seq,
    epoch,
    partition: 0,
    updatedAt: new Date().toISOString(),
    ...(partitionKeys !== undefined ? { partitionKeys } : {}),
  });
}

/** A partition-0 consumer named as an owner names it, starting at `start` (nothing acked yet). */
function consumerAt(jsm: JetStreamManager, name: string, start: number, replicas?: number) {
  return jsm.consumers.add(inStream(0), {
    durable_name: name,
    ack_policy: AckPolicy.All,
    deliver_policy: DeliverPolicy.StartSequence,
    opt_start_seq: start,
    ...(replicas ? { num_replicas: replicas } : {}),
  });
}

/** 30 events in partition 0's stream, acknowledged up to 25 by the previous owner (epoch 6). */
async function previousOwnerAt25(nc: NatsConnection, key: string): Promise<void> {
  const js = jetstream(nc);
  for (let i = 0; i < 30; i++) await js.publish(`events.tx.${key}`, JSON.stringify({ id: i, amount: 1 }));
  await consumerAt(await jetstreamManager(nc), 'partita-p0-6', 26);
}

/** A NATS server, a restorer's LMDB store and the clients a test needs; everything closed after. */
async function withRestorer(
  fn: (t: {
    nc: NatsConnection;
    js: JetStreamClient;
    jsm: JetStreamManager;
    kv: KV;
    store: StateStore;
  }) => Promise<void>,
): Promise<void> {
  const nats = await startTestNats({ partitions: PARTITIONS });
  const store = openStateStore(join(nats.dir, 'restorer'));
  try {
    const nc = await nats.connect();
    await fn({
      nc,
      js: jetstream(nc),
      jsm: await jetstreamManager(nc),
      kv: await new Kvm(nc).open(STATE_BUCKET),
      store,
    });
  } finally {
    await store.close();
    await nats.stop();
  }
}

it('resumes after a state a paused former owner stored once the next owner had taken over', async () => {
  await withRestorer(async ({ nc, js, jsm, kv, store }) => {
    const [k, older, mine] = keysOf(0, 3) as [string, string, string];
    const put = (key: string, seq: number, epoch: number) =>
      kv.put(stateKvKey('account', key), stateJson(key, seq, epoch));
    await previousOwnerAt25(nc, k);
    assert.equal(await acknowledgedSeq(jsm, 0), 25);

    // Epoch 5 owned it first; epoch 6 took over when the bucket was at `stateRev`.
    await put(older, 12, 5);
    await put(k, 10, 5);
    const stateRev = (await jsm.streams.info(`KV_${STATE_BUCKET}`)).state.last_seq;
    await put(k, 20, 6);
    await put(mine, 24, 6);
    // Epoch 5, paused past its lease, wakes up mid-publish and replaces k's newer state.
    await put(k, 15, 5);

    const log = createLogger({ test: 'restore' });
    const plain = await restorePartitions(js, jsm, store, [{ partition: 0, epoch: 7 }], PARTITIONS, log);
    assert.equal(plain.zombieStates, 0, 'without the owner record nothing is told apart');
    assert.equal(store.checkpoint(0)?.seq, 25);

    const fenced = await restorePartitions(
      js,
      jsm,
      store,
      [{ partition: 0, epoch: 7, previous: { epoch: 6, stateRev } }],
      PARTITIONS,
      log,
    );
    assert.equal(fenced.zombieStates, 1, 'only the state stored under epoch 5 after the takeover');
    assert.equal(store.checkpoint(0)?.seq, 15, 'resumes just after the zombie state');
    assert.equal(store.states.get(['account', k])?.q, 15);
    assert.equal(store.states.get(['account', older])?.q, 12);
    assert.equal(store.states.get(['account', mine])?.q, 24);
  });
});

it("takes the newest epoch's acknowledged position, not a leftover consumer's of an older one", async () => {
  await withRestorer(async ({ nc, jsm }) => {
    await previousOwnerAt25(nc, keysOf(0, 1)[0]!);
    // Epoch 4 got to 29 and its consumer outlived it (its delete failed); epoch 6 went back to its
    // own checkpoint at 25 and, resuming once, made a second consumer from 20.
    await consumerAt(jsm, 'partita-p0-4', 30);
    await consumerAt(jsm, 'partita-p0-6-r1', 21);
    assert.equal(await acknowledgedSeq(jsm, 0), 25);
    // Without a consumer of epoch 6, epoch 4's is the newest.
    await jsm.consumers.delete(inStream(0), 'partita-p0-6');
    await jsm.consumers.delete(inStream(0), 'partita-p0-6-r1');
    assert.equal(await acknowledgedSeq(jsm, 0), 29);
  });
});

it('finds a key that a former owner rewrites while the restore is reading the bucket', async () => {
  await withRestorer(async ({ nc, js, jsm, kv, store }) => {
    const [k, early] = keysOf(0, 2) as [string, string];
    // `early` first, 10,000 other keys, then k last: the scan reaches k's entry only at its end.
    await kv.put(stateKvKey('account', early), stateJson(early, 3, 6));
    const others = keysOf(1, 10_000);
    for (let i = 0; i < others.length; i += 500)
      await Promise.all(
        others.slice(i, i + 500).map((o) => kv.put(stateKvKey('account', o), stateJson(o, 1, 5))),
      );
    await previousOwnerAt25(nc, k);
    const stateRev = (await jsm.streams.info(`KV_${STATE_BUCKET}`)).state.last_seq;
    await kv.put(stateKvKey('account', k), stateJson(k, 20, 6));
    // At 2,500 entries/s the scan pauses after 5,000 until 2 s have passed; k is rewritten (by a
    // former owner, epoch 5, waking up) during that pause, so its old entry goes before the scan
    // gets to it.
    const restoring = restorePartitions(
      js,
      jsm,
      store,
      [{ partition: 0, epoch: 7, previous: { epoch: 6, stateRev } }],
      PARTITIONS,
      createLogger({ test: 'restore' }),
      2500,
    );
    await new Promise((r) => setTimeout(r, 1000));
    // Other partitions' owners keep writing meanwhile, so k's new entry is not the first past the
    // bucket's last sequence at the start.
    for (const o of others.slice(0, 5)) await kv.put(stateKvKey('account', o), stateJson(o, 2, 5));
    await kv.put(stateKvKey('account', k), stateJson(k, 12, 5));
    // And `early`, read already, is stored again: read twice, but one key.
    await kv.put(stateKvKey('account', early), stateJson(early, 22, 6));
    const { zombieStates, restored } = await restoring;
    assert.equal(store.states.get(['account', early])?.q, 22, 'the newer entry of a key read twice');
    assert.equal(restored, 2, 'a key read twice is counted once');
    assert.equal(store.checkpoint(0)?.n, 2);
    assert.equal(store.states.get(['account', k])?.q, 12, 'the rewritten key is restored');
    assert.equal(zombieStates, 1, 'and taken for what it is: a former owner’s state');
    assert.equal(store.checkpoint(0)?.seq, 12, 'resuming after it, not at 25');
  });
});

it('tells when the bucket lost keys of a partition, even its last message, and rebuilds it', async () => {
  await withRestorer(async ({ nc, js, jsm, kv, store }) => {
    const [a, b, c] = keysOf(0, 3) as [string, string, string];
    await previousOwnerAt25(nc, a);
    // The previous owner created a, c and b (3 keys), and last stored c again, at 24.
    await kv.put(stateKvKey('account', a), stateJson(a, 10, 6, 1));
    await kv.put(stateKvKey('account', c), stateJson(c, 15, 6, 2));
    await kv.put(stateKvKey('account', b), stateJson(b, 20, 6, 3));
    const last = await kv.put(stateKvKey('account', c), stateJson(c, 24, 6, 3));
    const log = createLogger({ test: 'restore' });
    const whole = await restorePartitions(js, jsm, store, [{ partition: 0, epoch: 7 }], PARTITIONS, log);
    assert.deepEqual(whole.rebuilds, []);
    assert.deepEqual(store.checkpoint(0), { ...store.checkpoint(0), seq: 25, n: 3 });

    // A replica loses c's entry, the bucket's last message: no marker, just gone. The scan must not
    // wait for that sequence, and must notice that the partition had 3 keys.
    await jsm.streams.deleteMessage(`KV_${STATE_BUCKET}`, last, false);
    const lost = await restorePartitions(js, jsm, store, [{ partition: 0, epoch: 8 }], PARTITIONS, log);
    assert.deepEqual(lost.rebuilds, [{ partition: 0, missing: 1, to: 25 }]);
    assert.equal(store.checkpoint(0)?.seq, 0, 'refolded from the stream start');
    assert.equal(store.states.get(['account', a]), undefined, 'from nothing');
    assert.equal(store.meta.get(['rb', 0]), 25, 'publishing nothing up to what was acknowledged');

    // Its rebuilding owner dies at 12: the next one carries the rebuild on, whatever the count.
    await kv.put(stateKvKey('account', c), stateJson(c, 24, 6, 3));
    const again = await restorePartitions(
      js,
      jsm,
      store,
      [{ partition: 0, epoch: 9, rebuildTo: 40 }],
      PARTITIONS,
      log,
    );
    assert.deepEqual(again.rebuilds, [{ partition: 0, missing: 0, to: 40 }]);
    assert.equal(store.meta.get(['rb', 0]), 40);
  });
});

it("fails rather than take an older epoch's position when the newest epoch's consumer does not answer", async () => {
  const c = await startTestNatsCluster({ size: 3, partitions: PARTITIONS });
  try {
    const nc = await c.connect();
    const { jsm } = await ensureTopology(nc, { partitions: PARTITIONS, replicas: 3 });
    await previousOwnerAt25(nc, keysOf(0, 1)[0]!);
    // Epoch 4 got to 29 and its consumer outlived it; epoch 6's consumer (back at its checkpoint,
    // 25) sits on one server only, which then dies: it has no leader to answer for it.
    await consumerAt(jsm, 'partita-p0-4', 30);
    await jsm.consumers.delete(inStream(0), 'partita-p0-6');
    const leader = (await jsm.streams.info(inStream(0))).cluster?.leader;
    let single = await consumerAt(jsm, 'partita-p0-6', 26, 1);
    // Off the stream's leader, so the stream (and the older consumer) still answer.
    for (let i = 0; single.cluster?.leader === leader && i < 30; i++) {
      await jsm.consumers.delete(inStream(0), 'partita-p0-6');
      single = await consumerAt(jsm, 'partita-p0-6', 26, 1);
    }
    assert.notEqual(single.cluster?.leader, leader);
    assert.equal(await acknowledgedSeq(jsm, 0), 25);
    await c.cluster.members.find((m) => m.name === single.cluster?.leader)!.kill();
    // A listing leaves epoch 6's consumer out; the position must not fall back to epoch 4's 29.
    const answer = await check(
      async () => {
        try {
          return { seq: await acknowledgedSeq(jsm, 0) };
        } catch (err) {
          // Until the meta layer answers again (it may have led from the dead server), ask again.
          return /consumer epoch 6/.test((err as Error).message) && { error: (err as Error).message };
        }
      },
      60_000,
      "an answer about epoch 6's consumer",
    );
    assert.deepEqual(Object.keys(answer), ['error'], `no position taken: ${JSON.stringify(answer)}`);
  } finally {
    await c.stop();
  }
});

it("picks a partition's consumers of the newest epoch by their names, numerically", () => {
  const names = [
    'partita-p0-9-r2',
    'partita-p0-10-r1',
    'partita-p1-12',
    'partita-p0-10',
    'other',
    'partita-p0-9',
  ];
  assert.deepEqual(newestEpochConsumers(names, 0), {
    epoch: 10,
    names: ['partita-p0-10', 'partita-p0-10-r1'],
  });
  assert.deepEqual(newestEpochConsumers(['other'], 0), { epoch: -1, names: [] });
});
