// The source watchdog: a partition stream left not sourcing PARTITA_EVENTS after a server kill is
// stepped down, so that its new leader sets the source up at once. Its decisions on an in-memory
// fake of its own NATS interface; then, on a real 3-server cluster, the kill of the ingest
// stream's leader under load.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { jetstream } from '@nats-io/jetstream';
import { Registry } from 'prom-client';
import { createLogger, ensureTopology, INGEST_STREAM, inStream } from '../runtime/index.js';
import { createNodeMetrics } from '../runtime/metrics.js';
import {
  type SourcedStreamInfo,
  SourceWatchdog,
  type SourceWatchdogNats,
  startSourceWatchdog,
} from '../runtime/source-watchdog.js';
import { check } from './helpers/check.js';
import { startTestNatsCluster, type TestNatsCluster } from './helpers/nats-cluster.js';

const silentLog = createLogger({}, { write: () => undefined });

class FakeNats implements SourceWatchdogNats {
  readonly streams = new Map<string, SourcedStreamInfo>();
  readonly steppedDown: string[] = [];
  async info(stream: string) {
    return this.streams.get(stream) ?? null;
  }
  async stepDown(stream: string) {
    this.steppedDown.push(stream);
  }
  set(stream: string, s: Partial<SourcedStreamInfo>) {
    this.streams.set(stream, {
      leader: 'n1',
      replicas: 3,
      sourceSilentMs: 100,
      ...this.streams.get(stream),
      ...s,
    });
  }
}

function setup(partitions: number[]) {
  const nats = new FakeNats();
  let now = 1_000_000;
  const metrics = createNodeMetrics(new Registry());
  const w = new SourceWatchdog({
    nats,
    owned: () => partitions,
    metrics,
    log: silentLog,
    stallMs: 3000,
    cooldownMs: 6000,
    now: () => now,
  });
  nats.set(INGEST_STREAM, { sourceSilentMs: undefined });
  for (let p = 0; p < 4; p++) nats.set(inStream(p), {});
  const restarts = async (p: number) =>
    (await metrics.sourceRestarts.get()).values.find((v) => v.labels.partition === String(p))?.value ?? 0;
  return { nats, w, restarts, tick: (ms: number) => (now += ms) };
}

describe('the source watchdog', () => {
  it('steps down an owned partition stream whose source is silent past the threshold, and counts it', async () => {
    const { nats, w, restarts } = setup([0, 1, 2]);
    nats.set(inStream(1), { sourceSilentMs: 3500 });
    nats.set(inStream(3), { sourceSilentMs: 60_000 }); // not owned: another node's to step down
    assert.deepEqual(await w.check(), [inStream(1)]);
    assert.deepEqual(nats.steppedDown, [inStream(1)]);
    assert.equal(await restarts(1), 1);
    assert.equal(await restarts(0), 0);
  });

  it('leaves sources alone while they are heard from, and waits while the ingest stream has no leader', async () => {
    const { nats, w } = setup([0, 1, 2, 3]);
    nats.set(inStream(0), { sourceSilentMs: 2999 });
    assert.deepEqual(await w.check(), []);
    nats.set(inStream(0), { sourceSilentMs: 20_000 });
    nats.set(INGEST_STREAM, { leader: undefined });
    assert.deepEqual(await w.check(), [], 'a new leader would fail to set the source up too');
    nats.set(INGEST_STREAM, { leader: 'n2' });
    assert.deepEqual(await w.check(), [inStream(0)]);
  });

  it('does nothing on one server, for a stream without a leader, of one replica, or without the source', async () => {
    const { nats, w } = setup([0, 1, 2]);
    nats.set(inStream(0), { sourceSilentMs: 20_000, leader: undefined });
    nats.set(inStream(1), { sourceSilentMs: undefined }); // partitioned by the server's mapping
    nats.set(inStream(2), { sourceSilentMs: 20_000, replicas: 1 }); // no other server to lead it
    assert.deepEqual(await w.check(), []);
    nats.streams.delete(inStream(2));
    assert.deepEqual(await w.check(), []);
    nats.set(inStream(0), { leader: 'n3' });
    nats.set(INGEST_STREAM, { replicas: 1 });
    assert.deepEqual(await w.check(), [], 'a single server sets its sources up when it restarts');
  });

  it('counts a source never heard from (-1) from when it first saw it so', async () => {
    const { nats, w, tick } = setup([0]);
    nats.set(inStream(0), { sourceSilentMs: -1 });
    assert.deepEqual(await w.check(), [], 'a new leader is setting its source up');
    tick(2000);
    assert.deepEqual(await w.check(), []);
    tick(1000);
    assert.deepEqual(await w.check(), [inStream(0)]);
  });

  it('gives a stepped-down stream time to set its source up before stepping it down again', async () => {
    const { nats, w, tick } = setup([0]);
    nats.set(inStream(0), { sourceSilentMs: 10_000 });
    assert.deepEqual(await w.check(), [inStream(0)]);
    tick(5000);
    nats.set(inStream(0), { sourceSilentMs: 15_000 });
    assert.deepEqual(await w.check(), []);
    tick(1000);
    assert.deepEqual(await w.check(), [inStream(0)]);
    assert.equal(nats.steppedDown.length, 2);
    // A source no stepdown brings back is stepped down ever more rarely: 12 s now.
    assert.equal(w.coolingDown(inStream(0)), true, 'its own election is no reason to check again');
    tick(6000);
    assert.deepEqual(await w.check(), []);
    tick(6000);
    assert.deepEqual(await w.check(), [inStream(0)]);
    // Heard from again: the next stall starts over at 6 s.
    nats.set(inStream(0), { sourceSilentMs: 200 });
    tick(30_000);
    assert.deepEqual(await w.check(), []);
    nats.set(inStream(0), { sourceSilentMs: 4000 });
    assert.deepEqual(await w.check(), [inStream(0)]);
    tick(6000);
    nats.set(inStream(0), { sourceSilentMs: 10_000 });
    assert.deepEqual(await w.check(), [inStream(0)]);
  });
});

describe('the source watchdog on a 3-server cluster', () => {
  const PARTITIONS = 4;
  let t: TestNatsCluster;
  before(async () => {
    t = await startTestNatsCluster({ partitions: PARTITIONS });
  });
  after(async () => {
    await t?.stop();
  });

  it('sets sourcing going again after the ingest stream leader is killed under load', async () => {
    const nc = await t.connect({ name: 'producer' });
    const topo = await ensureTopology(nc, { partitions: PARTITIONS, replicas: 3 });
    const js = jetstream(nc);
    const metrics = createNodeMetrics(new Registry());
    const watch = startSourceWatchdog(nc, topo.jsm, {
      owned: () => Array.from({ length: PARTITIONS }, (_, p) => p),
      metrics,
      log: silentLog,
    });
    let acked = 0;
    let stop = false;
    let id = 0;
    const producer = (async () => {
      while (!stop) {
        const n = id++;
        for (;;) {
          try {
            await js.publish(`events.tx.k${n % 97}`, JSON.stringify({ id: n }), {
              msgID: `e-${n}`,
              timeout: 2000,
              retries: 4,
            });
            acked++;
            break;
          } catch {
            if (stop) return;
          }
        }
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    await check(() => acked >= 500, 20_000, '500 events acknowledged');
    const leader = (await topo.jsm.streams.info(INGEST_STREAM)).cluster?.leader;
    const victim = t.cluster.members.find((m) => m.name === leader)!;
    assert.ok(victim, `the ingest stream's leader (${leader}) is a member`);
    // What the test sees meanwhile: per partition stream, the longest its source was silent while
    // the ingest stream had a leader. Whether a source stalls at all depends on when the server's
    // own health check fires; a stall this long the watchdog must have acted on.
    const longestSilence = new Map<number, number>();
    let observing = true;
    const observer = (async () => {
      const since = new Map<number, number>();
      while (observing) {
        const ingest = await topo.jsm.streams.info(INGEST_STREAM).catch(() => null);
        for (let p = 0; p < PARTITIONS && ingest?.cluster?.leader; p++) {
          const src = (await topo.jsm.streams.info(inStream(p)).catch(() => null))?.sources?.[0];
          if (!src) continue;
          const now = Date.now();
          if (src.active >= 0 && src.active < 1e9) since.delete(p);
          else since.set(p, since.get(p) ?? now - Math.max(0, src.active / 1e6));
          const silent = since.has(p) ? now - since.get(p)! : 0;
          longestSilence.set(p, Math.max(longestSilence.get(p) ?? 0, silent));
        }
        await new Promise((r) => setTimeout(r, 250));
      }
    })();
    const killedAt = Date.now();
    await victim.kill();
    await new Promise((r) => setTimeout(r, 3000));
    await victim.restart();
    await check(() => acked >= 1500, 60_000, 'publishing goes on after the kill');
    stop = true;
    await producer;
    let stored = 0;
    await check(
      async () => {
        stored = 0;
        for (let p = 0; p < PARTITIONS; p++)
          stored += (await topo.jsm.streams.info(inStream(p))).state.messages;
        return stored >= acked;
      },
      120_000,
      'every acknowledged event in its partition',
    ).catch((err: Error) => {
      throw new Error(`${err.message}: ${stored} of ${acked}`);
    });
    const sourcedAfterMs = Date.now() - killedAt;
    observing = false;
    await observer;
    const restarts = new Map(
      (await metrics.sourceRestarts.get()).values.map((v) => [Number(v.labels.partition), v.value]),
    );
    await watch.stop();
    const silences = [...longestSilence].map(([p, ms]) => `${p}: ${ms} ms`).join(', ');
    process.stderr.write(
      `killed ${leader}: ${acked} events in their partitions ${sourcedAfterMs} ms after the kill; ` +
        `longest source silence with an ingest leader ${silences}; stepdowns ${JSON.stringify([...restarts])}\n`,
    );
    assert.equal(stored, acked, 'no event doubled');
    // Checked every second, stepped down at 3 s of silence: 6 s leaves room for a slow check.
    for (const [p, ms] of longestSilence)
      if (ms >= 6000)
        assert.ok((restarts.get(p) ?? 0) >= 1, `partition ${p}'s source, silent ${ms} ms, stepped down`);
  });
});
