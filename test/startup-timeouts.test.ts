// A node that starts while JetStream has no quorum. Its start-up requests (the streams and buckets,
// the watches, the first heartbeat) then go unanswered until the servers come back: a node in a
// soak exited at its start with "PARTITA_ERR_NATS_UNREACHABLE ... (timeout)" while a stream elected
// a leader after a server restart, though its connection was up.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { pino } from 'pino';
import { ensureTopology, inStream, type PartitaNode, STATE_BUCKET, startNode } from '../runtime/index.js';
import { check } from './helpers/check.js';
import { startTestNatsCluster, type TestNatsCluster } from './helpers/nats-cluster.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));
const PARTITIONS = 2;
const KEYS = 20;
const PER_KEY = 10;

const running: { t?: TestNatsCluster; node?: PartitaNode } = {};
after(async () => {
  await running.node?.stop().catch(() => undefined);
  await running.t?.stop();
});

it('waits out JetStream without quorum at its start, then processes every event once', async (t) => {
  const cluster = await startTestNatsCluster({ partitions: PARTITIONS });
  running.t = cluster;
  const nc = await cluster.connect({ name: 'test' });
  await ensureTopology(nc, { partitions: PARTITIONS });
  // Two of three servers down: the one left takes connections but has no meta leader and its
  // streams no leaders, so every JetStream request of the start goes unanswered.
  const [first, ...others] = cluster.cluster.members;
  for (const m of others) await m.kill();

  const lines: string[] = [];
  let failed: unknown;
  const starting = startNode({
    natsUrl: first!.url,
    actorsDir: FIXTURE_ACTORS,
    dataDir: join(cluster.dir, 'n1'),
    id: 'n1',
    threads: 1,
    metricsPort: 0,
    logger: pino({ level: 'warn' }, { write: (s: string) => void lines.push(s) }),
  }).catch((err) => {
    failed = err;
    return undefined;
  });
  // Each retry's line names its code: "timeout" on 2.15, a timeout then 10008 (no meta leader) on 2.10.
  const retries = () => lines.filter((l) => l.includes('retrying') && l.includes('"code":"'));
  const codes = () => retries().map((l) => (JSON.parse(l) as { code: string }).code);
  // The node says why it waits, again and again, and does not give up.
  const outcome = await Promise.race([
    check(() => codes().length >= 2, 300_000, 'two logged retries').then(
      () => 'waiting',
      (err: Error) => err.message,
    ),
    starting.then(() => 'settled'),
  ]);
  t.diagnostic(`retries logged by code: ${codes().join(' ')}`);
  assert.equal(outcome, 'waiting', `the node did not wait: ${(failed as Error | undefined)?.message}`);
  assert.equal(failed, undefined);

  // The servers come back: the node becomes ready.
  for (const m of others) await m.restart();
  const node = await starting;
  assert.ok(node, `the node failed: ${(failed as Error | undefined)?.message}`);
  running.node = node;
  await check(() => node.owned().length === PARTITIONS, 120_000, 'both partitions owned');
  const text = await (await fetch(`${node.metricsUrl}/metrics`)).text();
  for (const code of new Set(codes())) {
    const m = new RegExp(`^partita_nats_refusals_total\\{code="${code}"\\} (\\d+)$`, 'm').exec(text);
    const logged = codes().filter((c) => c === code).length;
    assert.ok(
      m && Number(m[1]) >= logged,
      `partita_nats_refusals_total{code="${code}"} >= ${logged}: ${m?.[0]}`,
    );
  }

  // Every event processed once.
  const js = jetstream(nc);
  for (let i = 0; i < PER_KEY; i++)
    await Promise.all(
      Array.from({ length: KEYS }, (_, k) =>
        js.publish(`events.tx.key-${k}`, JSON.stringify({ id: i * KEYS + k, amount: 1 })),
      ),
    );
  const jsm = await js.jetstreamManager();
  const last = new Map<number, number>();
  for (let p = 0; p < PARTITIONS; p++) last.set(p, (await jsm.streams.info(inStream(p))).state.last_seq);
  await check(
    () =>
      node.progress().length === PARTITIONS &&
      node.progress().every((r) => r.committedSeq >= last.get(r.partition)!),
    120_000,
    'every partition committed up to its last event',
  );
  const kv = await new Kvm(nc).open(STATE_BUCKET);
  const counts = async () => {
    const out: number[] = [];
    for (let k = 0; k < KEYS; k++)
      out.push((await kv.get(`account.key-${k}`))?.json<{ state: { count: number } }>().state.count ?? 0);
    return out;
  };
  // States are published after their commit: wait for them, then none may exceed its events.
  await check(async () => (await counts()).every((c) => c >= PER_KEY), 60_000, 'every state published');
  assert.deepEqual(await counts(), Array(KEYS).fill(PER_KEY), 'each event counted once');
});
