// `npm run bench`: measures Partita against baselines taken in the same run, on this machine, and
// prints the numbers next to the targets of SPEC.md ("Targets"). It reports; it asserts nothing.
//
//   1. raw consume   a durable pull consumer per partition stream (PARTITA_IN_<p>) that only acks
//                    (AckAll every 1,000), all at once: the ceiling (best of two runs)
//   2. KV per event  a plain nats.js consumer doing kv.get + kv.update per event (no Partita)
//   3. backlog       a Partita node (in-process) working off the same backlog, exactly-once; timed from
//                    the startNode call until every partition's consumer has nothing pending or unacked
//   4. live          publish at fixed rates (worker threads, see loadgen.ts); latency from publish to
//                    the committed change seen on partita.state.account.>
//   5. restart       one `partita node` child under a paced load, kill -9, restarted on the same data
//                    dir: spawn → ready line, spawn → first state change under the new lease
//   6. failover      three `partita node` children under a paced load, kill -9 one: kill → first state
//                    change of one of its partitions under another node's lease, and → all of them
//   8. windowed      the backlog with event times over 10 minutes, worked off by an actor with
//                    1m/5m/1h rollups (bench/windowed.ts), beside the plain backlog of phase 3
//   7. restore       1M keys of state in the state bucket (as an old owner leaves it), empty input
//                    streams: an in-process node restores them (time, RSS, actors), then restarts on
//                    its own data dir (which must not read the bucket)
//
// Every measurement gets a fresh nats-server (free port, fresh store in a temp dir), as the tests do.
// Flags: --events N --keys N --kv-seconds S --kv-events N --rates 5000,50000 --seconds S --warmup S
//        --live-keys N --partitions N --backlog-runs N --threads N --quick --out FILE
//        --move-rate N --move-keys N --repeats N --restore-keys N --sync-interval always|2m
//        --only raw,kv,backlog,live,restart,failover,restore,windowed,fanout,features
//   8. fanout, features   the gateway (bench/gateway.ts): --fanout-clients N --fanout-rate N
//        --fanout-seconds S --features-requests N
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { AckPolicy, DeliverPolicy, type JetStreamManager, jetstream } from '@nats-io/jetstream';
import { type KV, Kvm } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { pino } from 'pino';
import type { Counter, Gauge, Histogram } from 'prom-client';
import {
  type Durability,
  ensureTopology,
  inStream,
  type NatsServerHandle,
  natsServerVersion,
  type PartitaNode,
  partitionOf,
  queryStates,
  STATE_BUCKET,
  startNatsServer,
  startNode,
} from '../runtime/index.js';
import { type NodeProcess, spawnPartita } from '../test/helpers/node-process.js';
import { benchFanout, benchFeatures } from './gateway.js';
import { type LoadgenConfig, type PubResult, type SubResult, totalEvents, wallNow } from './loadgen.js';
import { benchWindowed } from './windowed.js';

// ---------------------------------------------------------------------------------------------
// Options

const { values: flags } = parseArgs({
  options: {
    events: { type: 'string' },
    keys: { type: 'string' },
    'kv-seconds': { type: 'string' },
    'kv-events': { type: 'string' },
    rates: { type: 'string' },
    seconds: { type: 'string' },
    warmup: { type: 'string' },
    'live-keys': { type: 'string' },
    partitions: { type: 'string' },
    'backlog-runs': { type: 'string' },
    threads: { type: 'string' },
    durability: { type: 'string' },
    'sync-interval': { type: 'string' },
    quick: { type: 'boolean', default: false },
    out: { type: 'string' },
    only: { type: 'string' },
    'move-rate': { type: 'string' },
    'move-keys': { type: 'string' },
    repeats: { type: 'string' },
    'restore-keys': { type: 'string' },
    'fanout-clients': { type: 'string' },
    'fanout-rate': { type: 'string' },
    'fanout-seconds': { type: 'string' },
    'features-requests': { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});

if (flags.help) {
  console.log(
    'usage: npm run bench -- [--quick] [--events 200000] [--keys 100000] [--kv-seconds 10] [--kv-events 20000]\n' +
      '                       [--rates 5000,50000] [--seconds 5] [--warmup 1] [--live-keys 10000]\n' +
      '                       [--partitions 16] [--backlog-runs 2] [--threads <node default>] [--out bench-results.json]\n' +
      '                       [--durability sync,process] [--sync-interval 2m]\n' +
      '                       [--move-rate 2000] [--move-keys 10000] [--repeats 3] [--restore-keys 1000000]\n' +
      '                       [--fanout-clients 1000] [--fanout-rate 100] [--fanout-seconds 10] [--features-requests 300]\n' +
      '                       [--only raw,kv,backlog,live,restart,failover,restore,windowed,fanout,features]',
  );
  process.exit(0);
}

const quick = flags.quick === true;
const num = (v: string | undefined, dflt: number) => {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`not a positive number: ${v}`);
  return n;
};
const opts = {
  events: Math.round(num(flags.events, quick ? 50_000 : 200_000)),
  keys: Math.round(num(flags.keys, 100_000)),
  kvSeconds: num(flags['kv-seconds'], quick ? 3 : 10),
  kvEvents: Math.round(num(flags['kv-events'], quick ? 5_000 : 20_000)),
  rates: (flags.rates ?? '5000,50000').split(',').map((r) => num(r, 0)),
  seconds: num(flags.seconds, quick ? 2 : 5),
  warmup: num(flags.warmup, quick ? 0.5 : 1),
  liveKeys: Math.round(num(flags['live-keys'], 10_000)),
  partitions: Math.round(num(flags.partitions, 16)),
  backlogRuns: Math.round(num(flags['backlog-runs'], quick ? 1 : 2)),
  /** Worker threads; the node's own default (cores − 1) when omitted. */
  threads: flags.threads === undefined ? undefined : Math.round(num(flags.threads, 1)),
  /** The backlog runs with the first; the live runs with each. */
  durabilities: (flags.durability ?? 'sync,process').split(',').map((d) => {
    if (d !== 'sync' && d !== 'process') throw new Error(`--durability takes sync and/or process, not ${d}`);
    return d as Durability;
  }),
  /**
   * The servers' JetStream `sync_interval`: the server's default, so that runs compare with earlier
   * ones; `partita nats` configures `always` (README, "Durability"), which costs several times the
   * backlog throughput here: measure it with `--sync-interval always`.
   */
  syncInterval: flags['sync-interval'] ?? '2m',
  out: flags.out ?? 'bench-results.json',
  /** restart / failover: the paced load (events/s) and its keys, and kills per phase. */
  moveRate: num(flags['move-rate'], 2000),
  moveKeys: Math.round(num(flags['move-keys'], 10_000)),
  repeats: Math.round(num(flags.repeats, 3)),
  /** restore: keys of state in the bucket. */
  restoreKeys: Math.round(num(flags['restore-keys'], quick ? 200_000 : 1_000_000)),
  /** Phases to run (raw, kv, backlog, live, restart, failover, restore, fanout, features); all when omitted. */
  only: flags.only === undefined ? undefined : new Set(flags.only.split(',')),
  /** fanout: WebSocket clients of one gateway, and the state changes per second they all watch. */
  fanoutClients: Math.round(num(flags['fanout-clients'], 1000)),
  fanoutRate: num(flags['fanout-rate'], 100),
  fanoutSeconds: num(flags['fanout-seconds'], quick ? 4 : 10),
  featuresRequests: Math.round(num(flags['features-requests'], quick ? 100 : 300)),
};

process.env.PARTITA_LOG_LEVEL ??= 'warn';

const ACTORS_DIR = fileURLToPath(new URL('./actors/', import.meta.url));
const LOADGEN = new URL('./loadgen.js', import.meta.url);

// ---------------------------------------------------------------------------------------------
// Small helpers

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now();
const log = (msg: string) => process.stderr.write(`${msg}\n`);
const fmtInt = (n: number) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-');
const fmt = (n: number, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : '-');

const CLOCK_TICK_MS = (() => {
  try {
    return 1000 / Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
  } catch {
    return 10;
  }
})();

function procTicksMs(path: string): number {
  try {
    const s = readFileSync(path, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * CLOCK_TICK_MS;
  } catch {
    return Number.NaN;
  }
}

interface CpuSnap {
  wall: number;
  process: number;
  mainThread: number;
  server: number;
  elu: ReturnType<typeof performance.eventLoopUtilization>;
}

function cpuSnap(server: NatsServerHandle): CpuSnap {
  const u = process.cpuUsage();
  return {
    wall: now(),
    process: (u.user + u.system) / 1000,
    mainThread: procTicksMs(`/proc/self/task/${process.pid}/stat`),
    server: procTicksMs(`/proc/${server.process.pid}/stat`),
    elu: performance.eventLoopUtilization(),
  };
}

interface CpuUse {
  wallMs: number;
  /** Core-equivalents used (1.0 = one core busy for the whole interval). */
  mainThreadCores: number;
  otherThreadsCores: number;
  natsServerCores: number;
  /** Event-loop utilization of the main thread (0..1). */
  mainEventLoopUtilization: number;
}

function cpuSince(a: CpuSnap, server: NatsServerHandle): CpuUse {
  const b = cpuSnap(server);
  const wall = b.wall - a.wall;
  const main = b.mainThread - a.mainThread;
  return {
    wallMs: wall,
    mainThreadCores: main / wall,
    otherThreadsCores: (b.process - a.process - main) / wall,
    natsServerCores: (b.server - a.server) / wall,
    mainEventLoopUtilization: performance.eventLoopUtilization(b.elu, a.elu).utilization,
  };
}

const fmtCpu = (c: CpuUse) =>
  `cpu (cores): main thread ${fmt(c.mainThreadCores, 2)} (event loop ${fmt(c.mainEventLoopUtilization * 100, 0)}% busy), ` +
  `other threads ${fmt(c.otherThreadsCores, 2)}, nats-server ${fmt(c.natsServerCores, 2)}`;

/** A fresh nats-server on a free port with its store in a temp dir, and the topology recorded. */
interface Env {
  url: string;
  dir: string;
  server: NatsServerHandle;
  nc: NatsConnection;
  jsm: JetStreamManager;
  stop(): Promise<void>;
}

const live = new Set<Env>();

async function freshEnv(): Promise<Env> {
  const dir = mkdtempSync(join(tmpdir(), 'partita-bench-'));
  let server: NatsServerHandle | undefined;
  try {
    server = await startNatsServer({
      port: 0,
      dataDir: join(dir, 'nats'),
      partitions: opts.partitions,
      syncInterval: opts.syncInterval,
    });
    const nc = await connect({ servers: server.url, name: 'partita-bench' });
    const topo = await ensureTopology(nc, { partitions: opts.partitions });
    const srv = server;
    const env: Env = {
      url: server.url,
      dir,
      server,
      nc,
      jsm: topo.jsm,
      async stop() {
        live.delete(env);
        await nc.close().catch(() => undefined);
        await srv.stop('SIGKILL');
        rmSync(dir, { recursive: true, force: true });
      },
    };
    live.add(env);
    return env;
  } catch (err) {
    await server?.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

async function cleanupAll() {
  for (const n of [...children]) await n.kill('SIGKILL').catch(() => undefined);
  for (const env of [...live]) await env.stop().catch(() => undefined);
}

// ---------------------------------------------------------------------------------------------
// The backlog: the same N events for every backlog measurement

/** A deterministic 32-bit mix of i (so every run and every phase publishes the same events). */
function mix(i: number): number {
  let x = (i + 0x9e3779b9) | 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

function backlogEvent(i: number): [string, string] {
  const h = mix(i);
  const key = `a${h % opts.keys}`;
  const amount = ((h >>> 8) % 100_000) / 100;
  // ~100 B of JSON, like a small business event.
  const payload = JSON.stringify({
    id: i,
    amount,
    currency: 'EUR',
    merchant: `m-${h % 977}`,
    country: 'NL',
    note: 'backlog event',
  });
  return [`events.tx.${key}`, payload];
}

async function streamMessages(jsm: JetStreamManager): Promise<number> {
  let n = 0;
  for (let p = 0; p < opts.partitions; p++) n += (await jsm.streams.info(inStream(p))).state.messages;
  return n;
}

/**
 * Publishes events 0..n-1 as acknowledged JetStream publishes, 2,000 in flight, and waits until
 * the partition streams hold them all. Not core publishes: nats-server 2.11+ drops core-published
 * messages once a stream's ingest queue is full (`max_buffered_msgs`: 10,000 on 2.11, 100,000 since 2.12), and every event
 * goes through the one ingest stream.
 */
async function publishBacklog(env: Env, n: number): Promise<{ rate: number; bytes: number }> {
  const t0 = now();
  const js = jetstream(env.nc);
  let bytes = 0;
  let next = 0;
  const publisher = async () => {
    while (next < n) {
      const [subject, payload] = backlogEvent(next++);
      bytes += payload.length;
      await js.publish(subject, payload, { timeout: 120_000 });
    }
  };
  await Promise.all(Array.from({ length: 2000 }, publisher));
  await env.nc.flush();
  const deadline = now() + 60_000;
  let have = await streamMessages(env.jsm);
  while (have < n && now() < deadline) {
    await sleep(20);
    have = await streamMessages(env.jsm);
  }
  if (have !== n) throw new Error(`the stream holds ${have} of the ${n} events published`);
  return { rate: n / ((now() - t0) / 1000), bytes: bytes / n };
}

// ---------------------------------------------------------------------------------------------
// 1. Raw consume: the ceiling

async function rawConsumeOnce(env: Env, name: string, n: number): Promise<number> {
  const js = jetstream(env.nc);
  const t0 = now();
  let total = 0;
  await Promise.all(
    Array.from({ length: opts.partitions }, async (_, p) => {
      const stream = inStream(p);
      const have = (await env.jsm.streams.info(stream)).state.messages;
      if (have === 0) return;
      await env.jsm.consumers.add(stream, {
        durable_name: name,
        ack_policy: AckPolicy.All,
        deliver_policy: DeliverPolicy.All,
        max_ack_pending: 100_000,
      });
      const consumer = await js.consumers.get(stream, name);
      const msgs = await consumer.consume({ max_messages: 5000 });
      let count = 0;
      for await (const m of msgs) {
        count++;
        if (count % 1000 === 0 || count >= have) m.ack();
        if (count >= have) break;
      }
      msgs.stop();
      total += count;
    }),
  );
  const ms = now() - t0;
  await env.nc.flush();
  if (total !== n) throw new Error(`raw consume read ${total} of ${n} events`);
  return n / (ms / 1000);
}

interface RawResult {
  eventsPerSec: number;
  runs: number[];
  publishRate: number;
  payloadBytes: number;
  cpu: CpuUse;
}

async function benchRaw(): Promise<RawResult> {
  const env = await freshEnv();
  try {
    log(`raw consume: publishing ${fmtInt(opts.events)} events over ${fmtInt(opts.keys)} keys ...`);
    const pub = await publishBacklog(env, opts.events);
    const snap = cpuSnap(env.server);
    const runs: number[] = [];
    for (let r = 0; r < 2; r++) runs.push(await rawConsumeOnce(env, `bench-raw-${r}`, opts.events));
    const cpu = cpuSince(snap, env.server);
    const best = Math.max(...runs);
    log(
      `  published at ${fmtInt(pub.rate)}/s (${fmt(pub.bytes, 0)} B of JSON each); consume runs ` +
        `${runs.map(fmtInt).join(', ')} events/s; ceiling ${fmtInt(best)} events/s`,
    );
    return { eventsPerSec: best, runs, publishRate: pub.rate, payloadBytes: pub.bytes, cpu };
  } finally {
    await env.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// 2. KV get + update per event, without Partita

interface KvResult {
  eventsPerSec: number;
  events: number;
  seconds: number;
}

async function benchKv(): Promise<KvResult> {
  const env = await freshEnv();
  try {
    const n = Math.min(opts.events, opts.kvEvents);
    log(
      `KV per event: publishing ${fmtInt(n)} events, then get + update per event for ≤ ${opts.kvSeconds} s ...`,
    );
    await publishBacklog(env, n);
    const kv = await new Kvm(env.nc).create('bench_accounts', { history: 1 });
    const js = jetstream(env.nc);
    const t0 = now();
    const deadline = t0 + opts.kvSeconds * 1000;
    let count = 0;
    // Partition by partition, as a plain consumer of one stream would; the time budget ends it.
    for (let p = 0; p < opts.partitions && count < n && now() < deadline; p++) {
      const stream = inStream(p);
      const have = (await env.jsm.streams.info(stream)).state.messages;
      if (have === 0) continue;
      await env.jsm.consumers.add(stream, {
        durable_name: 'bench-kv',
        ack_policy: AckPolicy.All,
        deliver_policy: DeliverPolicy.All,
        max_ack_pending: 100_000,
      });
      const consumer = await js.consumers.get(stream, 'bench-kv');
      const msgs = await consumer.consume({ max_messages: 1000 });
      let inStreamCount = 0;
      for await (const m of msgs) {
        inStreamCount++;
        const key = m.subject.slice(m.subject.lastIndexOf('.') + 1);
        const ev = m.json<{ amount: number }>();
        const e = await kv.get(key);
        const s =
          e?.operation === 'PUT' ? e.json<{ count: number; total: number }>() : { count: 0, total: 0 };
        s.count += 1;
        s.total = Math.round((s.total + ev.amount) * 100) / 100;
        if (e?.operation === 'PUT') await kv.update(key, JSON.stringify(s), e.revision);
        else await kv.create(key, JSON.stringify(s));
        count++;
        const done = count >= n || now() >= deadline || inStreamCount >= have;
        if (count % 1000 === 0 || done) m.ack();
        if (done) break;
      }
      msgs.stop();
    }
    const seconds = (now() - t0) / 1000;
    const rate = count / seconds;
    log(`  ${fmtInt(count)} events in ${fmt(seconds, 1)} s: ${fmtInt(rate)} events/s`);
    return { eventsPerSec: rate, events: count, seconds };
  } finally {
    await env.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Node metrics

async function counterSum(c: Counter<string>): Promise<number> {
  return (await c.get()).values.reduce((a, v) => a + v.value, 0);
}

interface HistSummary {
  count: number;
  sum: number;
  mean: number;
  /** Observations per bucket, by upper bound (not cumulative). */
  buckets: Record<string, number>;
}

async function histSummary(h: Histogram<string>): Promise<HistSummary> {
  const values = (await h.get()).values;
  let count = 0;
  let sum = 0;
  const buckets: Record<string, number> = {};
  let prev = 0;
  for (const v of values) {
    if (v.metricName?.endsWith('_bucket')) {
      const le = String(v.labels.le);
      buckets[le] = v.value - prev;
      prev = v.value;
    } else if (v.metricName?.endsWith('_sum')) sum = v.value;
    else if (v.metricName?.endsWith('_count')) count = v.value;
  }
  for (const k of Object.keys(buckets)) if (buckets[k] === 0) delete buckets[k];
  return { count, sum, mean: count ? sum / count : Number.NaN, buckets };
}

interface NodeFigures {
  eventsIn: number;
  eventsApplied: number;
  stateChanges: number;
  deadLetters: number;
  batchFailures: number;
  /** Committed batches not published because the lease was not provably held at that moment. */
  fencedBatches: number;
  leaseLosses: number;
  batchSize: HistSummary;
  /** Seconds summed over batches, in workers. */
  handlerSeconds: number;
  commitSeconds: number;
  /** Per event, JetStream publish → state published (the node's own view), mean ms. */
  nodeEndToEndMeanMs: number;
}

async function nodeFigures(node: PartitaNode): Promise<NodeFigures> {
  const m = node.metrics;
  const e2e = await histSummary(m.endToEndSeconds);
  return {
    eventsIn: await counterSum(m.eventsIn),
    eventsApplied: await counterSum(m.eventsApplied),
    stateChanges: await counterSum(m.stateChanges),
    deadLetters: await counterSum(m.deadLetters),
    batchFailures: await counterSum(m.batchFailures),
    fencedBatches: await counterSum(m.fencedBatches),
    leaseLosses: await counterSum(m.leaseLosses),
    batchSize: await histSummary(m.batchSize),
    handlerSeconds: (await histSummary(m.handlerSeconds)).sum,
    commitSeconds: (await histSummary(m.checkpointSeconds)).sum,
    nodeEndToEndMeanMs: e2e.mean * 1000,
  };
}

const fmtBuckets = (b: Record<string, number>) =>
  Object.entries(b)
    .map(([le, c]) => `≤${le}:${c}`)
    .join(' ');

function fmtNode(f: NodeFigures): string {
  return (
    `batches ${fmtInt(f.batchSize.count)}, mean size ${fmt(f.batchSize.mean, 1)} [${fmtBuckets(f.batchSize.buckets)}]; ` +
    `worker time: handlers ${fmt(f.handlerSeconds * 1000, 0)} ms, LMDB commits ${fmt(f.commitSeconds * 1000, 0)} ms ` +
    `(${fmt((f.commitSeconds * 1000) / Math.max(1, f.batchSize.count), 2)} ms/batch); ` +
    `state changes ${fmtInt(f.stateChanges)}; dead letters ${f.deadLetters}; batch failures ${f.batchFailures}` +
    (f.fencedBatches || f.leaseLosses
      ? `; FENCED batches ${f.fencedBatches}, lease losses ${f.leaseLosses}`
      : '')
  );
}

/** The node's warnings and errors, counted by message (and error) instead of printed. */
class LogTally {
  readonly counts = new Map<string, number>();
  write(line: string) {
    try {
      const o = JSON.parse(line) as { msg?: string; err?: unknown };
      const k = `${o.msg ?? '?'}${o.err ? ` (${String(o.err)})` : ''}`;
      this.counts.set(k, (this.counts.get(k) ?? 0) + 1);
    } catch {
      this.counts.set(line.trim(), (this.counts.get(line.trim()) ?? 0) + 1);
    }
  }
  toJSON(): Record<string, number> {
    return Object.fromEntries(this.counts);
  }
  toString(): string {
    if (this.counts.size === 0) return 'node warnings: none';
    return `node warnings: ${[...this.counts].map(([k, n]) => `${n}× ${k}`).join('; ')}`;
  }
}

async function startBenchNode(env: Env, tally: LogTally, durability: Durability): Promise<PartitaNode> {
  return startNode({
    natsUrl: env.url,
    actorsDir: ACTORS_DIR,
    dataDir: join(env.dir, 'node'),
    threads: opts.threads,
    partitions: opts.partitions,
    durability,
    logger: pino({ level: process.env.PARTITA_LOG_LEVEL ?? 'warn', base: { node: 'bench' } }, tally),
  });
}

// ---------------------------------------------------------------------------------------------
// 3. Partita working off the backlog

interface BacklogResult {
  /** From the startNode call until every partition's consumer has everything acked. */
  eventsPerSec: number;
  /** The same, without the node's start-up (from startNode resolving). */
  eventsPerSecAfterStart: number;
  /** Between 10% and 90% of the events applied. */
  eventsPerSecSteady: number;
  startupMs: number;
  appliedMs: number;
  ackedMs: number;
  node: NodeFigures;
  cpu: CpuUse;
  /** The owners' answers against the events, once everything is acknowledged (not timed). */
  check: StateCheck;
  /** The state bucket against the events, read right after (an export may lag). */
  bucketCheck: StateCheck;
  warnings: Record<string, number>;
}

async function allAcked(env: Env, partitions: number): Promise<boolean> {
  for (let p = 0; p < partitions; p++) {
    // The runtime names its durable consumers partita-p<partition>-<lease epoch> (partition-runner.ts).
    let found = false;
    for await (const ci of env.jsm.consumers.list(inStream(p))) {
      if (!ci.name.startsWith(`partita-p${p}-`)) continue;
      found = true;
      if (ci.num_pending > 0 || ci.num_ack_pending > 0) return false;
    }
    if (!found) return false;
  }
  return true;
}

interface StateCheck {
  keys: number;
  keysWrong: number;
  missing: number;
  extra: number;
}

/**
 * After a backlog run: every key's state in the state bucket against the events published to it
 * (events 0..n-1). Read with an ordered consumer; the bucket keeps one entry per key.
 */
const fmtCheck = (what: string, c: StateCheck) =>
  `${what}: ${fmtInt(c.keys)} keys, ${c.keysWrong} with a wrong count ` +
  `(${fmtInt(c.missing)} events missing, ${fmtInt(c.extra)} counted twice)`;

/** Each backlog key's expected count: the events published to it (events 0..n-1). */
function backlogWant(n: number): Uint32Array {
  const want = new Uint32Array(opts.keys);
  for (let i = 0; i < n; i++) want[mix(i) % opts.keys]!++;
  return want;
}

function compareCounts(want: Uint32Array, got: Uint32Array): StateCheck {
  const out: StateCheck = { keys: 0, keysWrong: 0, missing: 0, extra: 0 };
  for (let k = 0; k < opts.keys; k++) {
    if (want[k] === 0) continue;
    out.keys++;
    if (got[k] !== want[k]) out.keysWrong++;
    if (got[k]! < want[k]!) out.missing += want[k]! - got[k]!;
    else out.extra += got[k]! - want[k]!;
  }
  return out;
}

async function backlogCheck(env: Env, n: number): Promise<StateCheck> {
  const got = new Uint32Array(opts.keys);
  const stream = `KV_${STATE_BUCKET}`;
  if ((await env.jsm.streams.info(stream)).state.messages > 0) {
    const c = await jetstream(env.nc).consumers.get(stream, {
      filter_subjects: `$KV.${STATE_BUCKET}.account.>`,
      deliver_policy: DeliverPolicy.All,
    });
    const msgs = await c.consume({ max_messages: 5000 });
    for await (const m of msgs) {
      const v = m.json<{ key: string; state: { count: number } }>();
      const k = Number(v.key.slice(1));
      if (k >= 0 && k < got.length) got[k] = Math.max(got[k]!, v.state.count);
      if (m.info.pending === 0) break;
    }
    msgs.stop();
  }
  return compareCounts(backlogWant(n), got);
}

/**
 * The same check against what readers are served: every key asked of its partition's owner
 * (`partita.query.<p>`, as the gateway's state route and Feast do), 1,000 keys a request.
 */
async function ownerCheck(env: Env, partitions: number, n: number): Promise<StateCheck> {
  const want = backlogWant(n);
  const got = new Uint32Array(opts.keys);
  const byPartition = new Map<number, number[]>();
  for (let k = 0; k < opts.keys; k++) {
    if (want[k] === 0) continue;
    const p = partitionOf(`a${k}`, partitions);
    const ks = byPartition.get(p);
    if (ks) ks.push(k);
    else byPartition.set(p, [k]);
  }
  await Promise.all(
    [...byPartition].map(async ([p, ks]) => {
      for (let i = 0; i < ks.length; i += 1000) {
        const chunk = ks.slice(i, i + 1000);
        const answers = await queryStates(
          env.nc,
          p,
          chunk.map((k) => ['account', `a${k}`] as const),
          10_000,
        );
        for (const [j, a] of answers.entries()) {
          if (a) got[chunk[j]!] = (a.state as { count: number }).count;
        }
      }
    }),
  );
  return compareCounts(want, got);
}

async function benchBacklogOnce(): Promise<BacklogResult> {
  const env = await freshEnv();
  let node: PartitaNode | undefined;
  try {
    const n = opts.events;
    log(`Partita backlog: publishing ${fmtInt(n)} events over ${fmtInt(opts.keys)} keys ...`);
    await publishBacklog(env, n);
    const snap = cpuSnap(env.server);
    const tally = new LogTally();
    const t0 = now();
    node = await startBenchNode(env, tally, opts.durabilities[0]!);
    const tStarted = now();
    const samples: [number, number][] = [];
    let applied = 0;
    let deadline = t0 + 600_000;
    let lastProgress = now();
    while (applied < n && now() < deadline) {
      await sleep(10);
      const a = await counterSum(node.metrics.eventsApplied);
      if (a > applied) lastProgress = now();
      applied = a;
      samples.push([now(), applied]);
      // A stall is a finding, not something to wait ten minutes for.
      if (now() - lastProgress > 30_000) break;
    }
    const tApplied = now();
    if (applied < n) {
      log(
        `  only ${fmtInt(applied)} of ${fmtInt(n)} events applied (no progress for ${fmt((now() - lastProgress) / 1000, 0)} s); ` +
          `owned ${node.owned().join(',')}; committed ${node
            .progress()
            .map((p) => `p${p.partition}@${p.committedSeq}`)
            .join(' ')}; ${tally}`,
      );
      for (let p = 0; p < node.partitions; p++) {
        const si = await env.jsm.streams.info(inStream(p));
        const cs: string[] = [];
        for await (const ci of env.jsm.consumers.list(inStream(p)))
          cs.push(
            `${ci.name} pending ${ci.num_pending} ack-pending ${ci.num_ack_pending} floor ${ci.ack_floor.stream_seq}`,
          );
        log(
          `    p${p}: stream ${si.state.first_seq}..${si.state.last_seq}; ${cs.join('; ') || 'no consumer'}`,
        );
      }
      const leases = await leaseTable(await new Kvm(env.nc).open(LEASES), node.partitions);
      log(
        `    leases: ${
          [...leases]
            .sort(([a], [b]) => a - b)
            .map(([p, r]) => `p${p}→${r.node}@${r.revision}`)
            .join(' ') || 'none held'
        }`,
      );
      deadline = now() + 5000;
    }
    while (!(await allAcked(env, node.partitions)) && now() < deadline) await sleep(5);
    const tAcked = now();
    const cpu = cpuSince(snap, env.server);
    const figures = await nodeFigures(node);
    const check = await ownerCheck(env, node.partitions, n);
    const bucketCheck = await backlogCheck(env, n);
    const at = (frac: number) => samples.find(([, a]) => a >= frac * n)?.[0] ?? Number.NaN;
    const steady = (0.8 * n) / ((at(0.9) - at(0.1)) / 1000);
    const res: BacklogResult = {
      eventsPerSec: n / ((tAcked - t0) / 1000),
      eventsPerSecAfterStart: n / ((tAcked - tStarted) / 1000),
      eventsPerSecSteady: steady,
      startupMs: tStarted - t0,
      appliedMs: tApplied - t0,
      ackedMs: tAcked - t0,
      node: figures,
      cpu,
      check,
      bucketCheck,
      warnings: tally.toJSON(),
    };
    log(
      `  ${fmtInt(res.eventsPerSec)} events/s incl. start-up (${fmt(res.startupMs, 0)} ms start, all applied at ` +
        `${fmt(res.appliedMs, 0)} ms, all acked at ${fmt(res.ackedMs, 0)} ms); ${fmtInt(res.eventsPerSecAfterStart)}/s ` +
        `after start; steady 10–90% ${fmtInt(steady)}/s`,
    );
    log(`  ${fmtNode(figures)}`);
    log(`  ${fmtCpu(cpu)}`);
    log(`  ${fmtCheck("exactly-once check (owners' answers)", check)}`);
    log(`  ${fmtCheck('state bucket once acked', bucketCheck)}`);
    log(`  ${tally}`);
    return res;
  } finally {
    await node?.stop().catch((err) => log(`node stop failed: ${(err as Error).message}`));
    await env.stop();
  }
}

/** Best of `opts.backlogRuns` runs (each on a fresh server), as the raw ceiling is a best of two. */
async function benchBacklog(): Promise<BacklogResult & { runs: number[] }> {
  const all: BacklogResult[] = [];
  for (let i = 0; i < opts.backlogRuns; i++) {
    if (i > 0) await sleep(300);
    all.push(await benchBacklogOnce());
  }
  const best = all.reduce((a, b) => (b.eventsPerSec > a.eventsPerSec ? b : a));
  if (all.length > 1) log(`  best of ${all.length}: ${fmtInt(best.eventsPerSec)} events/s`);
  return { ...best, runs: all.map((r) => r.eventsPerSec) };
}

// ---------------------------------------------------------------------------------------------
// 4. Live latency

interface LiveResult {
  rate: number;
  durability: Durability;
  pub: PubResult;
  sub: SubResult;
  node: NodeFigures;
  cpu: CpuUse;
  warnings: Record<string, number>;
}

function runWorker<T>(cfg: LoadgenConfig, onReady?: () => void): Promise<T> {
  return new Promise((resolve, reject) => {
    const w = new Worker(LOADGEN, { workerData: cfg });
    w.on('message', (m: { ready?: boolean; ok?: boolean; result?: T; error?: string }) => {
      if (m.ready) onReady?.();
      else if (m.ok && m.result) resolve(m.result);
      else reject(new Error(m.error));
    });
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`load generator (${cfg.role}) exited with ${code}`)));
  });
}

async function benchLive(rate: number, durability: Durability): Promise<LiveResult> {
  const env = await freshEnv();
  let node: PartitaNode | undefined;
  try {
    log(
      `live ${fmtInt(rate)}/s, durability ${durability}: ${opts.warmup} s warm-up + ${opts.seconds} s measured over ${fmtInt(opts.liveKeys)} keys ...`,
    );
    const tally = new LogTally();
    node = await startBenchNode(env, tally, durability);
    const base = { rate, warmupMs: opts.warmup * 1000, windowMs: opts.seconds * 1000 };
    const total = totalEvents(base);
    const keyOf = new SharedArrayBuffer(total * 4);
    const keys = new Int32Array(keyOf);
    let rng = 0x2545f491;
    for (let i = 0; i < total; i++) {
      rng = (Math.imul(rng, 1664525) + 1013904223) >>> 0;
      keys[i] = rng % opts.liveKeys;
    }
    const control = new SharedArrayBuffer(8);
    const cfg: Omit<LoadgenConfig, 'role'> = {
      ...base,
      url: env.url,
      control,
      keys: opts.liveKeys,
      keyOf,
      sentAt: new SharedArrayBuffer(total * 8),
      progress: new SharedArrayBuffer(4),
      drainMs: 15_000,
      clockTickMs: CLOCK_TICK_MS,
      // At most 5 ms worth of events per tick: a stalled publisher falls behind instead of bursting.
      maxBurst: Math.max(10, Math.ceil(rate / 200)),
    };
    let subscribed: () => void = () => undefined;
    const ready = new Promise<void>((r) => {
      subscribed = r;
    });
    const subDone = runWorker<SubResult>({ ...cfg, role: 'sub' }, subscribed);
    await Promise.race([ready, subDone]);
    new Float64Array(control)[0] = wallNow() + 300;
    const snap = cpuSnap(env.server);
    const [pub, sub] = await Promise.all([runWorker<PubResult>({ ...cfg, role: 'pub' }), subDone]);
    const cpu = cpuSince(snap, env.server);
    const figures = await nodeFigures(node);
    const l = sub.latencyMs;
    log(
      `  published ${fmtInt(pub.publishRate)}/s (max tick gap ${fmt(pub.maxTickGapMs, 1)} ms, ${pub.lateTicks} ticks > 5 ms, ` +
        `at worst ${fmtInt(pub.maxBehind)} events behind); delivered ${fmtInt(sub.delivered)}/${fmtInt(pub.measured)} ` +
        `(${fmtInt(sub.deliveredRate)}/s seen during the window; the last ${fmt(sub.drainMs, 0)} ms after it)`,
    );
    log(
      `  latency ms p50 ${fmt(l.p50, 2)} p95 ${fmt(l.p95, 2)} p99 ${fmt(l.p99, 2)} p99.9 ${fmt(l.p999, 2)} max ${fmt(l.max, 2)}`,
    );
    log(
      `  latency by publish time (per 250 ms, warm-up included), p50/max ms: ${sub.timeline
        .map((x) => `${fmt(x.p50, 0)}/${fmt(x.max, 0)}`)
        .join(' ')}`,
    );
    log(`  ${fmtNode(figures)}; node's own mean publish→state ${fmt(figures.nodeEndToEndMeanMs, 2)} ms`);
    log(
      `  ${fmtCpu(cpu)}; load generator threads pub ${fmt(pub.cpuMs / cpu.wallMs, 2)} + sub ${fmt(sub.cpuMs / cpu.wallMs, 2)} ` +
        'cores (included in other threads)',
    );
    log(`  ${fmtCheck('exactly-once check', sub.check)}`);
    log(`  ${tally}`);
    return { rate, durability, pub, sub, node: figures, cpu, warnings: tally.toJSON() };
  } finally {
    await node?.stop().catch((err) => log(`node stop failed: ${(err as Error).message}`));
    await env.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// 5–7. Moving partitions: restart, failover, restore

const LEASES = 'partita_leases';

function median(xs: number[]): number {
  if (xs.length === 0) return Number.NaN;
  const a = [...xs].sort((x, y) => x - y);
  const m = a.length >> 1;
  return a.length % 2 ? a[m]! : (a[m - 1]! + a[m]!) / 2;
}
const maxOf = (xs: number[]) => (xs.length ? Math.max(...xs) : Number.NaN);

/**
 * `events.tx.k<i>` at a fixed rate from the main thread (ticks of 5 ms, at most 10 ms worth of
 * events per tick, so a stalled loop falls behind instead of bursting), counting events per key.
 */
class PacedLoad {
  published = 0;
  readonly perKey: Uint32Array;
  private timer: NodeJS.Timeout | undefined;
  private t0 = 0;
  private base = 0;

  constructor(
    private readonly nc: NatsConnection,
    private readonly rate: number,
    readonly keys: number,
  ) {
    this.perKey = new Uint32Array(keys);
  }

  start(): void {
    this.t0 = now();
    this.base = this.published;
    const burst = Math.max(1, Math.ceil(this.rate / 100));
    this.timer = setInterval(() => {
      const due = this.base + Math.floor(((now() - this.t0) * this.rate) / 1000);
      const until = Math.min(due, this.published + burst);
      while (this.published < until) {
        const id = this.published++;
        const k = mix(id ^ 0x5bd1e995) % this.keys;
        this.perKey[k]!++;
        this.nc.publish(
          `events.tx.k${k}`,
          JSON.stringify({ id, amount: (id % 10_000) / 100, ts: wallNow(), note: 'move load' }),
        );
      }
    }, 5);
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.nc.flush();
  }
}

interface StateChangeMsg {
  key: string;
  state: { count: number };
  seq: number;
  partition: number;
  /** Missing on changes republished from an outbox after a restart (see the report). */
  epoch?: number;
}

/** Watches `partita.state.account.>`: arrival times per partition, the last count per key. */
class StateWatch {
  changes = 0;
  withoutEpoch = 0;
  readonly lastAt: Float64Array;
  readonly counts: Uint32Array;
  private readonly probes = new Set<(c: StateChangeMsg, t: number) => void>();

  constructor(nc: NatsConnection, partitions: number, keys: number) {
    this.lastAt = new Float64Array(partitions);
    this.counts = new Uint32Array(keys);
    nc.subscribe('partita.state.account.>', {
      callback: (err, m) => {
        if (err) return;
        const t = now();
        let c: StateChangeMsg;
        try {
          c = m.json<StateChangeMsg>();
        } catch {
          return;
        }
        this.changes++;
        if (c.epoch === undefined) this.withoutEpoch++;
        if (c.partition >= 0 && c.partition < this.lastAt.length) this.lastAt[c.partition] = t;
        const k = Number(c.key.slice(1));
        if (k >= 0 && k < this.counts.length) this.counts[k] = Math.max(this.counts[k]!, c.state.count);
        for (const p of this.probes) p(c, t);
      },
    });
  }

  /**
   * The first arrival, per partition of `above`, of a state change committed under a lease taken
   * after `above`'s revision: a lease's epoch is its revision at acquisition, so any later owner
   * (or a later run of the same node) has a larger one, and every earlier owner's epoch is ≤ it.
   */
  firstNewEpoch(above: Map<number, number>): { at: Map<number, number>; done: Promise<void>; stop(): void } {
    const at = new Map<number, number>();
    let resolve: () => void = () => undefined;
    const done = new Promise<void>((r) => {
      resolve = r;
    });
    const probe = (c: StateChangeMsg, t: number) => {
      const rev = above.get(c.partition);
      if (rev === undefined || at.has(c.partition) || c.epoch === undefined || c.epoch <= rev) return;
      at.set(c.partition, t);
      if (at.size === above.size) resolve();
    };
    this.probes.add(probe);
    if (above.size === 0) resolve();
    return { at, done, stop: () => this.probes.delete(probe) };
  }

  /** Until every partition has had a state change in the last `withinMs`. */
  async flowing(timeoutMs: number, withinMs = 1000): Promise<boolean> {
    const deadline = now() + timeoutMs;
    while (now() < deadline) {
      const t = now();
      if (this.lastAt.every((a) => a > 0 && t - a < withinMs)) return true;
      await sleep(50);
    }
    return false;
  }
}

interface LeaseRow {
  node: string;
  revision: number;
}

async function leaseTable(kv: KV, partitions: number): Promise<Map<number, LeaseRow>> {
  const out = new Map<number, LeaseRow>();
  await Promise.all(
    Array.from({ length: partitions }, async (_, p) => {
      const e = await kv.get(`p${p}`).catch(() => null);
      if (e?.operation === 'PUT') out.set(p, { node: e.json<{ node: string }>().node, revision: e.revision });
    }),
  );
  return out;
}

/** Until `ids` hold every lease, each within the balanced share; the owners then, or undefined. */
async function balanced(
  kv: KV,
  partitions: number,
  ids: string[],
  timeoutMs: number,
): Promise<Map<number, LeaseRow> | undefined> {
  const deadline = now() + timeoutMs;
  const lo = Math.floor(partitions / ids.length);
  const hi = Math.ceil(partitions / ids.length);
  let last = '';
  while (now() < deadline) {
    const t = await leaseTable(kv, partitions);
    const per = new Map<string, number[]>(ids.map((id) => [id, []]));
    for (const [p, r] of t) per.set(r.node, [...(per.get(r.node) ?? []), p]);
    if (
      t.size === partitions &&
      per.size === ids.length &&
      [...per.values()].every((ps) => ps.length >= lo && ps.length <= hi)
    )
      return t;
    last = [...per].map(([n, ps]) => `${n}: ${ps.join(',')}`).join('; ');
    await sleep(100);
  }
  log(`  not balanced after ${timeoutMs} ms: leases ${last}`);
  return undefined;
}

interface EoCheck {
  keys: number;
  keysWrong: number;
  missing: number;
  extra: number;
  published: number;
  stored: number;
  waitedMs: number;
}

/** Stops the load, then waits until every key's last state counts exactly the events sent to it. */
async function exactlyOnce(
  env: Env,
  load: PacedLoad,
  watch: StateWatch,
  timeoutMs: number,
): Promise<EoCheck> {
  await load.stop();
  const t0 = now();
  const wrong = () => {
    let n = 0;
    for (let k = 0; k < load.keys; k++) if (watch.counts[k] !== load.perKey[k]) n++;
    return n;
  };
  while (wrong() > 0 && now() - t0 < timeoutMs) await sleep(100);
  const out: EoCheck = {
    keys: 0,
    keysWrong: 0,
    missing: 0,
    extra: 0,
    published: load.published,
    stored: await streamMessages(env.jsm),
    waitedMs: now() - t0,
  };
  for (let k = 0; k < load.keys; k++) {
    const want = load.perKey[k]!;
    if (want === 0) continue;
    out.keys++;
    const got = watch.counts[k]!;
    if (got !== want) out.keysWrong++;
    if (got < want) out.missing += want - got;
    else out.extra += got - want;
  }
  return out;
}

const fmtEo = (c: EoCheck) =>
  `exactly-once check: ${fmtInt(c.published)} published, ${fmtInt(c.stored)} in the streams; ${fmtInt(c.keys)} keys, ` +
  `${c.keysWrong} with a wrong count (${fmtInt(c.missing)} events missing, ${fmtInt(c.extra)} counted twice)`;

/** Counts a child's warnings and errors (its stderr, JSON lines at level ≥ warn). */
function tallyStderr(tally: LogTally, text: string) {
  for (const line of text.split('\n')) if (line.trim()) tally.write(line);
}

function nodeArgs(env: Env, id: string): string[] {
  return ['node', '--nats', env.url, '--actors', ACTORS_DIR, '--data', join(env.dir, id), '--id', id];
}

/** Child nodes of the running phase, killed by `cleanupAll` if the bench fails. */
const children = new Set<NodeProcess>();

async function spawnNode(env: Env, id: string): Promise<NodeProcess> {
  const n = await spawnPartita(
    nodeArgs(env, id),
    { PARTITA_LOG_LEVEL: process.env.PARTITA_LOG_LEVEL ?? 'warn' },
    30_000,
  );
  children.add(n);
  return n;
}

async function killNode(n: NodeProcess, tally: LogTally): Promise<void> {
  await n.kill('SIGKILL');
  children.delete(n);
  tallyStderr(tally, n.stderr());
}

// 5. Restart on the same data dir

interface RestartRun {
  /** spawn → the `partita ready` line. */
  readyMs: number;
  /** spawn → the first state change committed under the new process's leases. */
  firstChangeMs: number;
  /** spawn → every partition has published under the new process's leases. */
  allPartitionsMs: number;
}

interface RestartResult {
  runs: RestartRun[];
  readyMedianMs: number;
  readyMaxMs: number;
  firstMedianMs: number;
  firstMaxMs: number;
  allMedianMs: number;
  allMaxMs: number;
  check: EoCheck;
  changesWithoutEpoch: number;
  warnings: Record<string, number>;
}

async function benchRestart(): Promise<RestartResult> {
  const env = await freshEnv();
  const loadNc = await connect({ servers: env.url, name: 'partita-bench-load' });
  const P = opts.partitions;
  const tally = new LogTally();
  let node: NodeProcess | undefined;
  const load = new PacedLoad(loadNc, opts.moveRate, opts.moveKeys);
  try {
    log(
      `restart: one node (child process) under ${fmtInt(opts.moveRate)} events/s over ${fmtInt(opts.moveKeys)} keys, ` +
        `kill -9 and restart on the same data dir, ${opts.repeats}× ...`,
    );
    const watch = new StateWatch(env.nc, P, opts.moveKeys);
    await env.nc.flush();
    const leases = await new Kvm(env.nc).open(LEASES);
    node = await spawnNode(env, 'r1');
    load.start();
    if (!(await watch.flowing(20_000))) throw new Error('restart: not every partition publishes state');
    await sleep(2000);
    const runs: RestartRun[] = [];
    for (let rep = 0; rep < opts.repeats; rep++) {
      const before = await leaseTable(leases, P);
      if (before.size !== P)
        throw new Error(`restart: ${before.size} of ${P} partitions leased before the kill`);
      const probe = watch.firstNewEpoch(new Map([...before].map(([p, r]) => [p, r.revision])));
      await killNode(node, tally);
      node = undefined;
      const tSpawn = now();
      node = await spawnNode(env, 'r1');
      const readyMs = now() - tSpawn;
      const ok = await Promise.race([probe.done.then(() => true), sleep(30_000).then(() => false)]);
      probe.stop();
      const ats = [...probe.at.values()];
      const run: RestartRun = {
        readyMs,
        firstChangeMs: ats.length ? Math.min(...ats) - tSpawn : Number.NaN,
        allPartitionsMs: ok ? Math.max(...ats) - tSpawn : Number.NaN,
      };
      runs.push(run);
      log(
        `  run ${rep + 1}: ready line ${fmt(run.readyMs, 0)} ms, first state change ${fmt(run.firstChangeMs, 0)} ms, ` +
          `all ${P} partitions ${ok ? `${fmt(run.allPartitionsMs, 0)} ms` : `not within 30 s (${probe.at.size} did)`} after the spawn`,
      );
      await sleep(2000);
    }
    const check = await exactlyOnce(env, load, watch, 20_000);
    tallyStderr(tally, node.stderr());
    const res: RestartResult = {
      runs,
      readyMedianMs: median(runs.map((r) => r.readyMs)),
      readyMaxMs: maxOf(runs.map((r) => r.readyMs)),
      firstMedianMs: median(runs.map((r) => r.firstChangeMs)),
      firstMaxMs: maxOf(runs.map((r) => r.firstChangeMs)),
      allMedianMs: median(runs.map((r) => r.allPartitionsMs)),
      allMaxMs: maxOf(runs.map((r) => r.allPartitionsMs)),
      check,
      changesWithoutEpoch: watch.withoutEpoch,
      warnings: tally.toJSON(),
    };
    log(`  restart → ready line: median ${fmt(res.readyMedianMs, 0)} ms, max ${fmt(res.readyMaxMs, 0)} ms`);
    log(
      `  restart → first state change: median ${fmt(res.firstMedianMs, 0)} ms, max ${fmt(res.firstMaxMs, 0)} ms (target ≤ 1000 ms)`,
    );
    log(
      `  restart → all partitions publishing: median ${fmt(res.allMedianMs, 0)} ms, max ${fmt(res.allMaxMs, 0)} ms`,
    );
    log(`  ${fmtEo(check)}; ${fmtInt(watch.withoutEpoch)} state changes without an epoch`);
    log(`  ${tally}`);
    return res;
  } finally {
    await load.stop().catch(() => undefined);
    if (node) await killNode(node, tally);
    await loadNc.close().catch(() => undefined);
    await env.stop();
  }
}

// 6. Failover to the other nodes

interface FailoverRun {
  victim: string;
  moved: number[];
  /** kill → the first state change of a moved partition under its new owner's lease. */
  firstChangeMs: number;
  /** kill → every moved partition has published under its new owner. */
  allPartitionsMs: number;
  /** kill → the victim's membership key expired (seen by polling every 50 ms). */
  membershipGoneMs: number;
  /** kill → the first / last moved partition's lease held by another node (polled). */
  firstLeaseMs: number;
  lastLeaseMs: number;
  /** The moved partitions' new owners. */
  takenBy: Record<string, number>;
  /** Restart of the victim → balanced over three again. */
  rebalanceMs: number;
}

interface FailoverResult {
  runs: FailoverRun[];
  firstMedianMs: number;
  firstMaxMs: number;
  allMedianMs: number;
  allMaxMs: number;
  check: EoCheck;
  warnings: Record<string, number>;
}

async function benchFailover(): Promise<FailoverResult> {
  const env = await freshEnv();
  const loadNc = await connect({ servers: env.url, name: 'partita-bench-load' });
  const P = opts.partitions;
  const ids = ['f1', 'f2', 'f3'];
  const tally = new LogTally();
  const nodes = new Map<string, NodeProcess>();
  const load = new PacedLoad(loadNc, opts.moveRate, opts.moveKeys);
  try {
    log(
      `failover: three nodes (child processes) under ${fmtInt(opts.moveRate)} events/s over ${fmtInt(opts.moveKeys)} keys, ` +
        `kill -9 one, ${opts.repeats}× ...`,
    );
    const watch = new StateWatch(env.nc, P, opts.moveKeys);
    await env.nc.flush();
    const kvm = new Kvm(env.nc);
    const leases = await kvm.open(LEASES);
    const members = await kvm.open('partita_nodes');
    for (const id of ids) nodes.set(id, await spawnNode(env, id));
    if (!(await balanced(leases, P, ids, 30_000))) throw new Error('failover: three nodes never balanced');
    load.start();
    if (!(await watch.flowing(20_000))) throw new Error('failover: not every partition publishes state');
    await sleep(1500);
    const runs: FailoverRun[] = [];
    for (let rep = 0; rep < opts.repeats; rep++) {
      const victim = ids[rep % ids.length]!;
      const before = await leaseTable(leases, P);
      const moved = [...before].filter(([, r]) => r.node === victim).map(([p]) => p);
      const probe = watch.firstNewEpoch(
        new Map([...before].filter(([p]) => moved.includes(p)).map(([p, r]) => [p, r.revision])),
      );
      // Poll membership and leases while the partitions move: where the time goes.
      let polling = true;
      let membershipGone = Number.NaN;
      const leaseAt = new Map<number, number>();
      const tKill = now();
      const poller = (async () => {
        while (polling) {
          const t = now();
          if (Number.isNaN(membershipGone)) {
            const gone = await members.get(victim).then(
              (e) => e?.operation !== 'PUT',
              () => false,
            );
            if (gone) membershipGone = t - tKill;
          }
          await Promise.all(
            moved.map(async (p) => {
              if (leaseAt.has(p)) return;
              const e = await leases.get(`p${p}`).catch(() => null);
              if (e?.operation === 'PUT' && e.json<{ node: string }>().node !== victim)
                leaseAt.set(p, t - tKill);
            }),
          );
          await sleep(50);
        }
      })();
      await killNode(nodes.get(victim)!, tally);
      nodes.delete(victim);
      const ok = await Promise.race([probe.done.then(() => true), sleep(30_000).then(() => false)]);
      probe.stop();
      polling = false;
      await poller;
      const ats = [...probe.at.values()];
      const after = await leaseTable(leases, P);
      const takenBy: Record<string, number> = {};
      for (const p of moved) {
        const o = after.get(p)?.node ?? '(none)';
        takenBy[o] = (takenBy[o] ?? 0) + 1;
      }
      const leaseTimes = [...leaseAt.values()];
      const run: FailoverRun = {
        victim,
        moved,
        firstChangeMs: ats.length ? Math.min(...ats) - tKill : Number.NaN,
        allPartitionsMs: ok ? Math.max(...ats) - tKill : Number.NaN,
        membershipGoneMs: membershipGone,
        firstLeaseMs: leaseTimes.length ? Math.min(...leaseTimes) : Number.NaN,
        lastLeaseMs: leaseTimes.length === moved.length ? Math.max(...leaseTimes) : Number.NaN,
        takenBy,
        rebalanceMs: Number.NaN,
      };
      log(
        `  run ${rep + 1}: killed ${victim} (partitions ${moved.join(',')}); membership gone at ${fmt(run.membershipGoneMs, 0)} ms, ` +
          `leases taken ${fmt(run.firstLeaseMs, 0)}–${fmt(run.lastLeaseMs, 0)} ms; first state change of a moved partition ` +
          `${fmt(run.firstChangeMs, 0)} ms, all ${moved.length} ${ok ? `${fmt(run.allPartitionsMs, 0)} ms` : `not within 30 s (${probe.at.size} did)`} ` +
          `after the kill; taken by ${Object.entries(takenBy)
            .map(([n, c]) => `${n}×${c}`)
            .join(' ')}`,
      );
      // Back to three nodes for the next run.
      const tRejoin = now();
      nodes.set(victim, await spawnNode(env, victim));
      if (!(await balanced(leases, P, ids, 30_000))) {
        for (const [id, n] of nodes) log(`  ${id} stderr: ${n.stderr().slice(-4000)}`);
        throw new Error(`failover: ${victim} rejoined, no balance`);
      }
      if (!(await watch.flowing(20_000)))
        throw new Error('failover: not every partition publishes after rejoin');
      run.rebalanceMs = now() - tRejoin;
      log(
        `    ${victim} restarted: balanced over three and publishing again after ${fmt(run.rebalanceMs, 0)} ms`,
      );
      runs.push(run);
      await sleep(1000);
    }
    const check = await exactlyOnce(env, load, watch, 20_000);
    for (const n of nodes.values()) tallyStderr(tally, n.stderr());
    const res: FailoverResult = {
      runs,
      firstMedianMs: median(runs.map((r) => r.firstChangeMs)),
      firstMaxMs: maxOf(runs.map((r) => r.firstChangeMs)),
      allMedianMs: median(runs.map((r) => r.allPartitionsMs)),
      allMaxMs: maxOf(runs.map((r) => r.allPartitionsMs)),
      check,
      warnings: tally.toJSON(),
    };
    log(
      `  kill → first state change of a moved partition: median ${fmt(res.firstMedianMs, 0)} ms, max ${fmt(res.firstMaxMs, 0)} ms (target ≤ 3000 ms)`,
    );
    log(
      `  kill → all moved partitions publishing: median ${fmt(res.allMedianMs, 0)} ms, max ${fmt(res.allMaxMs, 0)} ms`,
    );
    log(`  ${fmtEo(check)}`);
    log(`  ${tally}`);
    return res;
  } finally {
    await load.stop().catch(() => undefined);
    for (const n of nodes.values()) await killNode(n, tally);
    await loadNc.close().catch(() => undefined);
    await env.stop();
  }
}

// 7. Restore of a large state from the bucket, then a restart from local state

interface RestoreStart {
  /** startNode() called → resolved. */
  startNodeMs: number;
  /** startNode() called → the node runs every partition. */
  allPartitionsMs: number;
  /** partita_restore_seconds: sum and count (rounds). */
  restoreSecondsSum: number;
  restoreRounds: number;
  /** partita_actors once every partition runs. */
  actors: number;
  rssBeforeMB: number;
  rssAfterMB: number;
  /** Highest RSS sampled (every 50 ms) while starting. */
  rssPeakMB: number;
}

/** `partita node` started as a child process on the restored data dir: a node's own memory. */
interface RestoreChild {
  /** spawn → the `partita ready` line. */
  readyMs: number;
  /** spawn → every partition running (its consumer created by this process). */
  allPartitionsMs: number;
  /** VmRSS / VmHWM of the child once every partition runs. */
  rssMB: number;
  peakRssMB: number;
  /** From its /metrics. */
  actors: number;
  restoreRounds: number;
}

interface RestoreResult {
  keys: number;
  fillSeconds: number;
  fillRate: number;
  restore: RestoreStart;
  stopMs: number;
  restart: RestoreStart;
  child: RestoreChild | undefined;
  warnings: Record<string, number>;
}

/**
 * Every partition has a consumer of its owner created at or after `sinceMs` (epoch ms): a runner
 * creates it (named after its lease epoch, deleting its predecessors) just before it consumes.
 */
async function consumersSince(env: Env, partitions: number, sinceMs: number): Promise<boolean> {
  for (let p = 0; p < partitions; p++) {
    let ok = false;
    for await (const ci of env.jsm.consumers.list(inStream(p))) {
      if (ci.name.startsWith(`partita-p${p}-`) && Date.parse(ci.created) >= sinceMs - 2) ok = true;
    }
    if (!ok) return false;
  }
  return true;
}

function procStatusMB(pid: number, field: string): number {
  try {
    const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'));
    return m ? Number(m[1]) / 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

function promValue(text: string, name: string): number {
  let sum = Number.NaN;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue;
    sum = (Number.isNaN(sum) ? 0 : sum) + Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

const mb = (b: number) => b / 1024 / 1024;

async function gaugeValue(g: Gauge<string>): Promise<number> {
  return (await g.get()).values.reduce((a, v) => a + v.value, 0);
}

async function timedStart(env: Env, dataDir: string, tally: LogTally): Promise<[PartitaNode, RestoreStart]> {
  const rssBefore = process.memoryUsage().rss;
  let peak = rssBefore;
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, 50);
  try {
    const t0 = now();
    const t0Wall = Date.now();
    const node = await startNode({
      natsUrl: env.url,
      actorsDir: ACTORS_DIR,
      dataDir,
      id: 'restore-1',
      threads: opts.threads,
      durability: opts.durabilities[0]!,
      logger: pino({ level: process.env.PARTITA_LOG_LEVEL ?? 'warn', base: { node: 'bench' } }, tally),
    });
    const startNodeMs = now() - t0;
    // Runners are registered before they start, and a round can still fail (and release its
    // partitions) after that: running means every partition's consumer exists, made by this node.
    const deadline = now() + 300_000;
    const running = async () =>
      node.owned().length === node.partitions && (await consumersSince(env, node.partitions, t0Wall));
    while (!(await running()) && now() < deadline) await sleep(10);
    const allMs = now() < deadline ? now() - t0 : Number.NaN;
    const rs = await histSummary(node.metrics.restoreSeconds);
    peak = Math.max(peak, process.memoryUsage().rss);
    return [
      node,
      {
        startNodeMs,
        allPartitionsMs: allMs,
        restoreSecondsSum: rs.sum,
        restoreRounds: rs.count,
        actors: await gaugeValue(node.metrics.actors),
        rssBeforeMB: mb(rssBefore),
        rssAfterMB: mb(process.memoryUsage().rss),
        rssPeakMB: mb(peak),
      },
    ];
  } finally {
    clearInterval(sampler);
  }
}

const fmtStart = (s: RestoreStart) =>
  `startNode ${fmt(s.startNodeMs, 0)} ms, every partition running at ${fmt(s.allPartitionsMs, 0)} ms; ` +
  `partita_restore_seconds sum ${fmt(s.restoreSecondsSum, 2)} s over ${s.restoreRounds} rounds; ` +
  `partita_actors ${fmtInt(s.actors)}; RSS ${fmt(s.rssBeforeMB, 0)} → ${fmt(s.rssAfterMB, 0)} MB (peak ${fmt(s.rssPeakMB, 0)} MB)`;

async function benchRestore(): Promise<RestoreResult> {
  const env = await freshEnv();
  const tally = new LogTally();
  let node: PartitaNode | undefined;
  try {
    const n = opts.restoreKeys;
    const P = opts.partitions;
    log(`restore: ${fmtInt(n)} keys of state in the bucket, empty input streams ...`);
    const t0 = now();
    const updatedAt = new Date().toISOString();
    const flushes: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      const key = `k${i}`;
      const h = mix(i);
      const count = 1 + (h % 50);
      env.nc.publish(
        `$KV.${STATE_BUCKET}.account.${key}`,
        `{"actor":"account","key":"${key}","state":{"count":${count},"total":${(h % 1_000_000) / 100},"lastId":${i},"lastTs":0},` +
          `"seq":${1 + (h % 1000)},"updatedAt":"${updatedAt}","partition":${partitionOf(key, P)},"epoch":1}`,
      );
      // Flushes in flight, at most two: the server (not the client) is what limits the rate here.
      if (i % 20_000 === 19_999) {
        flushes.push(env.nc.flush());
        if (flushes.length > 2) await flushes.shift();
      }
    }
    await Promise.all(flushes);
    await env.nc.flush();
    const stateStream = `KV_${STATE_BUCKET}`;
    let have = 0;
    for (const deadline = now() + 120_000; now() < deadline; await sleep(50)) {
      have = (await env.jsm.streams.info(stateStream)).state.messages;
      if (have >= n) break;
    }
    if (have !== n) throw new Error(`the state bucket holds ${have} of the ${n} keys published`);
    const fillSeconds = (now() - t0) / 1000;
    log(`  filled in ${fmt(fillSeconds, 1)} s (${fmtInt(n / fillSeconds)} keys/s)`);

    const dataDir = join(env.dir, 'restore-node');
    let restore: RestoreStart;
    [node, restore] = await timedStart(env, dataDir, tally);
    log(`  restore from the bucket: ${fmtStart(restore)}`);
    if (restore.actors !== n)
      log(`  the restored store holds ${fmtInt(restore.actors)} actors, not ${fmtInt(n)}`);
    const tStop = now();
    await node.stop();
    node = undefined;
    const stopMs = now() - tStop;
    let restart: RestoreStart;
    [node, restart] = await timedStart(env, dataDir, tally);
    log(`  stopped in ${fmt(stopMs, 0)} ms; restart on the same data dir: ${fmtStart(restart)}`);
    if (restart.restoreRounds > 0)
      log('  the restart read the state bucket (it should start from local state)');
    // Once more as a process of its own, for the memory of a node holding these actors alone.
    await node.stop();
    node = undefined;
    let child: RestoreChild | undefined;
    const sinceWall = Date.now();
    const tSpawn = now();
    const proc = await spawnPartita(
      ['node', '--nats', env.url, '--actors', ACTORS_DIR, '--data', dataDir, '--id', 'restore-1'],
      { PARTITA_LOG_LEVEL: process.env.PARTITA_LOG_LEVEL ?? 'warn' },
      60_000,
    );
    children.add(proc);
    try {
      const readyMs = now() - tSpawn;
      const deadline = now() + 60_000;
      while (!(await consumersSince(env, P, sinceWall)) && now() < deadline) await sleep(10);
      const allMs = now() < deadline ? now() - tSpawn : Number.NaN;
      const pid = proc.child.pid!;
      const text = await fetch(`${proc.ready.metrics}/metrics`).then((r) => r.text());
      child = {
        readyMs,
        allPartitionsMs: allMs,
        rssMB: procStatusMB(pid, 'VmRSS'),
        peakRssMB: procStatusMB(pid, 'VmHWM'),
        actors: promValue(text, 'partita_actors'),
        restoreRounds: promValue(text, 'partita_restore_seconds_count'),
      };
      log(
        `  as a child process on the same data dir: ready line ${fmt(readyMs, 0)} ms, every partition running at ` +
          `${fmt(allMs, 0)} ms; partita_actors ${fmtInt(child.actors)}, restore rounds ${child.restoreRounds}; ` +
          `RSS ${fmt(child.rssMB, 0)} MB (peak ${fmt(child.peakRssMB, 0)} MB)`,
      );
    } finally {
      await proc.kill('SIGTERM');
      children.delete(proc);
      tallyStderr(tally, proc.stderr());
    }
    log(`  ${tally}`);
    return {
      keys: n,
      fillSeconds,
      fillRate: n / fillSeconds,
      restore,
      stopMs,
      restart,
      child,
      warnings: tally.toJSON(),
    };
  } finally {
    await node?.stop().catch((err) => log(`node stop failed: ${(err as Error).message}`));
    await env.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Report

interface Row {
  metric: string;
  value: string;
  target: string;
  baseline: string;
  ratio: string;
  met: string;
}

function printTable(rows: Row[]) {
  const cols: (keyof Row)[] = ['metric', 'value', 'target', 'baseline', 'ratio', 'met'];
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => r[c].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(width[i]!)).join('  ');
  console.log(line(cols));
  console.log(line(width.map((w) => '-'.repeat(w))));
  for (const r of rows) console.log(line(cols.map((c) => r[c])));
}

async function main() {
  const started = now();
  // The binary the runtime starts (PARTITA_NATS_SERVER, the project's .partita/bin, PATH).
  let natsVersion = '';
  try {
    natsVersion = `nats-server ${natsServerVersion().text}`;
  } catch {}
  log(
    `partita bench: ${cpus().length} cores (${cpus()[0]?.model ?? '?'}), node ${process.version}, ${natsVersion} ` +
      `(sync_interval ${opts.syncInterval}); ` +
      `${opts.partitions} partitions, ${opts.threads ?? Math.max(1, availableParallelism() - 1)} worker threads${quick ? ', --quick' : ''}`,
  );

  const run = (phase: string) => opts.only === undefined || opts.only.has(phase);
  const pause = () => sleep(300);
  const raw = run('raw') ? await benchRaw() : undefined;
  if (raw) await pause();
  const kv = run('kv') ? await benchKv() : undefined;
  if (kv) await pause();
  const backlog = run('backlog') ? await benchBacklog() : undefined;
  const lives: LiveResult[] = [];
  if (run('live')) {
    for (const durability of opts.durabilities) {
      for (const rate of opts.rates) {
        await pause();
        lives.push(await benchLive(rate, durability));
      }
    }
  }
  // A phase that fails is reported as such; the others still run.
  const attempt = async <T>(phase: string, fn: () => Promise<T>): Promise<T | undefined> => {
    if (!run(phase)) return undefined;
    await pause();
    try {
      return await fn();
    } catch (err) {
      log(`${phase} failed: ${(err as Error).stack ?? err}`);
      failed.push(phase);
      return undefined;
    }
  };
  const failed: string[] = [];
  const restart = await attempt('restart', benchRestart);
  const failover = await attempt('failover', benchFailover);
  const restore = await attempt('restore', benchRestore);
  const windowed = await attempt('windowed', () =>
    benchWindowed({
      events: opts.events,
      keys: opts.keys,
      partitions: opts.partitions,
      threads: opts.threads,
      event: backlogEvent,
    }),
  );
  const withEnv = async <T>(fn: (env: Env) => Promise<T>): Promise<T> => {
    const env = await freshEnv();
    try {
      return await fn(env);
    } finally {
      await env.stop();
    }
  };
  const fanout = await attempt('fanout', () =>
    withEnv((env) =>
      benchFanout(env, {
        clients: opts.fanoutClients,
        rate: opts.fanoutRate,
        seconds: opts.fanoutSeconds,
        warmupSeconds: opts.warmup,
        keys: 100,
        workers: 2,
      }),
    ),
  );
  const features = await attempt('features', () =>
    withEnv((env) => benchFeatures(env, { keys: 10_000, entities: 100, requests: opts.featuresRequests })),
  );

  const rows: Row[] = [];
  const info = (metric: string, value: string): Row => ({
    metric,
    value,
    target: '-',
    baseline: '-',
    ratio: '-',
    met: '-',
  });
  if (raw) rows.push(info('raw consume (ack only), events/s', fmtInt(raw.eventsPerSec)));
  if (kv) rows.push(info('KV get+update per event, events/s', fmtInt(kv.eventsPerSec)));
  const vsRaw = backlog && raw ? backlog.eventsPerSec / raw.eventsPerSec : Number.NaN;
  const vsKv = backlog && kv ? backlog.eventsPerSec / kv.eventsPerSec : Number.NaN;
  if (backlog) {
    rows.push({
      metric: 'Partita backlog vs raw, events/s',
      value: fmtInt(backlog.eventsPerSec),
      target: '≥ 50% of raw',
      baseline: raw ? fmtInt(raw.eventsPerSec) : '-',
      ratio: raw ? `${fmt(vsRaw * 100, 1)}%` : '-',
      met: raw ? (vsRaw >= 0.5 ? 'yes' : 'no') : '-',
    });
    rows.push({
      metric: 'Partita backlog vs KV, events/s',
      value: fmtInt(backlog.eventsPerSec),
      target: '≥ 20× KV',
      baseline: kv ? fmtInt(kv.eventsPerSec) : '-',
      ratio: kv ? `${fmt(vsKv, 1)}×` : '-',
      met: kv ? (vsKv >= 20 ? 'yes' : 'no') : '-',
    });
    const vsRawAfter = raw ? backlog.eventsPerSecAfterStart / raw.eventsPerSec : Number.NaN;
    rows.push({
      metric: '  (excluding node start-up)',
      value: fmtInt(backlog.eventsPerSecAfterStart),
      target: '(info)',
      baseline: raw ? fmtInt(raw.eventsPerSec) : '-',
      ratio: raw ? `${fmt(vsRawAfter * 100, 1)}%` : '-',
      met: '-',
    });
  }
  if (windowed) {
    rows.push({
      metric: 'windowed backlog (1m/5m/1h rollups) vs plain backlog, events/s',
      value: fmtInt(windowed.eventsPerSec),
      target: '(info)',
      baseline: backlog ? fmtInt(backlog.eventsPerSec) : '-',
      ratio: backlog ? `${fmt((windowed.eventsPerSec / backlog.eventsPerSec) * 100, 1)}%` : '-',
      met: '-',
    });
    rows.push(
      info(
        'windowed: window results published / late events',
        `${fmtInt(windowed.windowResults)} / ${fmtInt(windowed.lateEvents)}`,
      ),
    );
    rows.push({
      metric: `windowed vs plain actor, ${fmtInt(windowed.fewKeys)} keys, events/s`,
      value: fmtInt(windowed.fewWindowed.eventsPerSec),
      target: '(info)',
      baseline: fmtInt(windowed.fewPlain.eventsPerSec),
      ratio: `${fmt((windowed.fewWindowed.eventsPerSec / windowed.fewPlain.eventsPerSec) * 100, 1)}%`,
      met: '-',
    });
    rows.push(
      info(
        `windowed, ${fmtInt(windowed.fewKeys)} keys: window results / late events`,
        `${fmtInt(windowed.fewWindowed.windowResults)} / ${fmtInt(windowed.fewWindowed.lateEvents)}`,
      ),
    );
  }
  const targets: Record<number, number> = { 5000: 10, 50000: 50 };
  for (const l of lives) {
    const label = `live ${fmtInt(l.rate)}/s ${l.durability}`;
    const target = targets[l.rate];
    const complete = l.sub.delivered === l.pub.measured;
    rows.push({
      metric: `${label} p99 latency, ms`,
      value: fmt(l.sub.latencyMs.p99, 2),
      target: target !== undefined ? `≤ ${target} ms` : '-',
      baseline: '-',
      ratio: '-',
      met: target !== undefined ? (l.sub.latencyMs.p99 <= target && complete ? 'yes' : 'no') : '-',
    });
    rows.push({
      metric: `${label} p50 / p95 / max, ms`,
      value: `${fmt(l.sub.latencyMs.p50, 2)} / ${fmt(l.sub.latencyMs.p95, 2)} / ${fmt(l.sub.latencyMs.max, 1)}`,
      target: '-',
      baseline: '-',
      ratio: '-',
      met: '-',
    });
    rows.push({
      metric: `${label} published / delivered, events/s`,
      value: `${fmtInt(l.pub.publishRate)} / ${fmtInt(l.sub.deliveredRate)}`,
      target: `${fmtInt(l.rate)}`,
      baseline: '-',
      ratio: `${fmt((l.sub.delivered / Math.max(1, l.pub.measured)) * 100, 2)}% seen`,
      met: complete ? 'yes' : 'no',
    });
  }
  const ms = (v: number) => `${fmt(v, 0)} ms`;
  const medMax = (med: number, max: number) => `${ms(med)} (max ${ms(max)})`;
  const within = (v: number, target: number) => (Number.isFinite(v) && v <= target ? 'yes' : 'no');
  const eoRow = (label: string, c: EoCheck): Row => ({
    metric: `${label}: keys wrong (lost / doubled events)`,
    value: `${c.keysWrong} (${fmtInt(c.missing)} / ${fmtInt(c.extra)})`,
    target: '0',
    baseline: '-',
    ratio: '-',
    met: c.keysWrong === 0 && c.stored === c.published ? 'yes' : 'no',
  });
  if (restart) {
    rows.push(
      info(
        `restart (kill -9, same dir) → ready line, median ×${restart.runs.length}`,
        medMax(restart.readyMedianMs, restart.readyMaxMs),
      ),
    );
    rows.push({
      metric: `restart → first state change, median ×${restart.runs.length}`,
      value: medMax(restart.firstMedianMs, restart.firstMaxMs),
      target: '≤ 1000 ms (every run)',
      baseline: '-',
      ratio: '-',
      met: within(restart.firstMaxMs, 1000),
    });
    rows.push(
      info('restart → every partition publishing, median', medMax(restart.allMedianMs, restart.allMaxMs)),
    );
    rows.push(eoRow('restart', restart.check));
  }
  if (failover) {
    rows.push({
      metric: `failover: kill → first change of a moved partition, median ×${failover.runs.length}`,
      value: medMax(failover.firstMedianMs, failover.firstMaxMs),
      target: '≤ 3000 ms (every run)',
      baseline: '-',
      ratio: '-',
      met: within(failover.firstMaxMs, 3000),
    });
    rows.push({
      metric: 'failover: kill → every moved partition publishing, median',
      value: medMax(failover.allMedianMs, failover.allMaxMs),
      target: '≤ 3000 ms (SPEC)',
      baseline: '-',
      ratio: '-',
      met: within(failover.allMaxMs, 3000),
    });
    rows.push(eoRow('failover', failover.check));
  }
  if (restore) {
    const k = fmtInt(restore.keys);
    rows.push(
      info(
        `restore ${k} keys from the bucket → every partition running`,
        ms(restore.restore.allPartitionsMs),
      ),
    );
    rows.push(
      info(
        `  (startNode resolved; partita_restore_seconds sum)`,
        `${ms(restore.restore.startNodeMs)}; ${fmt(restore.restore.restoreSecondsSum, 2)} s`,
      ),
    );
    rows.push({
      metric: `restore: actors in LMDB`,
      value: fmtInt(restore.restore.actors),
      target: k,
      baseline: '-',
      ratio: '-',
      met: restore.restore.actors === restore.keys ? 'yes' : 'no',
    });
    const memTarget = restore.keys === 1_000_000;
    rows.push({
      metric: `restore: RSS with ${k} actors (bench process, after / peak)`,
      value: `${fmt(restore.restore.rssAfterMB, 0)} / ${fmt(restore.restore.rssPeakMB, 0)} MB`,
      target: memTarget ? '≤ 512 MB' : '-',
      baseline: `${fmt(restore.restore.rssBeforeMB, 0)} MB before`,
      ratio: '-',
      met: memTarget ? (restore.restore.rssPeakMB <= 512 ? 'yes' : 'no') : '-',
    });
    rows.push({
      metric: `restart with ${k} actors (same dir) → every partition running`,
      value: ms(restore.restart.allPartitionsMs),
      target: '≤ 1000 ms',
      baseline: '-',
      ratio: '-',
      met: within(restore.restart.allPartitionsMs, 1000),
    });
    rows.push({
      metric: '  restart read the bucket (restore rounds)',
      value: String(restore.restart.restoreRounds),
      target: '0',
      baseline: '-',
      ratio: '-',
      met: restore.restart.restoreRounds === 0 ? 'yes' : 'no',
    });
    if (restore.child) {
      rows.push({
        metric: `node process with ${k} actors (restarted), RSS / peak`,
        value: `${fmt(restore.child.rssMB, 0)} / ${fmt(restore.child.peakRssMB, 0)} MB`,
        target: memTarget ? '≤ 512 MB' : '-',
        baseline: '-',
        ratio: '-',
        met: memTarget ? (restore.child.peakRssMB <= 512 ? 'yes' : 'no') : '-',
      });
      rows.push(
        info(
          `  (its spawn → ready line / every partition running)`,
          `${ms(restore.child.readyMs)} / ${ms(restore.child.allPartitionsMs)}`,
        ),
      );
    }
  }
  if (fanout) {
    const f = fanout;
    rows.push({
      metric: `fan-out ${fmtInt(f.clients)} WS clients × ${fmtInt(f.rate)} changes/s: added latency p99, ms`,
      value: fmt(f.addedLatencyMs.p99, 2),
      target: '≤ 50 ms',
      baseline: `NATS p99 ${fmt(f.baselineLatencyMs.p99, 2)} ms`,
      ratio: '-',
      met: f.addedLatencyMs.p99 <= 50 && f.delivered === f.expected ? 'yes' : 'no',
    });
    rows.push(
      info(
        '  added latency p50 / p95 / max, ms',
        `${fmt(f.addedLatencyMs.p50, 2)} / ${fmt(f.addedLatencyMs.p95, 2)} / ${fmt(f.addedLatencyMs.max, 1)}`,
      ),
    );
    rows.push(
      info(
        '  gateway fan-out round p50 / p99, ms (≤ bucket bound)',
        `${fmt(f.gatewayRoundMs.p50, 2)} / ${fmt(f.gatewayRoundMs.p99, 2)} (${fmtInt(f.gatewayRoundMs.rounds)} rounds)`,
      ),
    );
    rows.push(
      info(
        '  gateway process CPU: cores / µs per delivered change',
        `${fmt(f.gatewayCpu.cores, 2)} / ${fmt(f.gatewayCpu.usPerDelivery, 1)}`,
      ),
    );
    rows.push({
      metric: '  delivered to clients, changes/s (all clients)',
      value: fmtInt(f.deliveredPerSecond),
      target: fmtInt(f.rate * f.clients),
      baseline: '-',
      ratio: `${fmt((f.delivered / Math.max(1, f.expected)) * 100, 2)}% seen`,
      met: f.delivered === f.expected ? 'yes' : 'no',
    });
  }
  if (features) {
    rows.push({
      metric: `/get-online-features, ${features.entities} entities × 3 features: p99, ms`,
      value: fmt(features.requestMs.p99, 2),
      target: '≤ 10',
      baseline: `KV gets p99 ${fmt(features.kvBaselineMs.p99, 2)} ms`,
      ratio: `${fmt(features.requestMs.p99 / features.kvBaselineMs.p99, 2)}×`,
      met: !features.allPresent ? 'no (not all PRESENT)' : features.requestMs.p99 <= 10 ? 'yes' : 'no',
    });
    rows.push(
      info(
        '  p50 request / KV gets, ms',
        `${fmt(features.requestMs.p50, 2)} / ${fmt(features.kvBaselineMs.p50, 2)}`,
      ),
    );
    rows.push(
      info(
        '  answered by (Partita-State-Source)',
        Object.entries(features.sources)
          .map(([s, n]) => `${s} ${n}`)
          .join(', '),
      ),
    );
  }
  for (const phase of failed) rows.push({ ...info(`${phase}`, 'FAILED (see above)'), met: 'no' });
  console.log('');
  printTable(rows);
  const totalSeconds = (now() - started) / 1000;
  console.log(`\n(${fmt(totalSeconds, 0)} s in all; results in ${opts.out})`);

  const results = {
    at: new Date().toISOString(),
    machine: {
      cores: cpus().length,
      model: cpus()[0]?.model,
      node: process.version,
      natsServer: natsVersion,
    },
    options: { ...opts, only: opts.only && [...opts.only], quick },
    raw,
    kv,
    backlog: backlog && { ...backlog, vsRaw, vsKv },
    live: lives,
    restart,
    failover,
    restore,
    fanout,
    features,
    failed,
    table: rows,
    seconds: totalSeconds,
  };
  writeFileSync(opts.out, `${JSON.stringify(results, null, 2)}\n`);
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    cleanupAll().finally(() => process.exit(130));
  });
}

main().then(
  () => process.exit(0),
  async (err) => {
    log(`bench failed: ${(err as Error).stack ?? err}`);
    await cleanupAll();
    process.exit(1);
  },
);
