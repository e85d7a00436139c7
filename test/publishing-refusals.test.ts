// Outputs NATS refuses for good are dead-lettered (PARTITA_ERR_OUTPUT_REFUSED, naming the actor and
// the key) and the partition goes on; what fails for a while (a stream gone) is retried until it is
// stored, once, while /readyz and partita_partitions_stalled say the partition is stuck (issue 17,
// findings 1 and 4, "Health tells the truth").
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import {
  AckedPublisher,
  DLQ_HEADERS,
  DLQ_STREAM,
  ensureTopology,
  type PartitaNode,
  partitionOf,
  STATE_BUCKET,
  startNode,
} from '../runtime/index.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));
const PARTITIONS = 2;

async function metric(node: PartitaNode, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = node.metrics.registry.getSingleMetric(name);
  assert.ok(m, `${name} is registered`);
  const { values } = await m.get();
  return values
    .filter((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l))
    .reduce((a, v) => a + v.value, 0);
}

describe('publishing refusals and stalls', () => {
  let nats: TestNats;
  let node: PartitaNode;

  before(async () => {
    nats = await startTestNats({ partitions: PARTITIONS });
    node = await startNode({
      natsUrl: nats.url,
      actorsDir: FIXTURE_ACTORS,
      dataDir: join(nats.dir, 'node'),
      id: 'refusal-node',
      threads: 1,
      metricsPort: 0,
      stallThresholdMs: 300,
    });
  });
  after(async () => {
    await node?.stop();
    await nats?.stop();
  });

  it('a subject longer than a protocol line is refused before it is sent, and the connection stays', async () => {
    const nc = await nats.connect();
    const publisher = new AckedPublisher(nc);
    const stored = await publisher.publish(
      [
        { subject: `partita.dlq.${'x'.repeat(5000)}`, data: 'too long' },
        { subject: 'partita.dlq.fine', data: 'fine' },
      ],
      5000,
    );
    assert.match(stored.refused.get(0) ?? '', /longer than NATS allows/);
    assert.deepEqual(stored.failed, []);
    assert.ok(stored.seqs[1]! > 0, 'the rest is stored');
    assert.equal(nc.isClosed(), false);
    await nc.flush();
    publisher.close();
  });

  it('a state the bucket refuses (max_msg_size) is dead-lettered with its actor and key; the partition goes on', async () => {
    const nc = await nats.connect();
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    const stream = `KV_${STATE_BUCKET}`;
    const info = await jsm.streams.info(stream);
    await jsm.streams.update(stream, { ...info.config, max_msg_size: 2048 });
    // Two keys of one partition: the second must be applied and stored after the first is refused.
    const big = 'big-0';
    let small = 'small-0';
    for (let i = 1; partitionOf(small, PARTITIONS) !== partitionOf(big, PARTITIONS); i++)
      small = `small-${i}`;
    await js.publish(`events.tx.${big}`, JSON.stringify({ id: 'i'.repeat(4000) }));
    await js.publish(`events.tx.${small}`, JSON.stringify({ id: 7, amount: 5 }));
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    await check(
      async () => (await kv.get(`seen.${small}`))?.operation === 'PUT',
      20_000,
      'the next key stored',
    );
    const letter = await check(
      async () => {
        const { state } = await jsm.streams.info(DLQ_STREAM);
        for (let seq = state.first_seq; seq <= state.last_seq; seq++) {
          const m = await jsm.streams.getMessage(DLQ_STREAM, { seq }).catch(() => null);
          if (m?.header.get(DLQ_HEADERS.code) === 'PARTITA_ERR_OUTPUT_REFUSED') return m;
        }
        return undefined;
      },
      20_000,
      'the refused-output dead letter',
    );
    assert.equal(letter.header.get(DLQ_HEADERS.actor), 'seen');
    assert.equal(letter.header.get(DLQ_HEADERS.key), big);
    assert.match(letter.header.get(DLQ_HEADERS.error), /seen.*big-0.*refused: .*(size|maximum)/);
    assert.equal(await kv.get(`seen.${big}`), null, 'the refused state is not in the bucket');
    assert.equal(
      await metric(node, 'partita_events_dead_lettered_total', { code: 'PARTITA_ERR_OUTPUT_REFUSED' }),
      1,
    );
    await jsm.streams.update(stream, { ...info.config });
  });

  it('a dead letter whose stream is gone is retried until stored, once; /readyz is 503 meanwhile', async () => {
    const nc = await nats.connect();
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    const readyz = async () => {
      const r = await fetch(`${node.metricsUrl}/readyz`);
      return { status: r.status, body: (await r.json()) as { reason?: string } };
    };
    assert.equal((await readyz()).status, 200);
    await jsm.streams.delete(DLQ_STREAM);
    const key = 'stuck-1';
    await js.publish(`events.nosuchtype.${key}`, JSON.stringify({ n: 1 }));
    const stalled = await check(
      async () => {
        const r = await readyz();
        return r.status === 503 ? r : undefined;
      },
      20_000,
      '/readyz to fail',
    );
    assert.match(
      stalled.body.reason ?? '',
      new RegExp(`partition ${partitionOf(key, PARTITIONS)}:.*no progress`),
    );
    assert.equal(await metric(node, 'partita_partitions_stalled'), 1);
    // The stream comes back: the dead letter is stored, the partition goes on, readiness recovers.
    await ensureTopology(nc);
    await check(async () => (await readyz()).status === 200, 20_000, '/readyz to recover');
    await check(
      async () => (await metric(node, 'partita_partitions_stalled')) === 0,
      10_000,
      'the gauge to fall',
    );
    const { state } = await jsm.streams.info(DLQ_STREAM);
    assert.equal(state.messages, 1, 'the dead letter stored once');
  });
});
