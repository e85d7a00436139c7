// kill -9 the node at seeded random moments under load, restart it on the same data dir, and find
// every actor's state equal to a straight fold of the events (exactly-once) or holding every
// event (at-least-once).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { afterEach, beforeEach, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { inStream, STATE_BUCKET } from '../../runtime/index.js';
import { type Account, chainStep } from '../fixtures/actors/account.js';
import { check, seededRandom, testSeed } from '../helpers/check.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { type NodeProcess, spawnPartita } from '../helpers/node-process.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('../fixtures/actors/', import.meta.url));
const EVENTS = 20_000;
const KEYS = 150;
const KILLS = 6;
const PARTITIONS = 8;

let nats: TestNats;
let nc: NatsConnection;
let node: NodeProcess | undefined;

beforeEach(async () => {
  nats = await startTestNats({ partitions: PARTITIONS });
  nc = await nats.connect();
});
afterEach(async () => {
  await node?.kill('SIGKILL');
  await nats?.stop();
});

for (const durability of ['sync', 'process'] as const) {
  it(`survives repeated kill -9 with exactly-once state (durability ${durability})`, () =>
    crashRun(durability));
}

async function crashRun(durability: 'sync' | 'process') {
  const seed = testSeed();
  console.log(`crash test (${durability}) seed=${seed} (PARTITA_TEST_SEED=${seed} reproduces it)`);
  const rnd = seededRandom(seed);
  const dataDir = join(nats.dir, 'node');
  const args = ['node', '--nats', nats.url, '--actors', FIXTURE_ACTORS, '--data', dataDir];
  args.push('--id', 'crashy', '--durability', durability);
  node = await spawnPartita(args);

  const expected = new Map<string, Account>();
  const ids = new Map<string, number[]>();
  let published = 0;
  const publishSome = async (n: number) => {
    const end = Math.min(EVENTS, published + n);
    for (; published < end; ) {
      const id = ++published;
      // Hot keys and a long tail.
      const k = rnd() < 0.3 ? Math.floor(rnd() * 5) : Math.floor(rnd() * KEYS);
      const key = `k${k}`;
      const amount = Math.floor(rnd() * 1000);
      const s = expected.get(key) ?? { count: 0, total: 0, chain: 0 };
      expected.set(key, { count: s.count + 1, total: s.total + amount, chain: chainStep(s.chain, id) });
      ids.set(key, [...(ids.get(key) ?? []), id]);
      nc.publish(`events.tx.${key}`, JSON.stringify({ id, amount }));
    }
    await nc.flush();
  };

  for (let kill = 0; kill < KILLS; kill++) {
    // Publish a seeded amount, let the node work for a seeded while, then kill it mid-flight.
    await publishSome(Math.floor(EVENTS / (KILLS + 1)));
    await new Promise((r) => setTimeout(r, 50 + Math.floor(rnd() * 400)));
    await node.kill('SIGKILL');
    // Sometimes publish while it is down.
    if (rnd() < 0.5) await publishSome(500);
    node = await spawnPartita(args);
  }
  await publishSome(EVENTS);

  const jsm = await jetstreamManager(nc);
  let stored = 0;
  for (let p = 0; p < PARTITIONS; p++) stored += (await jsm.streams.info(inStream(p))).state.messages;
  assert.equal(stored, EVENTS, 'every published event is in the input streams');

  const kv = await new Kvm(nc).open(STATE_BUCKET);
  for (const [key, want] of expected) {
    const got = await check(
      async () => {
        const v = (await kv.get(`account.${key}`))?.json<{ state: Account }>();
        return v && v.state.count >= want.count ? v : undefined;
      },
      60_000,
      `account ${key} to reach ${want.count} events`,
    );
    assert.deepEqual(got.state, want, `exactly-once state of ${key} (seed ${seed})`);
    const seen = (await kv.get(`seen.${key}`))?.json<{ state: { ids: Record<string, 1> } }>();
    const missing = (ids.get(key) ?? []).filter((id) => !seen?.state.ids[String(id)]);
    assert.deepEqual(missing, [], `at-least-once ids of ${key} (seed ${seed})`);
  }
  assert.equal(await node.kill('SIGTERM'), 0);
}
