// Structured logs: a node's lines carry `node`; a partition's add `partition`; an actor's add
// `actor`, so one query finds everything about any of them.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { jetstream } from '@nats-io/jetstream';
import { createLogger, type PartitaNode, partitionOf, startNode } from '../runtime/index.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));

let nats: TestNats;
let node: PartitaNode;
const lines: Record<string, unknown>[] = [];

before(async () => {
  nats = await startTestNats({ partitions: 4 });
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n'))
        if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  node = await startNode({
    natsUrl: nats.url,
    actorsDir: FIXTURE_ACTORS,
    dataDir: join(nats.dir, 'node'),
    id: 'log-node',
    threads: 1,
    logger: createLogger({ node: 'log-node' }, sink),
  });
});
after(async () => {
  await node?.stop();
  await nats?.stop();
});

it('a dead letter from a handler is logged with node, partition and actor', async () => {
  const nc = await nats.connect();
  await jetstream(nc).publish('events.risky.k9', JSON.stringify({ fail: true }));
  const line = await check(
    () => lines.find((l) => l.msg === 'event dead-lettered'),
    15_000,
    'the dead-letter log line',
  );
  assert.equal(line.node, 'log-node');
  assert.equal(line.partition, partitionOf('k9', 4));
  assert.equal(line.actor, 'flaky');
  assert.equal(line.code, 'PARTITA_ERR_HANDLER');
  assert.equal(line.level, 40);
  // Every line of the node names it.
  assert.ok(lines.length > 1 && lines.every((l) => l.node === 'log-node'));
});
