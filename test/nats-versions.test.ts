// What Partita relies on from nats-server, asserted on the server the tests run (CI: the newest
// and 2.10.x), so that a release that changes one fails a test naming the dependency; and the
// answers that differ between versions while a stream changes leader, which the runtime must all
// survive. Each assertion's message names the code that depends on it.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiError,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
} from '@nats-io/jetstream';
import { type KV, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  EVENTS_PREFIX,
  inStream,
  META_BUCKET,
  partitionOf,
  STATE_BUCKET,
  STATE_PREFIX,
} from '../runtime/index.js';
import { NATS_REFUSAL_CODES, passingRefusal } from '../runtime/nats-refusal.js';
import { INGEST_STREAM, LEASES_BUCKET } from '../runtime/subjects.js';
import { check, testSeed } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { startTestNatsCluster, type TestNatsCluster } from './helpers/nats-cluster.js';
import { type NodeProcess, spawnPartita } from './helpers/node-process.js';
import { Workload } from './helpers/workload.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));
const LEASE_TTL_MS = 2000;

const cleanup: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const f of cleanup.reverse()) await f().catch(() => undefined);
});

function version(nc: NatsConnection): [number, number] {
  const [major = 0, minor = 0] = (nc.info?.version ?? '0.0').split('.').map(Number);
  return [major, minor];
}

/** The JetStream error code of a refusal, or the error's class for anything else. */
async function refusalOf(op: () => Promise<unknown>): Promise<{ code?: number; message: string }> {
  try {
    await op();
  } catch (err) {
    if (err instanceof JetStreamApiError) return { code: err.code, message: err.message };
    return { message: `${(err as Error).name}: ${(err as Error).message}` };
  }
  assert.fail('the server accepted what it must refuse');
}

describe('one server: the semantics Partita builds on', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let jsm: JetStreamManager;
  before(async () => {
    nats = await startTestNats({ partitions: 2, leaseTtlMs: LEASE_TTL_MS });
    cleanup.push(() => nats.stop());
    nc = await nats.connect();
    jsm = await jetstreamManager(nc);
    console.log(`nats-server ${nc.info?.version}: one server`);
  });

  it('compare-and-set on the leases bucket (partition-lease.ts, node.ts owner records)', async () => {
    const kv: KV = await new Kvm(nc).open(LEASES_BUCKET);
    const key = 'versions-test';
    const rev = await kv.create(key, 'a');
    // acquire(): a create on a held lease fails, and then reads the holder.
    const held = await refusalOf(() => kv.create(key, 'b'));
    assert.equal(held.code, 10071, `create on an existing key: wrong last sequence (${held.message})`);
    // renew(): an update on a stale revision fails; it never overwrites another owner's lease.
    const stale = await refusalOf(() => kv.update(key, 'b', rev + 100));
    assert.equal(stale.code, 10071, `update with a stale revision (${stale.message})`);
    // release(): a delete on a stale revision fails, and is told from a passing refusal by its text.
    const gone = await refusalOf(() => kv.delete(key, { previousSeq: rev + 100 }));
    assert.match(gone.message, /wrong last sequence/i, 'partition-lease.ts release() matches this text');
    // A released (deleted) or purged lease can be created again: the next owner's acquire().
    await kv.delete(key, { previousSeq: rev });
    assert.equal((await kv.get(key))?.operation, 'DEL');
    const again = await kv.create(key, 'c');
    assert.ok(again > rev, 'create on a deleted key');
    await kv.purge(key);
    assert.ok((await kv.create(key, 'd')) > again, 'create on a purged key');
    await kv.purge(key);
  });

  it('lease expiry: not before the TTL counted from the write, and then the key is free (partition-lease.ts)', async () => {
    const kv = await new Kvm(nc).open(LEASES_BUCKET);
    // topology.ts reads the TTL back from the bucket, and the lease's deadline rests on it.
    assert.equal((await kv.status()).ttl, LEASE_TTL_MS, 'the bucket keeps the TTL it was created with');
    const key = 'versions-ttl';
    const sent = performance.now();
    await kv.create(key, 'held');
    // Every read answered before `sent + TTL` must still see the lease: a holder counts its
    // deadline from the moment it sent the write (valid() in partition-lease.ts). No sleep: the
    // reads run back to back until the TTL has passed; a slow machine only makes fewer of them.
    let reads = 0;
    for (;;) {
      const e = await kv.get(key);
      const answered = performance.now();
      if (answered >= sent + LEASE_TTL_MS) break;
      reads++;
      assert.equal(
        e?.operation,
        'PUT',
        `the lease expired ${Math.round(answered - sent)} ms after its write`,
      );
    }
    console.log(`lease present at ${reads} reads within its TTL`);
    // Then the server removes it (its expiry timer runs at about the TTL; 2.10 up to twice it).
    await check(async () => (await kv.get(key)) === null, 20_000, 'the expired lease to be removed');
    await kv.create(key, 'next owner');
    await kv.purge(key);
  });

  it('the state bucket: history 1, and every put republished on partita.state (topology.ts, gateway)', async () => {
    const info = await jsm.streams.info(`KV_${STATE_BUCKET}`);
    assert.equal(
      info.config.max_msgs_per_subject,
      1,
      'history 1: state-scan.ts reads every message as every key',
    );
    assert.deepEqual(
      info.config.republish && { src: info.config.republish.src, dest: info.config.republish.dest },
      { src: `$KV.${STATE_BUCKET}.>`, dest: `${STATE_PREFIX}.>` },
    );
    const js = jetstream(nc);
    const seen: { subject: string; data: string; seq?: string }[] = [];
    const sub = nc.subscribe(`${STATE_PREFIX}.versions.>`, {
      callback: (_e, m) => {
        seen.push({ subject: m.subject, data: m.string(), seq: m.headers?.get('Nats-Sequence') });
      },
    });
    await nc.flush();
    // partition-runner.ts writes states as plain publishes to the bucket's subjects.
    const before = (await jsm.streams.info(`KV_${STATE_BUCKET}`)).state.messages;
    let last = 0;
    for (let i = 1; i <= 5; i++)
      last = (await js.publish(`$KV.${STATE_BUCKET}.versions.k1`, `{"v":${i}}`)).seq;
    await js.publish(`$KV.${STATE_BUCKET}.versions.k2`, '{"v":1}');
    const after = (await jsm.streams.info(`KV_${STATE_BUCKET}`)).state.messages;
    assert.equal(after - before, 2, 'one message per key is kept');
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    assert.equal((await kv.get('versions.k1'))?.string(), '{"v":5}');
    await check(() => seen.length === 6, 10_000, 'six republished puts');
    sub.unsubscribe();
    assert.deepEqual(
      seen.slice(0, 5).map((m) => m.subject),
      Array(5).fill(`${STATE_PREFIX}.versions.k1`),
      'republished on partita.state.<actor>.<key>: the gateway takes actor and key from the subject',
    );
    assert.equal(seen[4]!.data, '{"v":5}');
    assert.equal(seen[4]!.seq, String(last), 'a republished put carries its stream sequence');
  });

  it('expected stream and last subject sequence: the answers verifyPartitionMapping reads (topology.ts)', async () => {
    const js = jetstream(nc);
    const key = 'k1';
    const subject = `${EVENTS_PREFIX}.partita-probe.${key}`;
    // Events land in the ingest stream; the probe never stores (the last sequence cannot match).
    const right = await refusalOf(() =>
      js.publish(subject, '', {
        expect: { streamName: INGEST_STREAM, lastSubjectSequence: 999_999_999_999 },
      }),
    );
    assert.equal(right.code, 10071, `the expected stream, a wrong last sequence (${right.message})`);
    const wrong = await refusalOf(() =>
      js.publish(subject, '', {
        expect: { streamName: inStream(partitionOf(key, 2)), lastSubjectSequence: 999_999_999_999 },
      }),
    );
    assert.equal(wrong.code, 10060, `another stream: expected stream does not match (${wrong.message})`);
  });

  it("a partition consumer's settings are kept as asked (partition-runner.ts)", async () => {
    // What createConsumer asks for: max_ack_pending bounds what a partition buffers (3 × maxBatch).
    const name = 'versions-consumer';
    const c = await jsm.consumers.add(inStream(0), {
      durable_name: name,
      ack_policy: AckPolicy.All,
      ack_wait: 120_000_000_000,
      max_ack_pending: 6000,
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: 5,
    });
    assert.equal(c.config.max_ack_pending, 6000, 'no server or account limit lowers max_ack_pending');
    assert.equal(c.config.ack_policy, AckPolicy.All);
    assert.equal(c.config.opt_start_seq, 5);
    // The stream sets no consumer limit: 2.10 has none, 2.15 applies its default of 1000 while
    // the configuration still says -1 (test/consumer-limit.test.ts covers that limit).
    assert.equal((await jsm.streams.info(inStream(0))).config.max_consumers, -1);
    await jsm.consumers.delete(inStream(0), name);
  });
});

/**
 * Steps a stream's leader down and waits until another server leads it. A server refuses a
 * stepdown while no follower is current (a busy stream), so it is asked again until one takes over.
 */
async function stepDown(nc: NatsConnection, jsm: JetStreamManager, stream: string): Promise<boolean> {
  const before = (await jsm.streams.info(stream).catch(() => null))?.cluster?.leader;
  if (!before) return false;
  let asked = 0;
  await check(
    async () => {
      const now = (await jsm.streams.info(stream).catch(() => null))?.cluster?.leader;
      if (now && now !== before) return true;
      if (Date.now() - asked > 2000) {
        asked = Date.now();
        await nc
          .request(`$JS.API.STREAM.LEADER.STEPDOWN.${stream}`, undefined, { timeout: 5000 })
          .catch(() => undefined);
      }
      return false;
    },
    60_000,
    `a new leader of ${stream}`,
  );
  return true;
}

/** `partita_nats_refusals_total` by code, from a node's /metrics. */
async function refusalsCounted(metricsUrl: string): Promise<Record<string, number>> {
  const text = await (await fetch(`${metricsUrl}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^partita_nats_refusals_total\{code="([^"]+)"\} (\S+)$/gm))
    out[m[1]!] = Number(m[2]);
  return out;
}

describe('a 3-server cluster: stream leaders changing under conditional writes', () => {
  let t: TestNatsCluster;
  before(async () => {
    t = await startTestNatsCluster({ partitions: 4 });
    cleanup.push(() => t.stop());
  });

  it('answers a compare-and-set during a leader change only in ways the lease and owner records handle', async () => {
    const nc = await t.connect({ name: 'versions-cas' });
    const jsm = await jetstreamManager(nc);
    const kv = await new Kvm(nc).create('versions_cas', { history: 1, replicas: 3, ttl: LEASE_TTL_MS });
    const stream = 'KV_versions_cas';
    let rev = await kv.put('p0', 'x');
    const seen: Record<string, number> = {};
    let stop = false;
    const writer = (async () => {
      while (!stop) {
        try {
          rev = await kv.update('p0', 'y', rev);
          seen.stored = (seen.stored ?? 0) + 1;
        } catch (err) {
          let kind: string;
          if (err instanceof JetStreamApiError) {
            const passing = passingRefusal(err);
            // 10071 / 10164 (2.11+, "wrong last sequence" while another write of the key is in
            // flight): a write of ours that timed out landed; the lease takes it for a lost lease
            // (fail safe), an owner record for a conflict (the partition is taken again).
            kind = passing ? `refusal ${passing}` : `api ${err.code}`;
            // 10071 names the key's last sequence; 10164 does not, so read it from the leader.
            const last = /wrong last sequence: (\d+)/.exec(err.message)?.[1];
            if (last) rev = Number(last);
            else if (!passing) rev = (await kv.get('p0').catch(() => null))?.revision ?? rev;
          } else kind = (err as Error).name;
          seen[kind] = (seen[kind] ?? 0) + 1;
          // An answer that comes without a round trip (the connection closing, say) would make
          // this a loop of microtasks that never lets the leader changes' timers run.
          await new Promise((r) => setTimeout(r, 5));
        }
      }
    })();
    try {
      for (let i = 0; i < 6; i++) await stepDown(nc, jsm, stream);
    } finally {
      stop = true;
      await writer;
    }
    console.log(
      `nats-server ${nc.info?.version}: compare-and-set answers across 6 leader changes: ${JSON.stringify(seen)}`,
    );
    const handled = new Set([
      'stored',
      'TimeoutError', // the client's timeout: renew() keeps its deadline, retryRefusals retries it
      'JetStreamNotEnabled', // the client's name for "no responders" (a stream without a leader, 2.10)
      'api 10071',
      'api 10164',
      ...NATS_REFUSAL_CODES.map((c) => `refusal ${c}`),
      'refusal 503',
    ]);
    const unknown = Object.keys(seen).filter((k) => !handled.has(k) && !/^refusal /.test(k));
    assert.deepEqual(unknown, [], 'no answer the runtime does not know');
    assert.ok((seen.stored ?? 0) > 0, 'writes were stored between the leader changes');
  });

  it('a node committing through leader changes of its buckets and input streams loses and doubles nothing', async () => {
    const seed = testSeed();
    console.log(`leader changes seed=${seed}`);
    const nc = await t.connect({ name: 'versions-producer' });
    const jsm = await jetstreamManager(nc);
    const node: NodeProcess = await spawnPartita(
      [
        'node',
        '--nats',
        t.servers.join(','),
        '--actors',
        FIXTURE_ACTORS,
        '--data',
        join(t.dir, 'n1'),
        '--id',
        'n1',
        '--partitions',
        '4',
      ],
      {},
      60_000,
    );
    cleanup.push(() => node.kill('SIGKILL'));
    let exited: number | null | undefined;
    node.child.once('exit', (code) => {
      exited = code;
    });
    const work = new Workload(nc, seed);
    // Up and processing before the leader changes start.
    await work.publishAcked(200);
    await work.verify(4, 60_000);
    const producing = work.publishAcked(4000, 50);
    const streams = [
      `KV_${LEASES_BUCKET}`,
      `KV_${STATE_BUCKET}`,
      `KV_${META_BUCKET}`,
      inStream(0),
      inStream(3),
    ];
    let changes = 0;
    for (let round = 0; round < 3; round++)
      for (const s of streams) if (await stepDown(nc, jsm, s)) changes++;
    await producing;
    console.log(`${changes} leader changes while ${work.published} events were published`);
    await work.verify(4, 90_000);
    assert.equal(exited, undefined, `the node never exited: ${node.stderr().slice(-2000)}`);
    const counted = await refusalsCounted(node.ready.metrics!);
    console.log(`nats-server ${nc.info?.version}: refusals counted: ${JSON.stringify(counted)}`);
    // Counted by code: at least the series of every code the runtime names, from its start.
    for (const code of NATS_REFUSAL_CODES)
      assert.ok(code in counted, `partita_nats_refusals_total{code="${code}"}`);
    const [major, minor] = version(nc);
    if (major === 2 && minor < 11) assert.equal(counted['10163'] ?? 0, 0, '2.10 has no 10163');
    await node.kill('SIGTERM');
  });
});
