// Retention must never drop events a checkpoint still needs without anyone noticing: a partition
// whose stream lost events its state never saw stops (fail closed), with an error and a metric.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { inStream, partitionOf, STATE_BUCKET, startNode } from '../runtime/index.js';
import { check } from './helpers/check.js';
import { startTestNats } from './helpers/nats.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));

it('stops a partition whose stream lost events after its checkpoint, and counts it', async () => {
  const nats = await startTestNats({ partitions: 2 });
  try {
    const nc = await nats.connect();
    const jsm = await jetstreamManager(nc);
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    const key = 'gap-key';
    const stream = inStream(partitionOf(key, 2));
    const start = () =>
      startNode({
        natsUrl: nats.url,
        actorsDir: FIXTURE_ACTORS,
        dataDir: join(nats.dir, 'n'),
        id: 'n',
        threads: 1,
      });
    const count = async () =>
      (await kv.get(`account.${key}`))?.json<{ state: { count: number } }>().state.count ?? 0;

    let node = await start();
    for (let id = 1; id <= 3; id++) nc.publish(`events.tx.${key}`, JSON.stringify({ id, amount: 1 }));
    await check(async () => (await count()) === 3, 10_000, 'three events applied');
    await node.stop();

    // While the node is down: two more events, and the first of them is lost.
    for (let id = 4; id <= 5; id++) nc.publish(`events.tx.${key}`, JSON.stringify({ id, amount: 1 }));
    await nc.flush();
    const last = await check(async () => {
      const s = (await jsm.streams.info(stream)).state;
      return s.last_seq >= 5 ? s.last_seq : undefined;
    });
    await jsm.streams.deleteMessage(stream, last - 1);

    node = await start();
    try {
      const metric = async () => {
        const m = await node.metrics.registry.getSingleMetric('partita_retention_gaps_total')?.get();
        return m?.values.reduce((a, v) => a + v.value, 0) ?? 0;
      };
      await check(async () => (await metric()) === 1, 10_000, 'the gap counted');
      nc.publish(`events.tx.${key}`, JSON.stringify({ id: 6, amount: 1 }));
      await nc.flush();
      // The partition applies nothing past the gap: event 5 and 6 stay out until an operator acts.
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(await count(), 3);
    } finally {
      await node.stop();
    }
  } finally {
    await nats.stop();
  }
});
