// kill -9 the node at seeded random moments under load, restart it on the same data dir, and find
// every actor's state equal to a straight fold of the events (exactly-once) or holding every
// event (at-least-once).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { afterEach, beforeEach, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { NatsConnection } from '@nats-io/transport-node';
import { testSeed } from '../helpers/check.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { type NodeProcess, spawnPartita } from '../helpers/node-process.js';
import { Workload } from '../helpers/workload.js';

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
  const dataDir = join(nats.dir, 'node');
  const args = ['node', '--nats', nats.url, '--actors', FIXTURE_ACTORS, '--data', dataDir];
  args.push('--id', 'crashy', '--durability', durability);
  node = await spawnPartita(args);

  const work = new Workload(nc, seed, KEYS);
  const publishSome = (n: number) => work.publish(Math.min(n, EVENTS - work.published));

  for (let kill = 0; kill < KILLS; kill++) {
    // Publish a seeded amount, let the node work for a seeded while, then kill it mid-flight.
    await publishSome(Math.floor(EVENTS / (KILLS + 1)));
    await new Promise((r) => setTimeout(r, 50 + Math.floor(work.random() * 400)));
    await node.kill('SIGKILL');
    // Sometimes publish while it is down.
    if (work.random() < 0.5) await publishSome(500);
    node = await spawnPartita(args);
  }
  await publishSome(EVENTS);

  await work.verify(PARTITIONS);
  assert.equal(await node.kill('SIGTERM'), 0);
}
