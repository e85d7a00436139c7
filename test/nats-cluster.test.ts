// A 3-server NATS cluster with R3 streams and KV: one server killed under load loses no
// acknowledged event, and rejoins when restarted on its store; `partita nats --cluster` forms one.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type JetStreamClient, type JetStreamManager, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import {
  ensureTopology,
  freePorts,
  INGEST_STREAM,
  inStream,
  META_BUCKET,
  partitionOf,
  STATE_BUCKET,
  startNatsCluster,
  waitForJetStream,
} from '../runtime/index.js';
import { readKvLatest } from '../runtime/kv-latest.js';
import { check } from './helpers/check.js';
import { tempDir } from './helpers/nats.js';
import { startTestNatsCluster, type TestNatsCluster } from './helpers/nats-cluster.js';
import { PARTITA_BIN, spawnPartita } from './helpers/node-process.js';

const PARTITIONS = 4;
const KEYS = 97;
const keyOf = (i: number) => `k${i % KEYS}`;

/** The event ids (payload `id`) stored in a stream, read with an ordered consumer. */
async function storedIds(js: JetStreamClient, jsm: JetStreamManager, stream: string): Promise<number[]> {
  const { state } = await jsm.streams.info(stream);
  const ids: number[] = [];
  if (state.messages === 0) return ids;
  const consumer = await js.consumers.get(stream);
  const messages = await consumer.consume({ max_messages: 1000 });
  for await (const m of messages) {
    ids.push((m.json() as { id: number }).id);
    if (m.seq >= state.last_seq) break;
  }
  return ids;
}

/** Every stream (and so every KV bucket) of the account: leader known, both followers current. */
async function allReplicasCurrent(jsm: JetStreamManager): Promise<boolean> {
  for await (const { config } of jsm.streams.list()) {
    const { cluster } = await jsm.streams.info(config.name);
    const replicas = cluster?.replicas ?? [];
    if (!cluster?.leader || replicas.length !== 2) return false;
    if (!replicas.every((r) => r.current && !r.offline)) return false;
  }
  return true;
}

describe('a 3-server NATS cluster', () => {
  let t: TestNatsCluster;
  before(async () => {
    const t0 = Date.now();
    t = await startTestNatsCluster({ partitions: PARTITIONS });
    process.stderr.write(`cluster formed in ${Date.now() - t0} ms\n`);
  });
  after(async () => {
    await t?.stop();
  });

  it('keeps every acknowledged event when one server is killed under load, and the server rejoins', async () => {
    const phases: string[] = [];
    let p0 = Date.now();
    const phase = (what: string) => {
      phases.push(`${what} ${Date.now() - p0} ms`);
      p0 = Date.now();
    };
    const nc = await t.connect({ name: 'producer' });
    const topo = await ensureTopology(nc, { partitions: PARTITIONS, replicas: 3 });
    const js = jetstream(nc);
    const streams = new Map<string, number>();
    for await (const { config } of topo.jsm.streams.list()) streams.set(config.name, config.num_replicas);
    for (const s of [inStream(0), inStream(PARTITIONS - 1), `KV_${STATE_BUCKET}`, `KV_${META_BUCKET}`]) {
      assert.ok(streams.has(s), `${s} exists`);
    }
    for (const [s, r] of streams) assert.equal(r, 3, `${s} has 3 replicas`);
    phase('topology');

    // Phase 1, every server up: core publishes, partitioned by the ingest stream's transform.
    const CORE = 2000;
    for (let i = 0; i < CORE; i++) nc.publish(`events.tx.${keyOf(i)}`, JSON.stringify({ id: i }));
    await nc.flush();
    const total = async () => {
      let n = 0;
      for (let p = 0; p < PARTITIONS; p++) n += (await topo.jsm.streams.info(inStream(p))).state.messages;
      return n;
    };
    await check(async () => (await total()) === CORE, 10_000, `${CORE} core-published events stored`);
    phase('core publish');

    // Phase 2: awaited JetStream publishes from 16 concurrent producers, each retried until
    // acknowledged (Nats-Msg-Id makes a retry of a stored event a duplicate, not a second copy).
    // The server leading the most input streams is killed once a third of them are acknowledged.
    const leaders = new Map<string, number>();
    for (let p = 0; p < PARTITIONS; p++) {
      const leader = (await topo.jsm.streams.info(inStream(p))).cluster?.leader ?? '';
      leaders.set(leader, (leaders.get(leader) ?? 0) + 1);
    }
    const victimName = [...leaders].sort((a, b) => b[1] - a[1])[0]![0];
    const victim = t.cluster.members.find((m) => m.name === victimName)!;
    const JS_EVENTS = 3000;
    const acked: number[] = [];
    const misrouted: string[] = [];
    let duplicates = 0; // acknowledged as already stored: an earlier attempt got in
    let retries = 0;
    let ackedAfterKill = 0;
    let killedAt = 0;
    let next = CORE;
    const kill = (async () => {
      await check(() => acked.length >= JS_EVENTS / 3, 20_000, 'a third of the publishes acknowledged');
      await victim.kill();
      killedAt = Date.now();
    })();
    const deadline = Date.now() + 40_000;
    const producer = async () => {
      for (let id = next++; id < CORE + JS_EVENTS; id = next++) {
        for (;;) {
          if (Date.now() > deadline) throw new Error(`event ${id} not acknowledged; ${retries} retries`);
          try {
            const ack = await js.publish(`events.tx.${keyOf(id)}`, JSON.stringify({ id }), {
              msgID: `e-${id}`,
              timeout: 2000,
              // While a stream has no leader the publish has no responders: the client retries
              // after 0, 250 and 250 ms (jittered) before it throws and this loop tries again.
              retries: 4,
            });
            if (ack.stream !== INGEST_STREAM) {
              misrouted.push(`${id} in ${ack.stream}`);
            }
            if (ack.duplicate) duplicates++;
            acked.push(id);
            if (killedAt) ackedAfterKill++;
            break;
          } catch {
            retries++;
          }
        }
      }
    };
    const t0 = Date.now();
    await Promise.all([kill, ...Array.from({ length: 16 }, producer)]);
    const publishMs = Date.now() - t0;
    phase('publish and kill');
    assert.ok(ackedAfterKill > 0, 'publishing went on after the kill');
    assert.deepEqual(misrouted, [], 'every event stored by the ingest stream');

    // Every acknowledged event is stored exactly once, in its partition's stream (sourced from the
    // ingest stream, which catches up once the streams have leaders again).
    const expected = new Set([...Array.from({ length: CORE }, (_, i) => i), ...acked]);
    assert.equal(expected.size, CORE + JS_EVENTS);
    let counted = 0;
    const allCounted = async () => {
      counted = await total();
      return counted === expected.size;
    };
    // Sourcing stops while the ingest stream has no leader and resumes with the server's retry
    // backoff, which can take tens of seconds after a kill (ARCHITECTURE.md, Known issues).
    await check(allCounted, 120_000, 'every event counted').catch((err: Error) => {
      throw new Error(`${err.message}: ${counted} stored of ${expected.size}`);
    });
    phase('every event in its partition');
    const seen = new Set<number>();
    const reader = jetstream(nc, { timeout: 2000 });
    for (let p = 0; p < PARTITIONS; p++) {
      // The first consumer created soon after a server died may be placed on it and time out
      // (seen on 2.9.10): try again, with a short timeout.
      const ids = await check(() => storedIds(reader, topo.jsm, inStream(p)), 20_000, `${inStream(p)} read`);
      for (const id of ids) {
        assert.equal(partitionOf(keyOf(id), PARTITIONS), p, `event ${id} in partition ${p}`);
        assert.ok(!seen.has(id), `event ${id} stored twice`);
        seen.add(id);
      }
    }
    assert.deepEqual(
      [...expected].filter((id) => !seen.has(id)),
      [],
      'acknowledged events missing from the streams',
    );
    phase('read back');

    // The R3 bucket takes writes with one server down.
    await check(
      () => topo.state.put('after-kill', String(acked.length)),
      10_000,
      'a KV put with one server down',
    );
    // Read from the leader: a direct get may be answered by a follower not yet caught up.
    const latest = await readKvLatest(topo.jsm, STATE_BUCKET, 'after-kill');
    assert.equal(latest?.json<number>(), acked.length);
    phase('kv');

    // Restarted on the same ports and store, the server rejoins and catches up on every stream.
    const r0 = Date.now();
    await victim.restart();
    await waitForJetStream([victim.url], { timeoutMs: 20_000 });
    await check(() => allReplicasCurrent(topo.jsm), 30_000, 'all replicas current');
    phase('rejoin');
    process.stderr.write(
      `killed ${victimName} (leader of ${leaders.get(victimName)}/${PARTITIONS} input streams): ` +
        `${JS_EVENTS} publishes in ${publishMs} ms, ${ackedAfterKill} acknowledged after the kill, ` +
        `${retries} failed attempts retried, ${duplicates} acknowledged as duplicates; ` +
        `rejoined and current on ${streams.size} streams in ${Date.now() - r0} ms (${phases.join(', ')})\n`,
    );
  });
});

describe('partita nats --cluster', () => {
  it('exits 2 when cluster options are incomplete', () => {
    for (const args of [
      ['nats', '--routes', 'nats-route://127.0.0.1:6222'],
      ['nats', '--cluster-port', '6222'],
      ['nats', '--cluster', 'partita'],
    ]) {
      const r = spawnSync(process.execPath, [PARTITA_BIN, ...args], { encoding: 'utf8', timeout: 10_000 });
      assert.equal(r.status, 2, `partita ${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /--cluster/);
    }
  });

  it('starts one member per process; the first is ready alone, the three form a JetStream cluster', async () => {
    const dir = tempDir('partita-cli-cluster-');
    const member = (name: string, routes: string[]) =>
      spawnPartita([
        'nats',
        '--cluster',
        'partita',
        '--name',
        name,
        '--port',
        '0',
        '--cluster-port',
        '0',
        ...(routes.length ? ['--routes', routes.join(',')] : []),
        '--data',
        join(dir, name),
        '--partitions',
        String(PARTITIONS),
      ]);
    const first = await member('m1', []);
    const procs = [first];
    try {
      assert.match(first.ready.nats!, /^nats:\/\/127\.0\.0\.1:\d+$/);
      assert.match(first.ready.cluster!, /^nats-route:\/\/127\.0\.0\.1:\d+$/);
      procs.push(await member('m2', [first.ready.cluster!]));
      procs.push(await member('m3', [first.ready.cluster!]));
      const servers = procs.map((p) => p.ready.nats!);
      await waitForJetStream(servers, { timeoutMs: 20_000, replicas: 3 });

      const nc = await connect({ servers });
      try {
        const topo = await ensureTopology(nc, { partitions: PARTITIONS, replicas: 3 });
        const key = 'order-42';
        const ack = await jetstream(nc).publish(`events.tx.${key}`, '{}');
        assert.equal(ack.stream, INGEST_STREAM);
        const stream = inStream(partitionOf(key, PARTITIONS));
        await check(
          async () => (await topo.jsm.streams.info(stream)).state.messages === 1,
          10_000,
          `${stream} sourced it`,
        );
        const { cluster } = await topo.jsm.streams.info(stream);
        assert.deepEqual([cluster?.leader, ...(cluster?.replicas ?? []).map((r) => r.name)].sort(), [
          'm1',
          'm2',
          'm3',
        ]);
      } finally {
        await nc.close();
      }
    } finally {
      const codes = [];
      for (const p of procs) codes.push(await p.kill('SIGTERM'));
      rmSync(dir, { recursive: true, force: true });
      assert.deepEqual(
        codes,
        procs.map(() => 0),
        'SIGTERM stops each member cleanly',
      );
    }
  });
});

describe('startNatsCluster', () => {
  it('picks other route ports when one is taken before its server binds it', async () => {
    // The race seen in CI, made certain: the first pick names a port something else listens on.
    const squatter = createServer();
    await new Promise<void>((r) => squatter.listen(0, '127.0.0.1', r));
    const taken = (squatter.address() as AddressInfo).port;
    const picks: number[][] = [];
    const dir = tempDir('partita-ports-');
    try {
      const cluster = await startNatsCluster({
        size: 3,
        dataDir: join(dir, 'nats'),
        partitions: PARTITIONS,
        routePorts: async (n) => {
          const ports = await freePorts(n);
          if (picks.length === 0) ports[1] = taken;
          picks.push(ports);
          return ports;
        },
      });
      try {
        // More than two when 2.10.x's own failure to form strikes the second attempt too.
        assert.ok(picks.length >= 2, 'a second pick after the taken port');
        assert.ok(!picks.at(-1)!.includes(taken));
        assert.equal(cluster.members.length, 3);
        await waitForJetStream(cluster.servers, { timeoutMs: 20_000, replicas: 3 });
      } finally {
        await cluster.stop('SIGKILL');
      }
    } finally {
      squatter.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('starts a fresh cluster again when it does not form, from empty stores', async () => {
    // 2.10.x now and then leaves one member of a fresh cluster without a meta leader for good;
    // the first attempt here is made to fail the same way: not formed within its time.
    const dir = tempDir('partita-form-');
    const attempts: string[][] = [];
    try {
      const cluster = await startNatsCluster({
        size: 3,
        dataDir: join(dir, 'nats'),
        partitions: PARTITIONS,
        waitFormed: async (servers, ms) => {
          attempts.push([...servers]);
          if (attempts.length === 1) {
            // Something the first attempt stored must not survive into the second.
            const nc = await connect({ servers: [...servers] });
            await waitForJetStream(servers, { timeoutMs: ms, replicas: 3 });
            const jsm = await jetstreamManager(nc);
            await jsm.streams.add({ name: 'LEFTOVER', subjects: ['leftover'], num_replicas: 3 });
            await nc.close();
            throw new Error('no suitable peers for placement');
          }
          await waitForJetStream(servers, { timeoutMs: ms, replicas: 3 });
        },
      });
      try {
        // More than two when 2.10.x's own failure to form strikes the second attempt too.
        assert.ok(attempts.length >= 2, 'a second attempt after the first did not form');
        const nc = await connect({ servers: [...cluster.servers] });
        try {
          const jsm = await jetstreamManager(nc);
          const names: string[] = [];
          for await (const n of jsm.streams.names()) names.push(n);
          assert.deepEqual(names, [], 'the second attempt starts from empty stores');
        } finally {
          await nc.close();
        }
      } finally {
        await cluster.stop('SIGKILL');
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('does not start a cluster again over stores that existed before', async () => {
    const dir = tempDir('partita-form-');
    const dataDir = join(dir, 'nats');
    mkdirSync(join(dataDir, 'partita-1'), { recursive: true });
    writeFileSync(join(dataDir, 'partita-1', 'keep'), 'x');
    let calls = 0;
    try {
      await assert.rejects(
        startNatsCluster({
          size: 3,
          dataDir,
          partitions: PARTITIONS,
          waitFormed: async () => {
            calls++;
            throw new Error('not formed');
          },
        }),
        /not formed/,
      );
      assert.equal(calls, 1, 'no second attempt over existing stores');
      assert.ok(existsSync(join(dataDir, 'partita-1', 'keep')), 'an existing store is kept');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
