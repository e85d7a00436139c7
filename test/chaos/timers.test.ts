// kill -9 a node while windows are open and timers pending, restart it on the same data dir, and
// find every window result in PARTITA_AGG exactly once with the right figures, and every timer
// fired exactly once in the committed state.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { afterEach, beforeEach, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { AGG_STREAM, STATE_BUCKET } from '../../runtime/index.js';
import { check, seededRandom, testSeed } from '../helpers/check.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { type NodeProcess, spawnPartita } from '../helpers/node-process.js';

const ACTORS = fileURLToPath(new URL('../fixtures/chaos-time-actors/', import.meta.url));
const KEYS = 12;
const KILLS = 4;

let nats: TestNats;
let nc: NatsConnection;
let node: NodeProcess | undefined;

beforeEach(async () => {
  nats = await startTestNats({ partitions: 4 });
  nc = await nats.connect();
});
afterEach(async () => {
  await node?.kill('SIGKILL');
  await nats?.stop();
});

type Buckets = Map<string, { count: number; sum: number }>;
type Timers = Map<string, Set<string>>;

/** Publishes meter events and remembers the windows and timers they must produce. */
function expectations(random: () => number) {
  const buckets: Buckets = new Map();
  const timers: Timers = new Map();
  let n = 0;
  const publish = () => {
    const key = `m${Math.floor(random() * KEYS)}`;
    n++;
    const ts = Date.now();
    const timer = n % 7 === 0;
    nc.publish(`events.meter.${key}`, JSON.stringify({ ts, n, timer }));
    const b = `${key}/${Math.floor(ts / 1000) * 1000}`;
    const w = buckets.get(b) ?? { count: 0, sum: 0 };
    buckets.set(b, { count: w.count + 1, sum: w.sum + n });
    if (timer) {
      const set = timers.get(key) ?? new Set();
      set.add(`e${n}`).add(`p${n}`);
      timers.set(key, set);
    }
  };
  /** About 300 events/s for `ms`. */
  const publishFor = async (ms: number) => {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      for (let i = 0; i < 6; i++) publish();
      await new Promise((r) => setTimeout(r, 20));
    }
    await nc.flush();
  };
  return { buckets, timers, publish, publishFor };
}

const nodeArgs = (id: string) => [
  'node',
  '--nats',
  nats.url,
  '--actors',
  ACTORS,
  '--data',
  join(nats.dir, id),
  '--id',
  id,
];

it('windows and timers fire exactly once across kill -9', async () => {
  const seed = testSeed();
  console.log(`timers chaos seed=${seed} (PARTITA_TEST_SEED=${seed} reproduces it)`);
  const random = seededRandom(seed);
  node = await spawnPartita(nodeArgs('timed'));
  const { buckets, timers, publish } = expectations(random);

  // Publish for a while at ~300 events/s, killing the node at seeded moments; the last kill comes
  // after publishing stopped, while the last windows and timers still wait for the idle watermark.
  for (let kill = 0; kill < KILLS; kill++) {
    const until = Date.now() + 400 + Math.floor(random() * 900);
    const publishing = kill < KILLS - 1;
    while (Date.now() < until) {
      if (publishing) for (let i = 0; i < 6; i++) publish();
      await new Promise((r) => setTimeout(r, 20));
    }
    await nc.flush();
    await node.kill('SIGKILL');
    if (publishing && random() < 0.5) for (let i = 0; i < 50; i++) publish();
    node = await spawnPartita(nodeArgs('timed'));
  }
  await nc.flush();
  await verify(buckets, timers);
  assert.equal(await node.kill('SIGTERM'), 0);
});

it('open windows and pending timers move with their partitions to another node', async () => {
  const seed = testSeed();
  console.log(`timers handoff seed=${seed} (PARTITA_TEST_SEED=${seed} reproduces it)`);
  const { buckets, timers, publishFor } = expectations(seededRandom(seed));
  node = await spawnPartita(nodeArgs('a'));
  await publishFor(800);
  // b joins: half the partitions move to it by graceful handoff and a restore from the bucket.
  const b = await spawnPartita(nodeArgs('b'));
  try {
    await publishFor(1200);
    // a leaves: the rest move to b, with their open windows and pending timers.
    assert.equal(await node.kill('SIGTERM'), 0);
    node = b;
    await publishFor(300);
    await verify(buckets, timers);
  } finally {
    await b.kill('SIGTERM');
  }
});

/** Every window exactly once in PARTITA_AGG with every event; every timer exactly once in the state. */
async function verify(buckets: Buckets, timers: Timers) {
  // Every window result, as JetStream stored it (duplicates by message id are dropped there).
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const results = new Map<string, { count: number; sum: number }[]>();
  let read = 0;
  const readAll = async () => {
    const info = await jsm.streams.info(AGG_STREAM);
    if (info.state.messages === read) return;
    const c = await js.consumers.get(AGG_STREAM, {
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: read + 1,
    });
    while (read < info.state.messages) {
      const m = await c.next({ expires: 2000 });
      if (!m) break;
      read++;
      const r = m.json<{
        key: string;
        start: number;
        count: number;
        value: { sum: number };
        update: number;
      }>();
      assert.equal(r.update, 0, 'no late updates with zero lateness');
      const k = `${r.key}/${r.start}`;
      results.set(k, [...(results.get(k) ?? []), { count: r.count, sum: r.value.sum }]);
    }
  };
  await check(
    async () => {
      await readAll();
      return results.size >= buckets.size;
    },
    30_000,
    `all ${buckets.size} windows to close (idle partitions included)`,
  );
  await readAll();
  for (const [k, want] of buckets) {
    assert.deepEqual(results.get(k), [want], `window ${k}: exactly one result with every event`);
  }
  assert.equal(results.size, buckets.size, 'no window result for a window with no events');

  const kv = await new Kvm(nc).open(STATE_BUCKET);
  for (const [key, want] of timers) {
    const fired = await check(
      async () => {
        const e = await kv.get(`meter.${key}`);
        const s = e?.json<{ state: { fired: string[] } }>().state;
        return s && s.fired.length >= want.size ? s.fired : undefined;
      },
      20_000,
      `timers of ${key}`,
    );
    assert.equal(new Set(fired).size, fired.length, `${key}: a timer fired twice`);
    assert.deepEqual(new Set(fired), want, `${key}: every timer fired`);
  }
}
