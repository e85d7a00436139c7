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
//
// Every measurement gets a fresh nats-server (free port, fresh store in a temp dir), as the tests do.
// Flags: --events N --keys N --kv-seconds S --kv-events N --rates 5000,50000 --seconds S --warmup S
//        --live-keys N --partitions N --backlog-runs N --threads N --quick --out FILE
//        --only raw,kv,backlog,live
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { AckPolicy, DeliverPolicy, type JetStreamManager, jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { pino } from 'pino';
import type { Counter, Histogram } from 'prom-client';
import {
  type Durability,
  ensureTopology,
  inStream,
  type NatsServerHandle,
  type PartitaNode,
  startNatsServer,
  startNode,
} from '../runtime/index.js';
import { type LoadgenConfig, type PubResult, type SubResult, totalEvents, wallNow } from './loadgen.js';

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
    quick: { type: 'boolean', default: false },
    out: { type: 'string' },
    only: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});

if (flags.help) {
  console.log(
    'usage: npm run bench -- [--quick] [--events 200000] [--keys 100000] [--kv-seconds 10] [--kv-events 20000]\n' +
      '                       [--rates 5000,50000] [--seconds 5] [--warmup 1] [--live-keys 10000]\n' +
      '                       [--partitions 16] [--backlog-runs 2] [--threads <node default>] [--out bench-results.json]\n' +
      '                       [--durability sync,process]\n' +
      '                       [--only raw,kv,backlog,live]',
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
  out: flags.out ?? 'bench-results.json',
  /** Phases to run (raw, kv, backlog, live); all when omitted. */
  only: flags.only === undefined ? undefined : new Set(flags.only.split(',')),
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
    server = await startNatsServer({ port: 0, dataDir: join(dir, 'nats'), partitions: opts.partitions });
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

/** Publishes events 0..n-1 with core publishes and waits until the stream holds them all. */
async function publishBacklog(env: Env, n: number): Promise<{ rate: number; bytes: number }> {
  const t0 = now();
  let bytes = 0;
  for (let i = 0; i < n; i++) {
    const [subject, payload] = backlogEvent(i);
    bytes += payload.length;
    env.nc.publish(subject, payload);
    if (i % 5000 === 4999) await env.nc.flush();
  }
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
    `state changes ${fmtInt(f.stateChanges)}; dead letters ${f.deadLetters}; batch failures ${f.batchFailures}`
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
  warnings: Record<string, number>;
}

async function allAcked(env: Env, partitions: number): Promise<boolean> {
  for (let p = 0; p < partitions; p++) {
    // The runtime names its durable consumers partita-p<partition> (partition-runner.ts).
    const ci = await env.jsm.consumers.info(inStream(p), `partita-p${p}`);
    if (ci.num_pending > 0 || ci.num_ack_pending > 0) return false;
  }
  return true;
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
    const deadline = t0 + 600_000;
    while (applied < n && now() < deadline) {
      await sleep(10);
      applied = await counterSum(node.metrics.eventsApplied);
      samples.push([now(), applied]);
    }
    const tApplied = now();
    if (applied < n) log(`  only ${fmtInt(applied)} of ${fmtInt(n)} events applied before the deadline`);
    while (!(await allAcked(env, node.partitions)) && now() < deadline) await sleep(5);
    const tAcked = now();
    const cpu = cpuSince(snap, env.server);
    const figures = await nodeFigures(node);
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
      warnings: tally.toJSON(),
    };
    log(
      `  ${fmtInt(res.eventsPerSec)} events/s incl. start-up (${fmt(res.startupMs, 0)} ms start, all applied at ` +
        `${fmt(res.appliedMs, 0)} ms, all acked at ${fmt(res.ackedMs, 0)} ms); ${fmtInt(res.eventsPerSecAfterStart)}/s ` +
        `after start; steady 10–90% ${fmtInt(steady)}/s`,
    );
    log(`  ${fmtNode(figures)}`);
    log(`  ${fmtCpu(cpu)}`);
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
    log(
      `  exactly-once check: ${fmtInt(sub.check.keys)} keys, ${sub.check.keysWrong} with a wrong count ` +
        `(${fmtInt(sub.check.missing)} events missing, ${fmtInt(sub.check.extra)} counted twice)`,
    );
    log(`  ${tally}`);
    return { rate, durability, pub, sub, node: figures, cpu, warnings: tally.toJSON() };
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
  let natsVersion = '';
  try {
    natsVersion = execFileSync(process.env.PARTITA_NATS_SERVER || 'nats-server', ['--version'], {
      encoding: 'utf8',
    }).trim();
  } catch {}
  log(
    `partita bench: ${cpus().length} cores (${cpus()[0]?.model ?? '?'}), node ${process.version}, ${natsVersion}; ` +
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
