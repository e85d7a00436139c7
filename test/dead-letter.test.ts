// Whatever a producer sends that cannot be processed lands in PARTITA_DLQ with its reason and its
// original payload, is counted, and leaves the node running: one case per kind of bad input.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { jetstreamManager, type StoredMsg } from '@nats-io/jetstream';
import { type KV, Kvm } from '@nats-io/kv';
import { headers, type MsgHdrs, type NatsConnection } from '@nats-io/transport-node';
import {
  DLQ_HEADERS,
  DLQ_STREAM,
  type ErrorCode,
  type PartitaNode,
  STATE_BUCKET,
  startNode,
} from '../runtime/index.js';
import { check } from './helpers/check.js';
import { DeadLetters } from './helpers/dead-letters.js';
import { startTestNats, type TestNats } from './helpers/nats.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));
const MAX_EVENT_BYTES = 2048;
const enc = new TextEncoder();

async function deadLettered(node: PartitaNode, code: ErrorCode): Promise<number> {
  const metric = node.metrics.registry.getSingleMetric('partita_events_dead_lettered_total');
  assert.ok(metric, 'partita_events_dead_lettered_total is registered');
  const { values } = await metric.get();
  return values.find((v) => v.labels.code === code)?.value ?? 0;
}

interface BadInput {
  subject: string;
  payload: Uint8Array;
  headers?: MsgHdrs;
  code: ErrorCode;
  /** The `partita.dlq.<type>` token. */
  dlqType: string;
  /** Set for PARTITA_ERR_HANDLER: the actor that threw. */
  actor?: string;
}

function json(v: unknown): Uint8Array {
  return enc.encode(JSON.stringify(v));
}

describe('dead letters', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let node: PartitaNode;
  let kv: KV;
  let dlq: DeadLetters;

  before(async () => {
    nats = await startTestNats({ partitions: 8 });
    nc = await nats.connect();
    node = await startNode({
      natsUrl: nats.url,
      actorsDir: FIXTURE_ACTORS,
      dataDir: join(nats.dir, 'node'),
      threads: 2,
      maxEventBytes: MAX_EVENT_BYTES,
    });
    kv = await new Kvm(nc).open(STATE_BUCKET);
    dlq = new DeadLetters(await jetstreamManager(nc));
  });
  after(async () => {
    await node?.stop();
    await nats?.stop();
  });

  /** Waits for an actor's state to satisfy `ok`, and returns it. */
  async function stateOf<S>(actor: string, key: string, ok: (s: S) => boolean): Promise<S> {
    const v = await check(
      async () => {
        const s = (await kv.get(`${actor}.${key}`))?.json<{ state: S }>()?.state;
        return s !== undefined && ok(s) ? { s } : undefined;
      },
      10_000,
      `state of ${actor}.${key}`,
    );
    return v.s;
  }

  /**
   * Publishes the bad input, checks its one dead letter and the metric, then checks that a good
   * event published after it is still applied.
   */
  async function deadLetterCase(bad: BadInput, good: () => Promise<void>): Promise<StoredMsg> {
    const before = await deadLettered(node, bad.code);
    nc.publish(bad.subject, bad.payload, bad.headers ? { headers: bad.headers } : undefined);
    await nc.flush();
    const [m] = await check(
      async () => {
        const found = await dlq.of(bad.subject, bad.payload);
        return found.length > 0 ? found : undefined;
      },
      10_000,
      `dead letter of ${bad.subject}`,
    );
    assert.ok(m);
    assert.equal(m.subject, `partita.dlq.${bad.dlqType}`);
    assert.equal(m.header.get(DLQ_HEADERS.code), bad.code);
    assert.ok(m.header.get(DLQ_HEADERS.error).length > 0, 'Partita-Error names the reason');
    assert.equal(m.header.get(DLQ_HEADERS.subject), bad.subject);
    if (bad.actor) assert.equal(m.header.get(DLQ_HEADERS.actor), bad.actor);
    assert.deepEqual(Buffer.from(m.data), Buffer.from(bad.payload));
    await check(
      async () => (await deadLettered(node, bad.code)) >= before + 1,
      10_000,
      `partita_events_dead_lettered_total{code="${bad.code}"}`,
    );

    await good();

    // By now the batch of the bad event and the one after it are published: nothing more may come.
    const all = await dlq.of(bad.subject, bad.payload);
    assert.equal(all.length, 1, `one dead letter for ${bad.subject}, got ${all.length}`);
    assert.equal(await deadLettered(node, bad.code), before + 1, `counted once as ${bad.code}`);
    return m;
  }

  /** Publishes one good `tx` event on the key; the account holds exactly it afterwards. */
  const goodTx = (key: string) => async () => {
    nc.publish(`events.tx.${key}`, json({ id: 1, amount: 7 }));
    const s = await stateOf<{ count: number; total: number }>('account', key, (s) => s.count >= 1);
    assert.equal(s.count, 1, 'only the good event was applied');
    assert.equal(s.total, 7);
  };

  it('dead-letters a payload that is not JSON', async () => {
    const m = await deadLetterCase(
      {
        subject: 'events.tx.dl-json',
        payload: enc.encode('{"id": 1, "amount": '),
        code: 'PARTITA_ERR_DECODE',
        dlqType: 'tx',
      },
      goodTx('dl-json'),
    );
    assert.match(m.header.get(DLQ_HEADERS.error), /JSON/);
  });

  it('dead-letters a msgpack payload that does not decode', async () => {
    const h = headers();
    h.set('Content-Type', 'application/msgpack');
    const m = await deadLetterCase(
      {
        subject: 'events.tx.dl-msgpack',
        // A map16 header announcing 0xadbe entries, then nothing: truncated msgpack.
        payload: Uint8Array.from([0xde, 0xad, 0xbe, 0xef]),
        headers: h,
        code: 'PARTITA_ERR_DECODE',
        dlqType: 'tx',
      },
      goodTx('dl-msgpack'),
    );
    assert.match(m.header.get(DLQ_HEADERS.error), /msgpack/);
    // The producer's own headers travel with the dead letter.
    assert.equal(m.header.get('Content-Type'), 'application/msgpack');
  });

  it('dead-letters an event type no actor consumes', async () => {
    await deadLetterCase(
      {
        subject: 'events.nosuchtype.dl-unknown',
        payload: json({ id: 1, amount: 1 }),
        code: 'PARTITA_ERR_UNKNOWN_TYPE',
        dlqType: 'nosuchtype',
      },
      goodTx('dl-unknown'),
    );
  });

  it('dead-letters a subject with too many tokens', async () => {
    const m = await deadLetterCase(
      {
        subject: 'events.tx.dl-many.extra',
        payload: json({ id: 1, amount: 1, case: 'many' }),
        code: 'PARTITA_ERR_UNROUTABLE',
        dlqType: 'tx',
      },
      goodTx('dl-many'),
    );
    assert.equal(m.header.get(DLQ_HEADERS.stream), 'PARTITA_EVENTS');
  });

  it('dead-letters a subject with too few tokens', async () => {
    const m = await deadLetterCase(
      {
        subject: 'events.tx',
        payload: json({ id: 1, amount: 1, case: 'few' }),
        code: 'PARTITA_ERR_UNROUTABLE',
        dlqType: 'tx',
      },
      goodTx('dl-few'),
    );
    assert.equal(m.header.get(DLQ_HEADERS.stream), 'PARTITA_EVENTS');
  });

  it('dead-letters a payload larger than maxEventBytes', async () => {
    const payload = json({ id: 1, amount: 1, pad: 'x'.repeat(MAX_EVENT_BYTES) });
    assert.ok(payload.byteLength > MAX_EVENT_BYTES);
    await deadLetterCase(
      { subject: 'events.tx.dl-big', payload, code: 'PARTITA_ERR_OVERSIZED', dlqType: 'tx' },
      goodTx('dl-big'),
    );
  });

  it('dead-letters an event its handler throws on, once, after the retries', async () => {
    const m = await deadLetterCase(
      {
        subject: 'events.risky.dl-throw',
        payload: json({ fail: true }),
        code: 'PARTITA_ERR_HANDLER',
        dlqType: 'risky',
        actor: 'flaky',
      },
      async () => {
        nc.publish('events.risky.dl-throw', json({}));
        const s = await stateOf<{ ok: number; touched: number }>('flaky', 'dl-throw', (s) => s.ok >= 1);
        // Neither the throwing attempts nor their rollback left a trace.
        assert.deepEqual(s, { ok: 1, touched: 1 });
      },
    );
    assert.match(m.header.get(DLQ_HEADERS.error), /refusing a risky event/);
    assert.match(m.header.get(DLQ_HEADERS.error), /3 attempts/);
  });
});

describe('dead letters across a restart', () => {
  let nats: TestNats;
  let nc: NatsConnection;

  before(async () => {
    nats = await startTestNats({ partitions: 4 });
    nc = await nats.connect();
  });
  after(async () => {
    await nats?.stop();
  });

  it('writes each bad input to the dead-letter stream exactly once', async () => {
    const dataDir = join(nats.dir, 'node');
    const start = () =>
      startNode({
        natsUrl: nats.url,
        actorsDir: FIXTURE_ACTORS,
        dataDir,
        threads: 1,
        maxEventBytes: MAX_EVENT_BYTES,
      });
    const bad: [string, Uint8Array][] = [
      ['events.tx.once-json', enc.encode('not json')],
      ['events.nosuchtype.once-unknown', json({ id: 1 })],
      ['events.risky.once-throw', json({ fail: true })],
      ['events.tx.once-big', json({ pad: 'y'.repeat(MAX_EVENT_BYTES) })],
      ['events.tx.once.many', json({ id: 2 })],
    ];
    const dlq = new DeadLetters(await jetstreamManager(nc));
    const written = async () => {
      const counts: number[] = [];
      for (const [subject, payload] of bad) counts.push((await dlq.of(subject, payload)).length);
      return counts;
    };

    let node = await start();
    try {
      for (const [subject, payload] of bad) nc.publish(subject, payload);
      await nc.flush();
      await check(async () => (await written()).every((n) => n >= 1), 10_000, 'every dead letter');
      assert.deepEqual(await written(), [1, 1, 1, 1, 1]);
    } finally {
      await node.stop();
    }

    // A restart must not publish the outboxes it already published, even after JetStream's
    // duplicate window has passed: shrink the window and let it pass first.
    const jsm = await jetstreamManager(nc);
    const cfg = (await jsm.streams.info(DLQ_STREAM)).config;
    await jsm.streams.update(DLQ_STREAM, { ...cfg, duplicate_window: 100_000_000 });
    await new Promise((r) => setTimeout(r, 300));
    node = await start();
    try {
      const marker = json({ marker: true });
      nc.publish('events.tx.once-marker.x', marker);
      await check(async () => (await dlq.of('events.tx.once-marker.x', marker)).length === 1, 10_000);
      assert.deepEqual(await written(), [1, 1, 1, 1, 1]);
      const { state } = await jetstreamManager(nc).then((jsm) => jsm.streams.info(DLQ_STREAM));
      assert.equal(state.messages, bad.length + 1, 'nothing else is in the dead-letter stream');
    } finally {
      await node.stop();
    }
  });
});
