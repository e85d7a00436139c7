// LagMonitor: lag is read from JetStream, so it grows while a partition commits nothing, and a
// partition's series go when the node no longer owns it.
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { pino } from 'pino';
import { Gauge } from 'prom-client';
import { inStream, partitionOf } from '../runtime/index.js';
import { LagMonitor, type LagSource } from '../runtime/lag-monitor.js';
import { createNodeMetrics } from '../runtime/metrics.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';

let nats: TestNats;
before(async () => {
  nats = await startTestNats({ partitions: 2 });
});
after(async () => {
  await nats?.stop();
});

it('samples lag in events and seconds from the stream, and drops partitions no longer owned', async () => {
  const nc = await nats.connect();
  const js = jetstream(nc);
  const key = ['a', 'b', 'c', 'd'].find((k) => partitionOf(k, 2) === 0)!;
  for (let i = 0; i < 5; i++) await js.publish(`events.any.${key}`, '{}');
  // Acknowledged by the ingest stream; lag counts what the partition's stream has sourced.
  const jsm = await jetstreamManager(nc);
  await check(async () => (await jsm.streams.info(inStream(0))).state.messages === 5, 10_000, 'sourced');
  const metrics = createNodeMetrics();
  // Any per-partition gauge follows ownership, such as one another part of the runtime adds.
  const other = new Gauge({
    name: 'test_other_seconds',
    help: 'x',
    labelNames: ['partition'],
    registers: [metrics.registry],
  });
  other.set({ partition: '0' }, 1);
  metrics.eventsIn.inc({ partition: '0' }, 7);
  const source = { partition: 0, stream: inStream(0), committedSeq: 0, lastCommitAt: Date.now() - 3000 };
  let sources: LagSource[] = [source];
  const monitor = new LagMonitor(
    await jetstreamManager(nc),
    metrics,
    () => sources,
    pino({ level: 'silent' }),
  );
  const value = async (name: string) =>
    (await metrics.registry.getSingleMetric(name)!.get()).values.find((v) => v.labels.partition === '0')
      ?.value;

  await monitor.sample();
  assert.equal(await value('partita_consumer_lag_messages'), 5);
  const first = (await value('partita_consumer_lag_seconds'))!;
  assert.ok(first >= 0);
  assert.ok((await value('partita_checkpoint_age_seconds'))! >= 3);
  // Nothing commits: the lag in seconds grows.
  await check(
    async () => {
      await monitor.sample();
      return (await value('partita_consumer_lag_seconds'))! > first + 0.2;
    },
    5000,
    'lag in seconds to grow',
  );
  source.committedSeq = 3;
  await monitor.sample();
  assert.equal(await value('partita_consumer_lag_messages'), 2);
  source.committedSeq = 5;
  await monitor.sample();
  assert.equal(await value('partita_consumer_lag_messages'), 0);
  assert.equal(await value('partita_consumer_lag_seconds'), 0);
  // The partition moves away: its series go with it.
  sources = [];
  monitor.refreshAges();
  assert.equal(await value('partita_consumer_lag_messages'), undefined);
  assert.equal(await value('partita_checkpoint_age_seconds'), undefined);
  assert.equal(await value('test_other_seconds'), undefined);
  assert.equal(await value('partita_events_in_total'), 7, 'counters stay');
  await monitor.stop();
});
