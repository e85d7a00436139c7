// A flood of bad events is worked off at the node's rate: every partition keeps its lease, each bad
// event is dead-lettered exactly once, every good event is applied once, and the log says so in a
// few lines rather than one per dead letter (issue 17, finding 1; bench/flood.ts runs the full one).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import {
  createLogger,
  DLQ_HEADERS,
  DLQ_STREAM,
  ensureTopology,
  type PartitaNode,
  STATE_BUCKET,
  startNode,
} from '../runtime/index.js';
import { check, seededRandom, testSeed } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { spawnPartita } from './helpers/node-process.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));
const BAD = 20_000;
const GOOD = 2_000;
const ACCOUNTS = 40;

let nats: TestNats;
let node: PartitaNode;
let lines = 0;

before(async () => {
  nats = await startTestNats({ partitions: 8 });
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines += chunk
        .toString()
        .split('\n')
        .filter((l) => l !== '').length;
      done();
    },
  });
  node = await startNode({
    natsUrl: nats.url,
    actorsDir: FIXTURE_ACTORS,
    dataDir: join(nats.dir, 'node'),
    id: 'flood-node',
    threads: 1,
    logger: createLogger({ node: 'flood-node' }, sink),
  });
});
after(async () => {
  await node?.stop();
  await nats?.stop();
});

async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = node.metrics.registry.getSingleMetric(name);
  assert.ok(m, `${name} is registered`);
  const { values } = await m.get();
  return values
    .filter((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l))
    .reduce((a, v) => a + v.value, 0);
}

it('works off 20k bad events mixed with good ones: leases kept, one dead letter each, few log lines', async () => {
  const seed = testSeed();
  console.log(`seed ${seed}`);
  const rnd = seededRandom(seed);
  const nc = await nats.connect();
  const js = jetstream(nc);
  // Bad and good events interleaved at random, published as fast as JetStream takes them.
  const expected = new Map<string, { count: number; total: number }>();
  let bad = 0;
  let good = 0;
  let inFlight: Promise<unknown>[] = [];
  while (bad < BAD || good < GOOD) {
    if (good < GOOD && (bad >= BAD || rnd() < GOOD / (BAD + GOOD))) {
      const key = `a${Math.floor(rnd() * ACCOUNTS)}`;
      const amount = 1 + Math.floor(rnd() * 100);
      const e = expected.get(key) ?? { count: 0, total: 0 };
      expected.set(key, { count: e.count + 1, total: e.total + amount });
      inFlight.push(js.publish(`events.tx.${key}`, JSON.stringify({ id: good++, amount })));
    } else {
      // A plain publish: the flood's producer is cheap, so the node's own main thread is measured
      // (it shares this process), not a promise per bad event here.
      nc.publish(`events.nosuchtype.b${bad++}`, JSON.stringify({ n: rnd() }));
    }
    if (inFlight.length >= 1000 || (bad + good) % 1000 === 0) {
      await Promise.all(inFlight);
      await nc.flush();
      inFlight = [];
    }
  }
  await Promise.all(inFlight);
  await nc.flush();

  await check(
    async () =>
      (await metric('partita_events_dead_lettered_total', { code: 'PARTITA_ERR_UNKNOWN_TYPE' })) >= BAD,
    120_000,
    'every bad event dead-lettered',
  );
  const kv = await new Kvm(nc).open(STATE_BUCKET);
  for (const [key, want] of expected) {
    await check(
      async () => {
        const s = (await kv.get(`account.${key}`))?.json<{ state: { count: number } }>().state;
        return s && s.count >= want.count ? s : undefined;
      },
      60_000,
      `account ${key} applied`,
    );
    const s = (await kv.get(`account.${key}`))!.json<{ state: { count: number; total: number } }>().state;
    assert.deepEqual(
      { count: s.count, total: s.total },
      want,
      `account ${key}: every good event applied once`,
    );
  }

  // Exactly one dead letter per bad event: read the whole stream once, in order.
  const jsm = await jetstreamManager(nc);
  const { state } = await jsm.streams.info(DLQ_STREAM);
  const seen = new Set<string>();
  const consumer = await js.consumers.get(DLQ_STREAM, { deliver_policy: DeliverPolicy.All });
  const messages = await consumer.consume();
  for await (const m of messages) {
    seen.add(`${m.headers?.get(DLQ_HEADERS.stream)}:${m.headers?.get(DLQ_HEADERS.seq)}`);
    if (m.seq >= state.last_seq) break;
  }
  messages.stop();
  assert.equal(state.messages, BAD, 'the dead-letter stream holds one entry per bad event');
  assert.equal(seen.size, BAD, 'no bad event dead-lettered twice, none missing');
  assert.equal(await metric('partita_events_dead_lettered_total'), BAD, 'each counted once');

  assert.equal(await metric('partita_fenced_batches_total'), 0, 'no batch held back for a lapsed lease');
  assert.equal(await metric('partita_lease_losses_total'), 0, 'no lease lost');
  assert.deepEqual(node.owned(), [0, 1, 2, 3, 4, 5, 6, 7]);
  // Aggregated: a line per code and interval, not one per dead letter.
  assert.ok(lines < BAD / 100, `${lines} log lines for ${BAD} dead letters`);
});

it('dead letters left in outboxes by a crash are published once at restart, read in one pass', async () => {
  const own = await startTestNats({ partitions: 2 });
  try {
    const nc = await own.connect();
    const jsm = await jetstreamManager(nc);
    const dataDir = join(own.dir, 'crash-node');
    const first = await spawnPartita([
      'node',
      '--nats',
      own.url,
      '--data',
      dataDir,
      '--metrics-port',
      '0',
      '--stall-timeout',
      '100ms',
    ]);
    // The dead-letter stream is gone: the batches commit, and their dead letters wait in outboxes.
    await jsm.streams.delete(DLQ_STREAM);
    const js = jetstream(nc);
    const n = 3000;
    let inFlight: Promise<unknown>[] = [];
    for (let i = 0; i < n; i++) {
      inFlight.push(js.publish(`events.nosuchtype.c${i}`, '{}'));
      if (inFlight.length >= 500) {
        await Promise.all(inFlight);
        inFlight = [];
      }
    }
    await Promise.all(inFlight);
    await check(
      async () =>
        /^partita_partitions_stalled 2$/m.test(await (await fetch(`${first.ready.metrics}/metrics`)).text()),
      30_000,
      'both partitions stuck publishing',
    );
    await first.kill('SIGKILL');
    await ensureTopology(nc);
    const again = await startNode({
      natsUrl: own.url,
      dataDir,
      threads: 1,
      logger: createLogger({}, new Writable({ write: (_c, _e, done) => done() })),
    });
    try {
      await check(
        async () => (await jsm.streams.info(DLQ_STREAM)).state.messages >= n,
        60_000,
        'every dead letter stored',
      );
      const { state } = await jsm.streams.info(DLQ_STREAM);
      assert.equal(state.messages, n, 'one dead letter per bad event across the crash');
    } finally {
      await again.stop();
    }
  } finally {
    await own.stop();
  }
});
