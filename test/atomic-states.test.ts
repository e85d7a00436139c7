// A batch's state changes as atomic batches (nats-server 2.12+, `atomicStates`): the state bucket
// stores each batch of changes whole, in consecutive sequences, or not at all; on older servers the
// option is ignored and every change is its own acknowledged put. Run on both lines (CI's newest and
// oldest): each run checks which path it took.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { jetstream, jetstreamManager, type StoredMsg } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import {
  atomicStatesAvailable,
  DLQ_HEADERS,
  DLQ_STREAM,
  type PartitaNode,
  partitionOf,
  STATE_BUCKET,
  startNode,
} from '../runtime/index.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));
const PARTITIONS = 2;
const STREAM = `KV_${STATE_BUCKET}`;

async function bucketMessages(nats: TestNats): Promise<StoredMsg[]> {
  const jsm = await jetstreamManager(await nats.connect());
  const { state } = await jsm.streams.info(STREAM);
  const out: StoredMsg[] = [];
  for (let seq = state.first_seq; seq <= state.last_seq; seq++) {
    const m = await jsm.streams.getMessage(STREAM, { seq }).catch(() => null);
    if (m) out.push(m);
  }
  return out;
}

function start(nats: TestNats): Promise<PartitaNode> {
  return startNode({
    natsUrl: nats.url,
    actorsDir: FIXTURE_ACTORS,
    dataDir: join(nats.dir, 'node'),
    id: 'atomic-node',
    threads: 1,
    atomicStates: true,
  });
}

describe('state changes as atomic batches', () => {
  let nats: TestNats;
  let node: PartitaNode | undefined;
  let atomic = false;

  before(async () => {
    nats = await startTestNats({ partitions: PARTITIONS });
    const nc = await nats.connect();
    atomic = await atomicStatesAvailable(nc, await jetstreamManager(nc));
    console.log(
      `nats-server ${nc.info?.version}: atomic batches of states ${atomic ? 'available' : 'not available'}`,
    );
  });
  after(async () => {
    await node?.stop();
    await nats?.stop();
  });

  it('stores each batch of state changes whole, in consecutive sequences (2.12+); one put each before', async () => {
    const nc = await nats.connect();
    const js = jetstream(nc);
    // A backlog first, so that batches hold many changes (more than one atomic batch's 1,000 too:
    // every event changes the state of each fixture actor that takes `tx`).
    const N = 1500;
    for (let i = 0; i < N; i++) nc.publish(`events.tx.k${i}`, JSON.stringify({ id: i, amount: 1 }));
    await nc.flush();
    await js.publish('events.tx.k0', JSON.stringify({ id: N, amount: 1 }));
    node = await start(nats);
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    await check(
      async () => {
        const e = await kv.get('seen.k0');
        return e?.operation === 'PUT' && N in e.json<{ state: { ids: Record<string, 1> } }>().state.ids;
      },
      60_000,
      'the last event applied',
    );
    await check(
      async () => {
        let n = 0;
        for (let i = 0; i < N; i += 97) if ((await kv.get(`seen.k${i}`))?.operation === 'PUT') n++;
        return n === Math.ceil(N / 97);
      },
      30_000,
      'the states stored',
    );
    const msgs = await bucketMessages(nats);
    const seen = msgs.filter((m) => m.subject.startsWith(`$KV.${STATE_BUCKET}.seen.`));
    assert.equal(seen.length, N, 'one entry per key');
    const batches = new Map<string, StoredMsg[]>();
    for (const m of msgs) {
      const id = m.header?.get('Nats-Batch-Id') ?? '';
      if (!id) continue;
      batches.set(id, [...(batches.get(id) ?? []), m]);
    }
    if (!atomic) {
      assert.equal(batches.size, 0, 'no batch headers: one put per change');
      return;
    }
    assert.equal(
      msgs.filter((m) => !m.header?.get('Nats-Batch-Id')).length,
      0,
      'every state change went out in an atomic batch',
    );
    assert.ok(
      [...batches.values()].some((b) => b.length > 1),
      'batches hold several changes',
    );
    // A batch's messages took consecutive stream sequences, in batch order. Those of k0 (written
    // by the first and the last event) were replaced by later puts (history 1), so a batch may miss
    // some: each missing position's sequence must then be gone from the stream.
    const bySeq = new Map(msgs.map((m) => [m.seq, m]));
    for (const [id, b] of batches) {
      const first = b[0]!.seq - (Number(b[0]!.header.get('Nats-Batch-Sequence')) - 1);
      for (const m of b)
        assert.equal(
          m.seq - first + 1,
          Number(m.header.get('Nats-Batch-Sequence')),
          `batch ${id}: its messages in order, in consecutive sequences`,
        );
      const last = b.at(-1)!;
      for (let seq = first; seq < last.seq; seq++) {
        const m = bySeq.get(seq);
        assert.ok(
          m === undefined || m.header?.get('Nats-Batch-Id') === id,
          `batch ${id}: stream sequence ${seq} holds another batch's message`,
        );
      }
      assert.ok(
        Number(last.header.get('Nats-Batch-Sequence')) <= 1000,
        `batch ${id}: at most 1,000 messages`,
      );
    }
  });

  it('a batch the bucket refuses for good (max_msg_size) goes out one by one: the refused state is dead-lettered, the rest stored', async () => {
    const nc = await nats.connect();
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(STREAM);
    await jsm.streams.update(STREAM, { ...info.config, max_msg_size: 2048 });
    try {
      const big = 'big-0';
      let small = 'small-0';
      for (let i = 1; partitionOf(small, PARTITIONS) !== partitionOf(big, PARTITIONS); i++)
        small = `small-${i}`;
      const before = (await jsm.streams.info(STREAM)).state.last_seq;
      // Both while no node runs, so that one commit holds both: the refused state is then not its
      // batch's last (commit) message, and the server answers the commit that the batch is
      // incomplete (the refusal itself goes to no reply subject).
      await node?.stop();
      node = undefined;
      const js = jetstream(nc);
      await js.publish(`events.tx.${big}`, JSON.stringify({ id: 'i'.repeat(4000) }));
      await js.publish(`events.tx.${small}`, JSON.stringify({ id: 7, amount: 5 }));
      node = await start(nats);
      const kv = await new Kvm(nc).open(STATE_BUCKET);
      await check(
        async () => (await kv.get(`seen.${small}`))?.operation === 'PUT',
        30_000,
        'the next key stored',
      );
      await check(
        async () => {
          const { state } = await jsm.streams.info(DLQ_STREAM);
          for (let seq = state.first_seq; seq <= state.last_seq; seq++) {
            const m = await jsm.streams.getMessage(DLQ_STREAM, { seq }).catch(() => null);
            if (
              m?.header.get(DLQ_HEADERS.code) === 'PARTITA_ERR_OUTPUT_REFUSED' &&
              m.header.get(DLQ_HEADERS.key) === big
            )
              return m;
          }
          return undefined;
        },
        30_000,
        'the refused-output dead letter',
      );
      assert.equal(await kv.get(`seen.${big}`), null, 'the refused state is not in the bucket');
      // The other actors' states of the big event fit: stored, one by one once the batch was refused.
      const after = (await bucketMessages(nats)).filter((m) => m.seq > before);
      assert.ok(
        after.some((m) => m.subject.endsWith(`.${big}`)),
        "the big event's other states are stored",
      );
    } finally {
      await jsm.streams.update(STREAM, { ...info.config });
    }
  });
});
