// Outboxes left in LMDB by a crash between commit and publishing are published again at the next
// start, all emits and dead letters before any state: the states published are the current
// records, which may reflect a later one of those batches, and a stored state is never processed
// again, so its batch's emits must be stored first.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Kvm } from '@nats-io/kv';
import { STATE_BUCKET, startNode } from '../runtime/index.js';
import { openStateStore } from '../runtime/state-store.js';
import { check } from './helpers/check.js';
import { startTestNats } from './helpers/nats.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));

it('publishes every emit of the outboxes left by a crash before any of their states', async () => {
  const nats = await startTestNats({ partitions: 1 });
  const dataDir = join(nats.dir, 'node');
  // Outboxes are what a restart publishes where partitions are recovered from the bucket (with a
  // changelog, a batch not in it is rolled back and processed again).
  const opts = {
    natsUrl: nats.url,
    actorsDir: FIXTURE_ACTORS,
    dataDir,
    threads: 1,
    recovery: 'bucket' as const,
  };
  const nc = await nats.connect();
  try {
    let node = await startNode(opts);
    try {
      for (let id = 1; id <= 3; id++) nc.publish('events.tx.k1', JSON.stringify({ id, amount: id }));
      const kv = await new Kvm(nc).open(STATE_BUCKET);
      await check(
        async () => (await kv.get('account.k1'))?.json<{ state: { count: number } }>().state.count === 3,
        10_000,
        'three events applied',
      );
    } finally {
      await node.stop();
    }
    // Two batches committed but not published, both changing k1: the second one's record is what
    // k1 holds now, so its state must not go out before the second batch's emit.
    const store = openStateStore(dataDir);
    const cp = store.checkpoint(0)!;
    const key: [string, string] = ['account', 'k1'];
    const emit = (n: number): [string, string, string] => [`events.nosuch.ob${n}`, `ob-test-${n}`, '{}'];
    await store.meta.put(['ob', 0, cp.seq - 1], { seq: cp.seq - 1, keys: [key], emits: [emit(1)], dead: [] });
    await store.meta.put(['ob', 0, cp.seq], { seq: cp.seq, keys: [key], emits: [emit(2)], dead: [] });
    await store.close();

    const order: string[] = [];
    const sub = nc.subscribe('>', {
      callback: (_err, m) => {
        // Emits are mapped into the partition's stream subject; state changes are KV puts.
        if (m.subject.includes('.nosuch.ob') || m.subject.startsWith(`$KV.${STATE_BUCKET}.`))
          order.push(m.subject);
      },
    });
    await nc.flush();
    node = await startNode(opts);
    try {
      // An emit can show more than once on the wire: compare which came first, not how many.
      const isState = (subject: string) => subject.startsWith('$KV.');
      await check(() => order.some(isState), 10_000, "k1's state published again").catch((e) => {
        throw new Error(`${e.message}: ${order.join(', ')}`);
      });
      sub.unsubscribe();
      const before = order.slice(0, order.findIndex(isState)).map((s) => s.slice(s.lastIndexOf('.') + 1));
      assert.deepEqual([...new Set(before)].sort(), ['ob1', 'ob2'], `both emits first: ${order.join(', ')}`);
    } finally {
      await node.stop();
    }
  } finally {
    await nats.stop();
  }
});
