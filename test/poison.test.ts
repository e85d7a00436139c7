// One bad event never holds a partition, or the partitions that share its worker task: a handler
// in an endless loop, a worker that dies in a handler, a key too long to store, a state too large
// to publish, an emit NATS would refuse. Each is dead-lettered once, with its code, and every good
// event around it is applied. Real nats-server, real node, real LMDB.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { jetstreamManager, type StoredMsg } from '@nats-io/jetstream';
import { type KV, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  DLQ_HEADERS,
  type ErrorCode,
  type PartitaNode,
  partitionOf,
  STATE_BUCKET,
  startNode,
  stateKvKey,
} from '../runtime/index.js';
import { check } from './helpers/check.js';
import { DeadLetters } from './helpers/dead-letters.js';
import { startTestNats, type TestNats } from './helpers/nats.js';

const ACTORS = fileURLToPath(new URL('./fixtures/poison-actors/', import.meta.url));
const PARTITIONS = 4;
const LIMIT_MS = 1000;
const enc = new TextEncoder();
const json = (v: unknown) => enc.encode(JSON.stringify(v));

/** A key of `partition` that starts with `prefix`. */
function keyIn(partition: number, prefix: string): string {
  for (let i = 0; ; i++) if (partitionOf(`${prefix}-${i}`, PARTITIONS) === partition) return `${prefix}-${i}`;
}

async function counter(node: PartitaNode, name: string, label: Record<string, string>): Promise<number> {
  const metric = node.metrics.registry.getSingleMetric(name);
  assert.ok(metric, `${name} is registered`);
  const { values } = await metric.get();
  return values.find((v) => Object.entries(label).every(([k, x]) => v.labels[k] === x))?.value ?? 0;
}

describe('poison events', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let node: PartitaNode;
  let kv: KV;
  let dlq: DeadLetters;

  before(async () => {
    nats = await startTestNats({ partitions: PARTITIONS });
    nc = await nats.connect();
    node = await startNode({
      natsUrl: nats.url,
      actorsDir: ACTORS,
      dataDir: join(nats.dir, 'node'),
      // One worker thread: every partition's batches share its tasks.
      threads: 1,
      handlerTimeoutMs: LIMIT_MS,
    });
    kv = await new Kvm(nc).open(STATE_BUCKET);
    dlq = new DeadLetters(await jetstreamManager(nc));
  });
  after(async () => {
    await node?.stop();
    await nats?.stop();
  });

  async function stateOf<S>(actor: string, key: string): Promise<S | undefined> {
    return (await kv.get(stateKvKey(actor, key)))?.json<{ state: S }>()?.state;
  }

  /** Waits for the one dead letter of `subject`, checks it, and that no second one comes with the next batch. */
  async function deadLetterOf(subject: string, code: ErrorCode, actor?: string): Promise<StoredMsg> {
    const [m] = await check(
      async () => {
        const found = await dlq.of(subject);
        return found.length > 0 ? found : undefined;
      },
      20_000,
      `dead letter of ${subject.slice(0, 60)}`,
    );
    assert.ok(m);
    assert.equal(m.header.get(DLQ_HEADERS.code), code);
    if (actor) assert.equal(m.header.get(DLQ_HEADERS.actor), actor);
    return m;
  }

  /** Publishes `good` events on each key and `bad` in between; all in one burst, so they share tasks. */
  function burst(subjects: [string, Uint8Array][]): Promise<void> {
    for (const [s, d] of subjects) nc.publish(s, d);
    return nc.flush();
  }

  it('stops a handler in an endless loop, dead-letters its event once, and goes on', async () => {
    const p = 1;
    const loopKey = keyIn(p, 'loop');
    const sameP = keyIn(p, 'same');
    const others = [0, 2, 3].map((q) => keyIn(q, 'other'));
    const good = (key: string) => [`events.work.${key}`, json({})] as [string, Uint8Array];
    const before = await counter(node, 'partita_handler_timeouts_total', { actor: 'looper' });
    await burst([
      good(loopKey),
      good(sameP),
      ...others.map(good),
      [`events.work.${loopKey}`, json({ loop: true })],
      good(loopKey),
      good(sameP),
      ...others.map(good),
    ]);
    for (const key of [loopKey, sameP, ...others])
      await check(
        async () => (await stateOf<{ n: number }>('looper', key))?.n === 2,
        20_000,
        `looper ${key} at 2`,
      );
    const m = await deadLetterOf(`events.work.${loopKey}`, 'PARTITA_ERR_HANDLER_TIMEOUT', 'looper');
    const why = m.header.get(DLQ_HEADERS.error);
    assert.match(why, /looper/);
    assert.ok(why.includes(`"${loopKey}"`), `the reason names the key: ${why}`);
    assert.match(why, new RegExp(`${LIMIT_MS} ms`));
    // The partition goes on: a later event of the same key applies, and nothing is dead-lettered twice.
    nc.publish(`events.work.${loopKey}`, json({}));
    await check(async () => (await stateOf<{ n: number }>('looper', loopKey))?.n === 3, 20_000);
    assert.equal((await dlq.of(`events.work.${loopKey}`)).length, 1);
    assert.equal(await counter(node, 'partita_handler_timeouts_total', { actor: 'looper' }), before + 1);
  });

  it('stops an onTimer in an endless loop, and dead-letters the event that set the timer', async () => {
    const key = keyIn(1, 'timed');
    const other = keyIn(2, 'timed-other');
    await burst([
      [`events.arm.${key}`, json({})],
      [`events.arm.${other}`, json({})],
      [`events.arm.${key}`, json({ loop: true })],
      [`events.arm.${key}`, json({})],
      [`events.arm.${other}`, json({})],
    ]);
    const timed = (k: string) => stateOf<{ n: number; fired: number }>('timed', k);
    await check(async () => (await timed(other))?.fired === 2, 20_000, 'the other key');
    await check(async () => (await timed(key))?.n === 3, 20_000, 'the looping key');
    assert.deepEqual(await timed(key), { n: 3, fired: 2 });
    const m = await deadLetterOf(`events.arm.${key}`, 'PARTITA_ERR_HANDLER_TIMEOUT', 'timed');
    assert.ok(m.header.get(DLQ_HEADERS.error).includes(`onTimer/onWindow of key "${key}"`));
    assert.equal((await dlq.of(`events.arm.${key}`)).length, 1);
  });

  it('dead-letters an event whose handler ends its worker thread, and goes on', async () => {
    const key = keyIn(2, 'exit');
    const other = keyIn(3, 'exit-other');
    await burst([
      [`events.work.${key}`, json({})],
      [`events.work.${other}`, json({})],
      [`events.work.${key}`, json({ exit: true })],
      [`events.work.${key}`, json({})],
      [`events.work.${other}`, json({})],
    ]);
    for (const k of [key, other])
      await check(async () => (await stateOf<{ n: number }>('looper', k))?.n === 2, 20_000, `looper ${k}`);
    const m = await deadLetterOf(`events.work.${key}`, 'PARTITA_ERR_HANDLER', 'looper');
    assert.match(m.header.get(DLQ_HEADERS.error), /worker thread died/);
    assert.equal((await dlq.of(`events.work.${key}`)).length, 1);
  });

  it('dead-letters keys too long to store before writing anything; the good events around them apply', async () => {
    const long = 'k'.repeat(2000);
    const equals = '='.repeat(1400);
    const goods: string[] = [];
    for (const bad of [long, equals]) {
      const p = partitionOf(bad, PARTITIONS);
      goods.push(keyIn(p, `near-${bad[0]}`), keyIn((p + 1) % PARTITIONS, `far-${bad[0]}`));
    }
    await burst([
      ...goods.map((k) => [`events.work.${k}`, json({})] as [string, Uint8Array]),
      [`events.work.${long}`, json({})],
      [`events.work.${equals}`, json({})],
      ...goods.map((k) => [`events.work.${k}`, json({})] as [string, Uint8Array]),
    ]);
    for (const k of goods)
      await check(async () => (await stateOf<{ n: number }>('looper', k))?.n === 2, 20_000, `looper ${k}`);
    for (const bad of [long, equals]) {
      const m = await deadLetterOf(`events.work.${bad}`, 'PARTITA_ERR_KEY_TOO_LONG');
      assert.match(m.header.get(DLQ_HEADERS.error), /over 512/);
      assert.equal((await dlq.of(`events.work.${bad}`)).length, 1);
    }
  });

  it('dead-letters the event after which a state is too large; the key goes on from before it', async () => {
    const key = keyIn(0, 'big');
    const other = keyIn(1, 'big-other');
    await burst([
      [`events.grow.${key}`, json({ bytes: 10 })],
      [`events.grow.${other}`, json({})],
      [`events.grow.${key}`, json({ bytes: 5 * 1024 * 1024 })],
      [`events.grow.${key}`, json({})],
      [`events.grow.${other}`, json({})],
    ]);
    await check(async () => (await stateOf<{ n: number }>('grower', other))?.n === 2, 20_000);
    await check(async () => (await stateOf<{ n: number }>('grower', key))?.n === 2, 20_000);
    assert.deepEqual(await stateOf('grower', key), { n: 2, blob: 'x'.repeat(10) });
    const m = await deadLetterOf(`events.grow.${key}`, 'PARTITA_ERR_STATE_TOO_LARGE', 'grower');
    assert.ok(m.header.get(DLQ_HEADERS.error).includes(`"${key}"`));
    assert.equal((await dlq.of(`events.grow.${key}`)).length, 1);
  });

  it('dead-letters an event whose emit NATS would refuse, with its state rolled back', async () => {
    const key = keyIn(3, 'send');
    const target = keyIn(2, 'sent');
    const send = (type: string, k: string, size?: number) =>
      [`events.send.${key}`, json({ type, key: k, size })] as [string, Uint8Array];
    const bad = [
      send('', target),
      send('a.b', target),
      send('work', 'a b'),
      send('work', target, 2 * 1024 * 1024),
    ];
    await burst([send('work', target), ...bad, send('work', target)]);
    await check(async () => (await stateOf<{ sent: number }>('sender', key))?.sent === 2, 20_000);
    // The good emits went out, and were applied by the looper.
    await check(async () => (await stateOf<{ n: number }>('looper', target))?.n === 2, 20_000);
    const letters = await check(
      async () => {
        const all = await dlq.of(`events.send.${key}`);
        return all.length >= bad.length ? all : undefined;
      },
      20_000,
      'the refused emits',
    );
    assert.equal(letters.length, bad.length);
    for (const m of letters) {
      assert.equal(m.header.get(DLQ_HEADERS.code), 'PARTITA_ERR_OUTPUT_REFUSED');
      assert.equal(m.header.get(DLQ_HEADERS.actor), 'sender');
    }
  });

  it('stops promptly while a handler loops', async () => {
    const taken = await counter(node, 'partita_events_in_total', { partition: '0' });
    nc.publish(`events.work.${keyIn(0, 'last-loop')}`, json({ loop: true }));
    await nc.flush();
    // Taken into a batch: the handler is looping in the worker.
    await check(async () => (await counter(node, 'partita_events_in_total', { partition: '0' })) > taken);
    // Without the watchdog this never resolves: the batch in flight never ends.
    await node.stop();
    assert.equal(node.status, 'STOPPED');
  });
});

describe('isolation between partitions', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let node: PartitaNode;
  let kv: KV;

  before(async () => {
    nats = await startTestNats({ partitions: PARTITIONS });
    nc = await nats.connect();
    node = await startNode({
      natsUrl: nats.url,
      actorsDir: ACTORS,
      dataDir: join(nats.dir, 'node'),
      threads: 1,
      handlerTimeoutMs: LIMIT_MS,
    });
    kv = await new Kvm(nc).open(STATE_BUCKET);
  });
  after(async () => {
    await node?.stop();
    await nats?.stop();
  });

  it('keeps applying the other partitions while one partition cannot commit', async () => {
    const badKey = keyIn(0, 'unstorable');
    const others = [1, 2, 3].map((p) => keyIn(p, 'fine'));
    const stateOf = async (key: string) =>
      (await kv.get(stateKvKey('unstorable', key)))?.json<{ state: { n: number } }>()?.state;
    // The bad partition fails first, then everything arrives while it keeps failing.
    nc.publish(`events.store.${badKey}`, json({ bad: true }));
    for (let round = 1; round <= 3; round++) {
      for (const k of others) nc.publish(`events.store.${k}`, json({}));
      await nc.flush();
      for (const k of others)
        await check(async () => (await stateOf(k))?.n === round, 20_000, `unstorable ${k} at ${round}`);
    }
    assert.equal(await stateOf(badKey), undefined, 'the partition that cannot commit only holds itself');
    assert.ok((await counter(node, 'partita_batch_failures_total', { partition: '0' })) > 0);
  });
});
