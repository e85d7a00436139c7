// Consumers on the nodes bucket, and a server that refuses one. nats-server 2.15 limits every
// stream to 1000 consumers unless the stream sets a limit; a node that left a consumer behind on
// `KV_partita_nodes` every assignment round filled it within minutes, and a node restarted then
// exited at its start with "10026: maximum consumers limit reached".
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, it } from 'node:test';
import { AckPolicy, type JetStreamManager, jetstreamManager } from '@nats-io/jetstream';
import { pino } from 'pino';
import { type PartitaNode, startNode } from '../runtime/index.js';
import { passingRefusal } from '../runtime/nats-refusal.js';
import { readStatus } from '../runtime/status.js';
import { NODES_BUCKET } from '../runtime/subjects.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';

const NODES_STREAM = `KV_${NODES_BUCKET}`;
const running: { nats?: TestNats; nodes: PartitaNode[] } = { nodes: [] };
after(async () => {
  for (const n of running.nodes) await n.stop().catch(() => undefined);
  await running.nats?.stop();
});

async function consumerCount(jsm: JetStreamManager): Promise<number> {
  return (await jsm.streams.info(NODES_STREAM)).state.consumer_count;
}

/** A JSON-lines logger whose lines the test can read. */
function capturedLogger(lines: string[]) {
  return pino({ level: 'warn' }, { write: (s: string) => void lines.push(s) });
}

it('leaves no consumer behind on the nodes bucket, round after round', async () => {
  const nats = await startTestNats({ partitions: 2, leaseTtlMs: 2000 });
  running.nats = nats;
  const nc = await nats.connect();
  const jsm = await jetstreamManager(nc);
  const node = await startNode({
    natsUrl: nats.url,
    dataDir: join(nats.dir, 'n1'),
    threads: 1,
    logger: pino({ level: 'silent' }),
  });
  running.nodes.push(node);
  // A heartbeat every 500 ms, an assignment round at least as often: wait for 20 heartbeats.
  const from = (await jsm.streams.info(NODES_STREAM)).state.last_seq;
  await check(
    async () => (await jsm.streams.info(NODES_STREAM)).state.last_seq >= from + 20,
    30_000,
    '20 heartbeats',
  );
  // `partita status` and the gateway's status frames list the nodes too.
  for (let i = 0; i < 10; i++) assert.deepEqual((await readStatus(nc)).nodes, [node.id]);
  // The node's watch of the bucket, and nothing else.
  assert.equal(await consumerCount(jsm), 1);
  await node.stop();
  running.nodes = [];
  await nats.stop();
  running.nats = undefined;
});

it('starts a node while the nodes bucket is at the server consumer limit', async (t) => {
  const nats = await startTestNats({ partitions: 2, leaseTtlMs: 2000 });
  running.nats = nats;
  const nc = await nats.connect();
  const [major = 0, minor = 0] = (nc.info?.version ?? '0.0').split('.').map(Number);
  if (major < 2 || (major === 2 && minor < 15)) {
    t.skip(`nats-server ${nc.info?.version} sets no default consumer limit per stream (2.15 does)`);
    await nats.stop();
    running.nats = undefined;
    return;
  }
  const jsm = await jetstreamManager(nc);
  // Fill the bucket up to the server's default limit.
  let filled = 0;
  let refused: string | undefined;
  while (refused === undefined) {
    const batch = Array.from({ length: 50 }, (_, i) =>
      jsm.consumers.add(NODES_STREAM, { durable_name: `filler-${filled + i}`, ack_policy: AckPolicy.None }),
    );
    for (const r of await Promise.allSettled(batch)) {
      if (r.status === 'fulfilled') filled++;
      else refused = passingRefusal(r.reason) ?? `not a passing refusal: ${(r.reason as Error).message}`;
    }
  }
  assert.equal(refused, '10026');
  t.diagnostic(`the server refused consumer ${filled + 1} of ${NODES_STREAM}`);

  const lines: string[] = [];
  let failed: unknown;
  const starting = startNode({
    natsUrl: nats.url,
    dataDir: join(nats.dir, 'n1'),
    threads: 1,
    metricsPort: 0,
    logger: capturedLogger(lines),
  }).catch((err) => {
    failed = err;
    return undefined;
  });
  // The node waits, says why, and does not give up.
  const outcome = await Promise.race([
    check(
      () => lines.some((l) => l.includes('refused (10026') && l.includes(NODES_STREAM)),
      30_000,
      'a logged refusal naming the stream',
    ).then(
      () => 'logged',
      (err: Error) => err.message,
    ),
    starting.then(() => 'settled'),
  ]);
  assert.equal(outcome, 'logged', `the node did not wait: ${(failed as Error | undefined)?.message}`);
  assert.equal(failed, undefined);
  // Room again: the node starts.
  for (let i = 0; i < 5; i++) await jsm.consumers.delete(NODES_STREAM, `filler-${i}`);
  const node = await starting;
  assert.ok(node, `the node failed: ${(failed as Error | undefined)?.message}`);
  running.nodes.push(node);
  await check(() => node.owned().length === 2, 30_000, 'both partitions owned');
  const text = await (await fetch(`${node.metricsUrl}/metrics`)).text();
  const m = /^partita_nats_refusals_total\{code="10026"\} (\d+)$/m.exec(text);
  assert.ok(m && Number(m[1]) >= 1, `partita_nats_refusals_total{code="10026"} counted: ${m?.[0]}`);
});
