// Partita nodes on a 3-server NATS cluster with replicated (R3) streams and buckets: one server
// killed under load, the nodes reconnect and carry on, and no acknowledged event is lost or doubled.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { inStream } from '../../runtime/index.js';
import { check, testSeed } from '../helpers/check.js';
import { startTestNatsCluster, type TestNatsCluster } from '../helpers/nats-cluster.js';
import { type NodeProcess, spawnPartita } from '../helpers/node-process.js';
import { Workload } from '../helpers/workload.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('../fixtures/actors/', import.meta.url));
const PARTITIONS = 8;

let cluster: TestNatsCluster;
let nc: NatsConnection;
const nodes: NodeProcess[] = [];

before(async () => {
  cluster = await startTestNatsCluster({ size: 3, partitions: PARTITIONS });
  nc = await cluster.connect({ name: 'producer' });
});
after(async () => {
  for (const n of nodes) await n.kill('SIGKILL');
  await cluster?.stop();
});

it('keeps processing when one NATS server of three dies, and loses nothing', async () => {
  const seed = testSeed();
  console.log(`nats failover seed=${seed}`);
  const url = cluster.servers.join(',');
  for (const id of ['n1', 'n2']) {
    const args = ['node', '--nats', url, '--actors', FIXTURE_ACTORS, '--data', join(cluster.dir, id)];
    nodes.push(await spawnPartita([...args, '--id', id, '--partitions', String(PARTITIONS)], {}, 60_000));
  }
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(inStream(0));
  assert.equal(info.config.num_replicas, 3, 'input streams are replicated on a cluster');

  const work = new Workload(nc, seed);
  await work.publishAcked(2000);
  // Kill the server that leads most partition streams, while events keep coming.
  const leaders = new Map<string, number>();
  for (let p = 0; p < PARTITIONS; p++) {
    const l = (await jsm.streams.info(inStream(p))).cluster?.leader ?? '';
    leaders.set(l, (leaders.get(l) ?? 0) + 1);
  }
  const victimName = [...leaders.entries()].sort((a, b) => b[1] - a[1])[0]![0];
  const victim = cluster.cluster.members.find((m) => m.name === victimName) ?? cluster.cluster.members[0]!;
  const during = work.publishAcked(3000);
  await check(() => work.published > 2500, 20_000, 'load under way');
  await victim.kill();
  await during;
  await work.publishAcked(500);
  await work.verify(PARTITIONS, 90_000);
  await victim.restart();
  for (const n of nodes) assert.equal(n.child.exitCode, null, 'nodes kept running');
});
