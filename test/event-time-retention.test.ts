// Retention: raw events (input streams, PARTITA_LATE) and aggregates (PARTITA_AGG) keep what they
// are configured to; an explicit value also changes an existing deployment, a default does not.
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { actorsByType, applyBatch, type RawEvent } from '../runtime/batch.js';
import { newClock } from '../runtime/event-time.js';
import { AGG_STREAM, defineActor, ensureTopology, inStream, LATE_STREAM } from '../runtime/index.js';
import type { WindowResult } from '../runtime/types.js';
import { startTestNats, type TestNats } from './helpers/nats.js';

const DAY = 86_400_000;
let nats: TestNats;
let nc: NatsConnection;

before(async () => {
  nats = await startTestNats({ partitions: 2 });
  nc = await nats.connect();
});
after(async () => {
  await nc?.close();
  await nats?.stop();
});

async function maxAgesMs(): Promise<[number, number, number]> {
  const jsm = await jetstreamManager(nc);
  const age = async (s: string) => (await jsm.streams.info(s)).config.max_age / 1_000_000;
  return [await age(inStream(1)), await age(LATE_STREAM), await age(AGG_STREAM)];
}

it('defaults keep raw events 90 days and aggregates 2 years', async () => {
  assert.deepEqual(await maxAgesMs(), [90 * DAY, 90 * DAY, 730 * DAY]);
});

it('explicit retention applies to an existing deployment; defaults leave it alone', async () => {
  await ensureTopology(nc, { eventsMaxAgeMs: 7 * DAY, aggregatesMaxAgeMs: 365 * DAY });
  assert.deepEqual(await maxAgesMs(), [7 * DAY, 7 * DAY, 365 * DAY]);
  await ensureTopology(nc, {});
  assert.deepEqual(await maxAgesMs(), [7 * DAY, 7 * DAY, 365 * DAY]);
});

it('window results leave the state once their end is older than the retention', () => {
  const def = defineActor<{ windows?: { w: WindowResult[] } }>({
    name: 'ret',
    events: ['r'],
    windows: { w: { kind: 'tumbling', size: 10, keep: 100, retention: 30 } },
    initial: () => ({}),
    handle() {},
  });
  const byType = actorsByType([{ def, name: 'ret', guarantee: 'exactly-once', file: 'ret' }]);
  const events: RawEvent[] = Array.from({ length: 30 }, (_, i) => ({
    seq: i + 1,
    type: 'r',
    key: 'k',
    data: new Uint8Array(Buffer.from(JSON.stringify({ ts: 1000 + i * 5 }))),
    msgpack: false,
    publishMs: 1000 + i * 5,
    headers: null,
  }));
  const out = applyBatch(byType, events, () => undefined, {
    partition: 0,
    partitions: 1,
    maxEventBytes: 1000,
    maxAttempts: 1,
    now: 1,
    time: { clock: newClock(), wakes: () => [] },
  });
  const state = out.writes[0]!.record.s as { windows: { w: WindowResult[] } };
  // Retention is applied as results are kept, against the watermark that closed the newest one.
  const ends = state.windows.w.map((r) => r.end);
  const newest = ends[ends.length - 1]!;
  assert.equal(newest, 1140, 'the newest closed window is kept');
  for (const e of ends) assert.ok(e + 30 >= newest, `result ending ${e} is past its retention`);
  assert.equal(ends.length, 4, `older results dropped: ${ends}`);
  assert.deepEqual(
    ends,
    [...ends].sort((a, b) => a - b),
  );
});
