// The changelog against a real nats-server and real LMDB files: fenced appends, snapshots that
// compact it, and restores (whole, and from a local position) that give back exactly the
// committed states.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import fc from 'fast-check';
import {
  CHANGELOG_STREAM,
  ChangelogFencedError,
  type ChangelogRecord,
  ChangelogWriter,
  changelogSubject,
  claimChangelog,
  decodeMessage,
  ensureChangelogStream,
  restoreFromChangelog,
} from '../runtime/changelog.js';
import { openStateStore, type StateRecord, type StateStore } from '../runtime/state-store.js';
import { partitionOf } from '../runtime/subjects.js';
import { startTestNats, type TestNats, tempDir } from './helpers/nats.js';

const PARTITIONS = 4;
let nats: TestNats;
let nc: NatsConnection;

before(async () => {
  nats = await startTestNats({ partitions: PARTITIONS });
  nc = await nats.connect();
  await ensureChangelogStream(await jetstreamManager(nc), 1);
});
after(async () => {
  await nats.stop();
});

/** Keys of one partition, so that restores of it see them all. */
function keysOf(partition: number, count: number, prefix = 'k'): string[] {
  const keys: string[] = [];
  for (let i = 0; keys.length < count; i++) {
    const key = `${prefix}${i}`;
    if (partitionOf(key, PARTITIONS) === partition) keys.push(key);
  }
  return keys;
}

const record = (s: unknown, q: number, extra: Partial<StateRecord> = {}): StateRecord => ({
  s,
  q,
  t: 1_700_000_000_000 + q,
  ...extra,
});

async function subjectSeqs(partition: number): Promise<number[]> {
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  const info = await jsm.streams.info(CHANGELOG_STREAM, { subjects_filter: changelogSubject(partition) });
  const count = info.state.subjects?.[changelogSubject(partition)] ?? 0;
  const seqs: number[] = [];
  if (count === 0) return seqs;
  const c = await js.consumers.get(CHANGELOG_STREAM, { filter_subjects: [changelogSubject(partition)] });
  const msgs = await c.fetch({ max_messages: count, expires: 2000 });
  for await (const m of msgs) seqs.push(m.seq);
  return seqs;
}

describe('changelog', () => {
  it('restores a fresh store to exactly the appended states, checkpoint and wakes', async () => {
    const p = 0;
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    const w = await claimChangelog(nc, js, jsm, p, 1, 'node-a');
    const [k1, k2, k3] = keysOf(p, 3);
    await w.appendBatch({ seq: 10, at: 1, n: 2 }, [
      ['counter', k1!, record({ n: 1 }, 3)],
      ['counter', k2!, record({ n: 5 }, 10, { x: { k: [1234, null] } })],
    ]);
    const clock = { pt: 99, a: { counter: [1, 2, 3] as [number, number, number] } };
    await w.appendBatch({ seq: 20, at: 2, n: 3, clock }, [
      ['counter', k1!, record({ n: 2 }, 15)],
      ['counter', k3!, record({ n: 7 }, 20)],
    ]);
    const next = await claimChangelog(nc, js, jsm, p, 2, 'node-b');
    const store = openStateStore(tempDir());
    const r = await restoreFromChangelog(js, store, PARTITIONS, next);
    assert.equal(r.full, true);
    assert.deepEqual(
      {
        seq: r.checkpoint.seq,
        n: r.checkpoint.n,
        epoch: r.checkpoint.epoch,

        clock: r.checkpoint.clock,
      },
      { seq: 20, n: 3, epoch: 2, clock },
    );
    assert.deepEqual(store.states.get(['counter', k1!])?.s, { n: 2 });
    assert.deepEqual(store.states.get(['counter', k2!])?.s, { n: 5 });
    assert.deepEqual(store.states.get(['counter', k3!])?.s, { n: 7 });
    assert.equal(store.meta.get(['wk', p, 'counter', 1234, k2!]), 1, 'the wake index is rebuilt');
    assert.deepEqual(store.checkpoint(p), r.checkpoint);
    await store.close();
  });

  it('refuses a former owner once another has claimed, and the new owner sees all it appended', async () => {
    const p = 1;
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    const [a, b] = keysOf(p, 2);
    const old = await claimChangelog(nc, js, jsm, p, 1, 'node-a');
    await old.appendBatch({ seq: 5, at: 1, n: 1 }, [['counter', a!, record(1, 5)]]);
    const next = await claimChangelog(nc, js, jsm, p, 2, 'node-b');
    await assert.rejects(
      old.appendBatch({ seq: 6, at: 1, n: 2 }, [['counter', b!, record(2, 6)]]),
      (err) => err instanceof ChangelogFencedError && err.partition === p,
    );
    const store = openStateStore(tempDir());
    const r = await restoreFromChangelog(js, store, PARTITIONS, next);
    assert.equal(r.checkpoint.seq, 5, "the zombie's refused batch does not count");
    assert.equal(store.states.get(['counter', b!]), undefined);
    await next.appendBatch({ seq: 6, at: 2, n: 2 }, [['counter', b!, record(3, 6)]]);
    await store.close();
  });

  it('answers a retried append as the duplicate it is, not as a fence', async () => {
    const p = 2;
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    const [a] = keysOf(p, 1);
    const w = await claimChangelog(nc, js, jsm, p, 1, 'node-a');
    const before = w.last;
    await w.appendBatch({ seq: 7, at: 1, n: 1 }, [['counter', a!, record(1, 7)]]);
    const stored = w.last;
    // As if the PubAck had been lost: the same batch again, fenced on the same sequence.
    const retry = new ChangelogWriter(nc, js, jsm, p, 1, before);
    await retry.appendBatch({ seq: 7, at: 1, n: 1 }, [['counter', a!, record(1, 7)]]);
    assert.equal(retry.last, stored, 'the retry is answered with the stored sequence');
    assert.equal((await subjectSeqs(p)).length, 2, 'the claim and one batch, not two');
  });

  it('splits a batch larger than a message, and a part without its end does not move the position', async () => {
    const p = 3;
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    const keys = keysOf(p, 400, 'big');
    const big = 'x'.repeat(8 * 1024); // 400 × 8 KiB: about 3 MiB, more than a message holds
    const w = await claimChangelog(nc, js, jsm, p, 1, 'node-a');
    await w.appendBatch(
      { seq: 400, at: 1, n: 400 },
      keys.map((k, i) => ['counter', k, record(big, i + 1)] as ChangelogRecord),
    );
    const seqs = await subjectSeqs(p);
    assert.ok(seqs.length >= 4, `the batch went as ${seqs.length - 1} parts`);
    // A part of a later batch whose writer died before its end.
    await w.append({
      k: 'b',
      e: 1,
      to: 500,
      at: 1,
      n: 401,
      s: [['counter', keys[0]!, record('partial', 450)]],
      end: false,
    });
    const next = await claimChangelog(nc, js, jsm, p, 2, 'node-b');
    const store = openStateStore(tempDir());
    const r = await restoreFromChangelog(js, store, PARTITIONS, next);
    assert.equal(r.checkpoint.seq, 400);
    assert.equal(r.checkpoint.n, 400);
    assert.equal(
      store.states.get(['counter', keys[0]!])?.s,
      'partial',
      'its record is taken: it is ahead, like any key past a checkpoint',
    );
    assert.equal(store.states.get(['counter', keys[399]!])?.s, big);
    await store.close();
  });
});

describe('changelog snapshots and restores, against a model (seeded)', () => {
  it('gives back the model state, whole and from a local position, with snapshots in between', async () => {
    const seed = Number(process.env.PARTITA_SEED ?? Date.now() % 1_000_000);
    console.log(`changelog property seed: ${seed}`);
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            keys: fc.uniqueArray(fc.integer({ min: 0, max: 30 }), { minLength: 0, maxLength: 8 }),
            snapshot: fc.boolean(),
            /** The snapshot goes on while the next batch is appended (its messages between the chunks). */
            overlap: fc.boolean(),
            restore: fc.boolean(),
          }),
          { minLength: 1, maxLength: 12 },
        ),
        async (steps) => {
          try {
            await runSteps(steps);
          } catch (err) {
            console.log('property run failed:', err);
            throw err;
          }
        },
      ),
      { seed, numRuns: 30 },
    );
    async function runSteps(
      steps: { keys: number[]; snapshot: boolean; overlap: boolean; restore: boolean }[],
    ) {
      // Each run starts on an empty subject.
      const p = run++ % PARTITIONS;
      await jsm.streams.purge(CHANGELOG_STREAM, { filter: changelogSubject(p) });
      const keys = keysOf(p, 31, 'm');
      const model = new Map<string, StateRecord>();
      // Epochs of their own per run: a message id names its writer's epoch and predecessor, and
      // the purge above starts the subject's predecessors over.
      let epoch = run * 1000;
      // Messages of a few records each: batches go in parts, snapshots in many chunks.
      const opts = { maxBytes: 300 };
      let w = await claimChangelog(nc, js, jsm, p, epoch, 'node-a', opts);
      // The "node" that restores from its local position as it goes.
      const follower = openStateStore(tempDir());
      let seq = 0;
      // Whether the follower has restored, and a snapshot compacted the log since.
      let restored = false;
      let compacted = false;
      let snapping: Promise<unknown> | undefined;
      for (const step of steps) {
        const recs: ChangelogRecord[] = [];
        for (const i of step.keys) {
          seq++;
          const rec = record({ i, at: seq }, seq);
          model.set(keys[i]!, rec);
          recs.push(['counter', keys[i]!, rec]);
        }
        seq++;
        await w.appendBatch({ seq, at: seq, n: model.size }, recs);
        await snapping;
        snapping = undefined;
        if (step.snapshot) {
          compacted = true;
          snapping = w.snapshot(
            { seq, at: seq, n: model.size },
            [...model].map(([k, r]) => ['counter', k, r] as ChangelogRecord),
          );
          if (!step.overlap) await snapping;
        }
        if (step.restore) {
          await snapping;
          w = await claimChangelog(nc, js, jsm, p, ++epoch, 'node-b', opts);
          const r = await restoreFromChangelog(js, follower, PARTITIONS, w);
          assert.equal(r.checkpoint.seq, seq);
          assert.deepEqual(new Map(statesAll(follower)), model);
          assert.equal(r.checkpoint.n, model.size);
          // From its own position when the log still continues from there.
          assert.equal(r.full, !restored || compacted);
          restored = true;
          compacted = false;
        }
      }
      await snapping;
      w = await claimChangelog(nc, js, jsm, p, ++epoch, 'node-c', opts);
      const fresh = openStateStore(tempDir());
      const whole = await restoreFromChangelog(js, fresh, PARTITIONS, w);
      assert.equal(whole.full, true);
      assert.equal(whole.checkpoint.seq, seq);
      assert.equal(whole.checkpoint.n, model.size);
      assert.deepEqual(new Map(statesAll(fresh)), model);
      // Compaction: nothing before the newest snapshot's first chunk is left.
      const first = decodeMessage(
        (await jsm.streams.getMessage(CHANGELOG_STREAM, { seq: (await subjectFirst(p))! }))!.data,
      );
      if (steps.some((s) => s.snapshot)) assert.equal(first.k, 's');
      else assert.equal(first.k, 'c');
      await fresh.close();
      await follower.close();
    }
  });
});

function statesAll(store: StateStore): [string, StateRecord][] {
  return [...store.states.getRange()].map(({ key, value }) => [key[1], value]);
}

async function subjectFirst(p: number): Promise<number | undefined> {
  const js = jetstream(nc);
  const c = await js.consumers.get(CHANGELOG_STREAM, { filter_subjects: [changelogSubject(p)] });
  const m = await c.next({ expires: 2000 });
  return m?.seq;
}
