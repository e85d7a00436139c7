// PARTITA_DLQ has a retention (issue 17, finding 1): 30 days and 1 GiB by default, the oldest
// dropped first, a duplicate window that covers a batch published again after a retake; an
// explicit value (option or environment) also changes an existing deployment's stream.
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { DiscardPolicy, jetstreamManager } from '@nats-io/jetstream';
import { DLQ_STREAM, ensureTopology } from '../runtime/index.js';
import { startTestNats, type TestNats } from './helpers/nats.js';

const DAY_NS = 86_400_000 * 1_000_000;
let nats: TestNats;

before(async () => {
  nats = await startTestNats({ partitions: 2 });
});
after(async () => {
  await nats?.stop();
});

it('PARTITA_DLQ keeps 30 days and 1 GiB by default; explicit limits change an existing stream', async () => {
  const nc = await nats.connect();
  const jsm = await jetstreamManager(nc);
  let { config } = await jsm.streams.info(DLQ_STREAM);
  assert.equal(config.max_age, 30 * DAY_NS);
  assert.equal(config.max_bytes, 1024 ** 3);
  assert.equal(config.discard, DiscardPolicy.Old);
  assert.equal(config.duplicate_window, 10 * 60_000 * 1_000_000);

  // Without explicit values, a node leaves what an operator set alone.
  await jsm.streams.update(DLQ_STREAM, { ...config, max_age: 7 * DAY_NS });
  await ensureTopology(nc);
  assert.equal((await jsm.streams.info(DLQ_STREAM)).config.max_age, 7 * DAY_NS);

  await ensureTopology(nc, { dlqMaxAgeMs: 60_000, dlqMaxBytes: 5_000_000 });
  ({ config } = await jsm.streams.info(DLQ_STREAM));
  assert.equal(config.max_age, 60_000 * 1_000_000);
  assert.equal(config.max_bytes, 5_000_000);
  // The server refuses a duplicate window longer than the max age.
  assert.equal(config.duplicate_window, 60_000 * 1_000_000);

  process.env.PARTITA_DLQ_MAX_BYTES = '-1';
  try {
    await ensureTopology(nc);
  } finally {
    delete process.env.PARTITA_DLQ_MAX_BYTES;
  }
  assert.equal((await jsm.streams.info(DLQ_STREAM)).config.max_bytes, -1);
});
