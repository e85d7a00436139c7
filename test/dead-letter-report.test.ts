// `partita dead-letters`: counts by code, type and actor over a window, and the latest entries.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { pino } from 'pino';
import type { DeadLetterReport } from '../runtime/dead-letter-report.js';
import { DLQ_STREAM, type PartitaNode, startNode } from '../runtime/index.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { PARTITA_BIN } from './helpers/node-process.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));
let nats: TestNats;
let node: PartitaNode;

before(async () => {
  nats = await startTestNats({ partitions: 2 });
  node = await startNode({
    natsUrl: nats.url,
    actorsDir: FIXTURE_ACTORS,
    dataDir: join(nats.dir, 'node'),
    threads: 1,
    logger: pino({ level: 'silent' }),
  });
});
after(async () => {
  await node?.stop();
  await nats?.stop();
});

const cli = (...args: string[]) => {
  const r = spawnSync(process.execPath, [PARTITA_BIN, 'dead-letters', '--nats', nats.url, ...args], {
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
};

it('sums the dead-letter stream by code, type and actor, newest last', async () => {
  const empty = JSON.parse(cli('--json')) as DeadLetterReport;
  assert.equal(empty.total, 0);
  const nc = await nats.connect();
  const js = jetstream(nc);
  for (let i = 0; i < 3; i++) await js.publish(`events.tx.k${i}`, 'not json');
  for (let i = 0; i < 2; i++) await js.publish(`events.nobody.k${i}`, '{}');
  await js.publish('events.risky.k1', JSON.stringify({ fail: true }));
  const jsm = await jetstreamManager(nc);
  await check(
    async () => (await jsm.streams.info(DLQ_STREAM)).state.messages === 6,
    15_000,
    '6 dead letters',
  );

  const r = JSON.parse(cli('--json', '--limit', '2')) as DeadLetterReport;
  assert.equal(r.total, 6);
  assert.deepEqual(r.byCode, { PARTITA_ERR_DECODE: 3, PARTITA_ERR_UNKNOWN_TYPE: 2, PARTITA_ERR_HANDLER: 1 });
  assert.deepEqual(r.byType, { tx: 3, nobody: 2, risky: 1 });
  assert.deepEqual(r.byActor, { flaky: 1 });
  assert.equal(r.latest.length, 2);
  assert.ok(r.latest[0]!.seq < r.latest[1]!.seq);

  const tx = JSON.parse(cli('--json', '--type', 'tx')) as DeadLetterReport;
  assert.equal(tx.total, 3);
  // Partitions dead-letter concurrently, so the stream's order across keys is not publish order.
  assert.deepEqual(tx.latest.map((e) => e.subject).sort(), ['events.tx.k0', 'events.tx.k1', 'events.tx.k2']);
  assert.ok(tx.latest.every((e, i) => i === 0 || tx.latest[i - 1]!.seq < e.seq));
  const text = cli('--since', '10m');
  assert.match(text, /dead letters since .*: 6/);
  assert.match(text, /by code: {2}PARTITA_ERR_DECODE 3, PARTITA_ERR_UNKNOWN_TYPE 2, PARTITA_ERR_HANDLER 1/);
  const bad = spawnSync(
    process.execPath,
    [PARTITA_BIN, 'dead-letters', '--nats', nats.url, '--since', 'soon'],
    {
      encoding: 'utf8',
    },
  );
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--since must be a duration/);
});
