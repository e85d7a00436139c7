// Outputs count as published only once their streams stored them, and a partition whose delivery
// breaks off consumes again from its checkpoint, losing and doubling nothing.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { AckedPublisher } from '../runtime/acked-publisher.js';
import { inStream, partitionOf, STATE_BUCKET, startNode } from '../runtime/index.js';
import { serverFeatures } from '../runtime/server-features.js';
import { consumerPrefix } from '../runtime/subjects.js';
import { check, testSeed } from './helpers/check.js';
import { startTestNats } from './helpers/nats.js';
import { Workload } from './helpers/workload.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));

it('counts as stored only what a stream acknowledged', async () => {
  const nats = await startTestNats({ partitions: 1 });
  try {
    const nc = await nats.connect();
    const publisher = new AckedPublisher(nc);
    const stored = await publisher.publish(
      [
        { subject: `$KV.${STATE_BUCKET}.t.a`, data: '{"n":1}' },
        { subject: 'no.stream.takes.this', data: 'x' },
        { subject: `$KV.${STATE_BUCKET}.t.b`, data: '{"n":2}' },
      ],
      2000,
    );
    assert.deepEqual(stored.failed, [1], 'the message no stream took is the one not stored');
    assert.ok(stored.error, 'and the reason is given');
    assert.ok(stored.seqs[0]! > 0 && stored.seqs[2]! > stored.seqs[0]!, 'stored ones carry their sequences');
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    assert.equal((await kv.get('t.b'))?.string(), '{"n":2}');
    publisher.close();
  } finally {
    await nats.stop();
  }
});

it('consumes again from the checkpoint when its consumer goes away, losing and doubling nothing', async () => {
  const nats = await startTestNats({ partitions: 2 });
  const node = await startNode({
    natsUrl: nats.url,
    actorsDir: FIXTURE_ACTORS,
    dataDir: join(nats.dir, 'n'),
    id: 'n',
    threads: 1,
  });
  try {
    const nc = await nats.connect();
    const jsm = await jetstreamManager(nc);
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    const key = 'resume-key';
    const p = partitionOf(key, 2);
    const count = async () =>
      (await kv.get(`account.${key}`))?.json<{ state: { count: number } }>().state.count ?? 0;
    const resumes = async () => {
      const m = await node.metrics.registry.getSingleMetric('partita_delivery_resumes_total')?.get();
      return m?.values.reduce((a, v) => a + v.value, 0) ?? 0;
    };
    let id = 0;
    const publish = async (n: number) => {
      for (let i = 0; i < n; i++) nc.publish(`events.tx.${key}`, JSON.stringify({ id: ++id, amount: 1 }));
      await nc.flush();
    };
    await publish(100);
    await check(async () => (await count()) === 100, 10_000, 'the first 100 applied');
    // Delivery breaks off: the partition's consumer is deleted under it (as when a server drops it).
    for await (const ci of jsm.consumers.list(inStream(p))) {
      if (ci.name.startsWith(consumerPrefix(p))) await jsm.consumers.delete(inStream(p), ci.name);
    }
    await publish(100);
    await check(async () => (await resumes()) >= 1, 15_000, 'a resume counted');
    await check(async () => (await count()) >= 200, 15_000, 'the next 100 applied');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(await count(), 200, 'nothing doubled');
    const consumers: string[] = [];
    for await (const ci of jsm.consumers.list(inStream(p))) consumers.push(ci.name);
    assert.equal(consumers.length, 1, `one consumer for the partition: ${consumers.join(', ')}`);
  } finally {
    await node.stop();
    await nats.stop();
  }
});

it('after a delivery gap, resets its own consumer on 2.14+ rather than make another', async (t) => {
  const nats = await startTestNats({ partitions: 2 });
  const nc = await nats.connect();
  if (!serverFeatures(nc).consumerReset) {
    // 2.10 to 2.13 make a fresh consumer, as the test above shows.
    t.skip(`nats-server ${nc.info?.version} has no consumer reset`);
    await nats.stop();
    return;
  }
  const node = await startNode({
    natsUrl: nats.url,
    actorsDir: FIXTURE_ACTORS,
    dataDir: join(nats.dir, 'n'),
    id: 'n',
    threads: 1,
  });
  try {
    const jsm = await jetstreamManager(nc);
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    const key = 'reset-key';
    const p = partitionOf(key, 2);
    const count = async () =>
      (await kv.get(`account.${key}`))?.json<{ state: { count: number } }>().state.count ?? 0;
    const resumes = async () => {
      const m = await node.metrics.registry.getSingleMetric('partita_delivery_resumes_total')?.get();
      return m?.values.reduce((a, v) => a + v.value, 0) ?? 0;
    };
    const consumers = async () => {
      const names: string[] = [];
      for await (const ci of jsm.consumers.list(inStream(p))) names.push(ci.name);
      return names;
    };
    let id = 0;
    const publish = async (n: number) => {
      for (let i = 0; i < n; i++) nc.publish(`events.tx.${key}`, JSON.stringify({ id: ++id, amount: 1 }));
      await nc.flush();
    };
    await publish(100);
    await check(async () => (await count()) === 100, 10_000, 'the first 100 applied');
    const before = await consumers();
    assert.equal(before.length, 1);
    // A hole in delivery, as when a pull's events were lost with a server: the consumer skips five.
    const last = (await jsm.streams.info(inStream(p))).state.last_seq;
    await jsm.consumers.reset(inStream(p), before[0]!, last + 6);
    await publish(100);
    await check(async () => (await resumes()) >= 1, 15_000, 'a resume counted');
    await check(async () => (await count()) >= 200, 15_000, 'every event applied, the skipped ones too');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(await count(), 200, 'nothing doubled');
    assert.deepEqual(await consumers(), before, 'the same consumer, reset, and no other');
    const info = await jsm.consumers.info(inStream(p), before[0]!);
    assert.equal(info.ack_floor.stream_seq, (await jsm.streams.info(inStream(p))).state.last_seq);
  } finally {
    await node.stop();
    await nats.stop();
  }
});

it('publishes a batch the worker committed when its answer is lost, instead of committing it again empty', async () => {
  const nats = await startTestNats({ partitions: 2 });
  const node = await startNode({
    natsUrl: nats.url,
    actorsDir: FIXTURE_ACTORS,
    dataDir: join(nats.dir, 'n'),
    id: 'n',
    threads: 1,
    // Small batches, so that many tasks go to the worker and every 4th answer is lost.
    maxBatch: 20,
    faults: ['lose-worker-answers'],
  });
  try {
    const nc = await nats.connect();
    const seed = testSeed();
    console.log(`lost worker answers seed=${seed}`);
    const work = new Workload(nc, seed, 300);
    for (let i = 0; i < 10; i++) await work.publish(200);
    // Every key's last state is in the bucket, those whose last batch's answer was lost included.
    await work.verify(2, 20_000);
    const lost = await node.metrics.registry.getSingleMetric('partita_batch_failures_total')?.get();
    assert.ok((lost?.values.reduce((a, v) => a + v.value, 0) ?? 0) > 0, 'answers were lost');
  } finally {
    await node.stop();
    await nats.stop();
  }
});
