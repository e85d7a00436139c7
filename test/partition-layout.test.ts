// Partitioning needs no server configuration: the ingest stream's subject transform assigns each
// event its partition, and each partition's stream sources its share. A deployment whose server
// still has the `partition()` mapping keeps working, and one from before the ingest stream (its
// PARTITA_UNROUTED work queue on `events.>`) is migrated by the next node that starts.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  DiscardPolicy,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
} from '@nats-io/jetstream';
import { type KV, Kvm } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  DLQ_HEADERS,
  INGEST_STREAM,
  inStream,
  META_BUCKET,
  partitionOf,
  STATE_BUCKET,
  startNatsServer,
  startNode,
  UNROUTED_STREAM,
} from '../runtime/index.js';
import { chainStep } from './fixtures/actors/account.js';
import { check } from './helpers/check.js';
import { DeadLetters } from './helpers/dead-letters.js';
import { startTestNats, TEST_SYNC_INTERVAL, tempDir } from './helpers/nats.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));
const PARTITIONS = 4;

/** Whether the server rewrites `events.*.*` itself: a core subscriber then never sees the subject. */
async function serverMaps(nc: NatsConnection): Promise<boolean> {
  const sub = nc.subscribe('events.mapping-check.*', { max: 1 });
  const seen = (async () => {
    for await (const _ of sub) return true;
    return false;
  })();
  await nc.flush();
  nc.publish('events.mapping-check.k', '');
  await nc.flush();
  // A round trip after the publish: the server delivered it, if at all, before answering.
  await nc.request('$JS.API.INFO', '', { timeout: 5000 }).catch(() => undefined);
  sub.unsubscribe();
  return !(await seen);
}

/** Every key's account state, and every partition stream's events with their partition. */
async function verify(
  jsm: JetStreamManager,
  kv: KV,
  sent: Map<string, number[]>,
): Promise<{ wrongPartition: string[]; stored: number }> {
  for (const [key, ids] of sent) {
    await check(
      async () => {
        const v = (await kv.get(`account.${key}`))?.json<{
          state: { count: number; chain: number };
          partition: number;
        }>();
        if (!v) return false;
        assert.equal(v.partition, partitionOf(key, PARTITIONS), `${key}'s partition`);
        return v.state.count === ids.length && v.state.chain === ids.reduce(chainStep, 0);
      },
      20_000,
      `${key}: ${ids.length} events applied once, in order`,
    );
  }
  const wrongPartition: string[] = [];
  let stored = 0;
  for (let p = 0; p < PARTITIONS; p++) {
    const { state } = await jsm.streams.info(inStream(p));
    for (let seq = state.first_seq; seq <= state.last_seq; seq++) {
      const m = await jsm.streams.getMessage(inStream(p), { seq }).catch(() => null);
      if (!m) continue;
      const t = m.subject.split('.');
      if (t[3] !== 'tx') continue;
      stored++;
      if (partitionOf(t[4]!, PARTITIONS) !== p) wrongPartition.push(m.subject);
    }
  }
  return { wrongPartition, stored };
}

function publishAll(
  nc: NatsConnection,
  sent: Map<string, number[]>,
  from: number,
  n: number,
): Promise<unknown> {
  const js = jetstream(nc);
  const acks: Promise<unknown>[] = [];
  for (let id = from; id < from + n; id++) {
    const key = `k${id % 23}`;
    if (!sent.has(key)) sent.set(key, []);
    sent.get(key)!.push(id);
    acks.push(js.publish(`events.tx.${key}`, JSON.stringify({ id, amount: 1 }), { msgID: `e${id}` }));
  }
  return Promise.all(acks);
}

it('runs on a server without any mapping: every event once, in its partition', async () => {
  const nats = await startTestNats({ partitions: PARTITIONS });
  const nc = await nats.connect();
  const node = await startNode({
    natsUrl: nats.url,
    actorsDir: FIXTURE_ACTORS,
    dataDir: join(nats.dir, 'n'),
    id: 'n',
    threads: 1,
  });
  try {
    assert.equal(await serverMaps(nc), false, 'the server has no partition mapping');
    const jsm = await jetstreamManager(nc);
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    const sent = new Map<string, number[]>();
    await publishAll(nc, sent, 0, 400);
    // Published again (a producer's retry): the ingest stream drops them as duplicates.
    await publishAll(nc, new Map(), 0, 50);
    const { wrongPartition, stored } = await verify(jsm, kv, sent);
    assert.deepEqual(wrongPartition, []);
    assert.equal(stored, 400);
    // Only the mapping check's own event (a type no actor handles) was dead-lettered.
    const dlq = await new DeadLetters(jsm).all();
    assert.deepEqual(
      dlq.map((m) => m.header?.get(DLQ_HEADERS.subject)),
      ['events.mapping-check.k'],
    );
  } finally {
    await node.stop();
    await nats.stop();
  }
});

it('migrates a deployment from before the ingest stream, with the mapping and then without', async () => {
  const dir = tempDir();
  const dataDir = join(dir, 'nats');
  let server = await startNatsServer({
    port: 0,
    dataDir,
    partitions: PARTITIONS,
    mapping: true,
    syncInterval: TEST_SYNC_INTERVAL,
  });
  let nc = await connect({ servers: server.url });
  const sent = new Map<string, number[]>();
  let node: Awaited<ReturnType<typeof startNode>> | undefined;
  try {
    // The topology as earlier releases created it: partition streams fed by the server's mapping
    // alone, PARTITA_UNROUTED taking the rest of `events.>`, and the recorded partition count.
    let jsm = await jetstreamManager(nc);
    for (let p = 0; p < PARTITIONS; p++) {
      await jsm.streams.add({
        name: inStream(p),
        subjects: [`partita.in.${p}.>`],
        storage: StorageType.File,
        retention: RetentionPolicy.Limits,
        discard: DiscardPolicy.Old,
        duplicate_window: 120_000_000_000,
      });
    }
    await jsm.streams.add({
      name: UNROUTED_STREAM,
      subjects: ['events.>'],
      storage: StorageType.File,
      retention: RetentionPolicy.Workqueue,
      duplicate_window: 120_000_000_000,
    });
    await (await new Kvm(nc).create(META_BUCKET, { history: 1 })).create('partitions', String(PARTITIONS));
    // Before the upgrade: events in their partitions, one malformed event waiting in the work queue.
    await publishAll(nc, sent, 0, 100);
    await jetstream(nc).publish('events.tx.k1.extra', JSON.stringify({ id: -1, amount: 1 }));
    assert.equal((await jsm.streams.info(UNROUTED_STREAM)).state.messages, 1);

    const start = (url: string) =>
      startNode({ natsUrl: url, actorsDir: FIXTURE_ACTORS, dataDir: join(dir, 'n'), id: 'n', threads: 1 });
    node = await start(server.url);
    await publishAll(nc, sent, 100, 100);
    await jetstream(nc).publish('events.tx', JSON.stringify({ id: -2, amount: 1 }));
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    let r = await verify(jsm, kv, sent);
    assert.deepEqual(r.wrongPartition, []);
    assert.equal(r.stored, 200, 'the mapping feeds the partition streams; the ingest stream adds nothing');
    // The retired work queue is drained into dead letters and deleted; the new malformed event
    // comes from the ingest stream. Each dead-lettered once.
    const dead = new DeadLetters(jsm);
    await check(async () => (await dead.all()).length === 2, 20_000, 'two dead letters');
    const by = new Map(
      (await dead.all()).map((m) => [m.header?.get(DLQ_HEADERS.subject), m.header?.get(DLQ_HEADERS.stream)]),
    );
    assert.equal(by.get('events.tx.k1.extra'), UNROUTED_STREAM);
    assert.equal(by.get('events.tx'), INGEST_STREAM);
    await check(
      async () => !(await jsm.streams.info(UNROUTED_STREAM).catch(() => null)),
      20_000,
      'retired stream deleted',
    );

    // Then the mapping is removed from the server's configuration: the ingest stream partitions.
    await node.stop();
    node = undefined;
    await nc.close();
    await server.stop();
    server = await startNatsServer({
      port: 0,
      dataDir,
      partitions: PARTITIONS,
      syncInterval: TEST_SYNC_INTERVAL,
    });
    nc = await connect({ servers: server.url });
    jsm = await jetstreamManager(nc);
    assert.equal(await serverMaps(nc), false);
    node = await start(server.url);
    await publishAll(nc, sent, 200, 100);
    r = await verify(jsm, await new Kvm(nc).open(STATE_BUCKET), sent);
    assert.deepEqual(r.wrongPartition, []);
    assert.equal(r.stored, 300);
    const after = await new DeadLetters(jsm).all();
    assert.deepEqual(
      after.slice(2).map((m) => m.header?.get(DLQ_HEADERS.subject)),
      ['events.mapping-check.k'],
      'nothing dead-lettered but the mapping check',
    );
  } finally {
    await node?.stop();
    await nc.close();
    await server.stop('SIGKILL');
  }
});
