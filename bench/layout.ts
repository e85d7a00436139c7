// Partition layouts side by side, same run, each on a fresh nats-server (the one the runtime
// finds: PARTITA_NATS_SERVER, .partita/bin): (A) the server's `partition()` mapping into one stream
// per partition (the baseline), (B) one stream whose subject transform assigns the partition, read
// by one filtered consumer per partition, (C) an ingest stream with that transform, sourced by one
// stream per partition (filtered). For each: the acknowledged publish rate (pipelined), for C also
// the rate until every event is in its partition's stream; the backlog rate of all partitions'
// durable pull consumers at once (as the runner's: ack all, max ack pending 3 × 2000); the live
// latency from publish to delivery at a steady rate. `node dist/bench/layout.js [events] [rate]`.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import {
  AckPolicy,
  DeliverPolicy,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
} from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { natsServerBinary, natsServerVersion, startNatsServer } from '../runtime/index.js';

const PARTITIONS = 16;
const EVENTS = Number(process.argv[2] ?? 200_000);
const RATE = Number(process.argv[3] ?? 5000);
const LIVE_SECONDS = 6;
const WINDOW = 2000;
const TRANSFORM = {
  src: 'events.*.*',
  dest: `partita.in.{{partition(${PARTITIONS},2)}}.{{wildcard(1)}}.{{wildcard(2)}}`,
};
const nanos = (ms: number) => ms * 1_000_000;

type Layout =
  | 'A mapping + stream per partition'
  | 'B one stream, filtered consumers'
  | 'C ingest sourced per partition';
const LAYOUTS: Layout[] = [
  'A mapping + stream per partition',
  'B one stream, filtered consumers',
  'C ingest sourced per partition',
];

/** Where partition p's consumer reads: its stream and filter. */
interface Source {
  stream: string;
  filter?: string;
}

async function setUp(jsm: JetStreamManager, layout: Layout): Promise<Source[]> {
  const base = {
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    duplicate_window: nanos(120_000),
    num_replicas: 1,
  };
  const ps = Array.from({ length: PARTITIONS }, (_, p) => p);
  if (layout.startsWith('A')) {
    for (const p of ps) await jsm.streams.add({ ...base, name: `IN_${p}`, subjects: [`partita.in.${p}.>`] });
    return ps.map((p) => ({ stream: `IN_${p}` }));
  }
  await jsm.streams.add({ ...base, name: 'EVENTS', subjects: ['events.>'], subject_transform: TRANSFORM });
  if (layout.startsWith('B')) return ps.map((p) => ({ stream: 'EVENTS', filter: `partita.in.${p}.>` }));
  for (const p of ps) {
    await jsm.streams.add({
      ...base,
      name: `IN_${p}`,
      subjects: [`partita.in.${p}.>`],
      sources: [{ name: 'EVENTS', filter_subject: `partita.in.${p}.>` }],
    });
  }
  return ps.map((p) => ({ stream: `IN_${p}` }));
}

function payload(i: number): string {
  // ~200 bytes of JSON, as an event of the seed scenario.
  return JSON.stringify({ id: i, t: Date.now(), amount: i % 997, currency: 'EUR', pad: 'x'.repeat(130) });
}

/** Publishes `n` events over many keys with `WINDOW` acknowledged publishes in flight. */
async function publishAll(nc: NatsConnection, n: number): Promise<number> {
  const js = jetstream(nc);
  const t0 = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      await js.publish(`events.pay.k${i % 50_000}`, payload(i), { timeout: 120_000 });
    }
  };
  await Promise.all(Array.from({ length: WINDOW }, worker));
  return (n / (performance.now() - t0)) * 1000;
}

async function stored(jsm: JetStreamManager, sources: Source[]): Promise<number> {
  let n = 0;
  for (const s of new Set(sources.map((x) => x.stream))) n += (await jsm.streams.info(s)).state.messages;
  return n;
}

/** Durable pull consumers as the runner's, one per partition, all reading at once. */
async function consumeAll(
  nc: NatsConnection,
  jsm: JetStreamManager,
  sources: Source[],
  name: string,
  deliver: DeliverPolicy,
  until: (count: number) => boolean,
  onMsg?: (data: Uint8Array) => void,
): Promise<{ stop: () => Promise<number> }> {
  const js = jetstream(nc);
  let count = 0;
  let done!: () => void;
  const finished = new Promise<void>((r) => {
    done = r;
  });
  const t0 = performance.now();
  const loops: Promise<void>[] = [];
  const stops: (() => void)[] = [];
  for (const [p, s] of sources.entries()) {
    await jsm.consumers.add(s.stream, {
      durable_name: `${name}-${p}`,
      ack_policy: AckPolicy.All,
      ack_wait: nanos(120_000),
      max_ack_pending: 6000,
      deliver_policy: deliver,
      ...(s.filter ? { filter_subject: s.filter } : {}),
    });
    const c = await js.consumers.get(s.stream, `${name}-${p}`);
    const msgs = await c.consume({ max_messages: 2000 });
    stops.push(() => msgs.stop());
    loops.push(
      (async () => {
        let i = 0;
        for await (const m of msgs) {
          onMsg?.(m.data);
          if (++i % 500 === 0 || msgs.getPending() === 0) m.ack();
          if (until(++count)) done();
        }
      })(),
    );
  }
  return {
    /** Waits until `until` holds, stops, and gives the rate. */
    stop: async () => {
      await finished;
      const rate = (count / (performance.now() - t0)) * 1000;
      for (const s of stops) s();
      await Promise.all(loops);
      return rate;
    },
  };
}

function pct(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? Number.NaN;
}

interface Row {
  layout: Layout;
  publish: number;
  partitioned: number;
  backlog: number;
  p50: number;
  p99: number;
}

async function measure(layout: Layout): Promise<Row> {
  const dir = mkdtempSync(join(tmpdir(), 'partita-layout-'));
  const server = await startNatsServer({
    port: 0,
    dataDir: join(dir, 'nats'),
    partitions: PARTITIONS,
    mapping: layout.startsWith('A'),
    syncInterval: '2m',
  });
  const nc = await connect({ servers: server.url });
  try {
    const jsm = await jetstreamManager(nc);
    const sources = await setUp(jsm, layout);
    const t0 = performance.now();
    const publish = await publishAll(nc, EVENTS);
    while ((await stored(jsm, sources)) < EVENTS) await new Promise((r) => setTimeout(r, 20));
    const partitioned = (EVENTS / (performance.now() - t0)) * 1000;

    const backlog = await consumeAll(nc, jsm, sources, 'backlog', DeliverPolicy.All, (n) => n >= EVENTS);
    const backlogRate = await backlog.stop();

    // Live: consumers at the end of the stream, events published at RATE, latency per delivery.
    const lat: number[] = [];
    const live = LIVE_SECONDS * RATE;
    const sub = await consumeAll(
      nc,
      jsm,
      sources,
      'live',
      DeliverPolicy.New,
      (n) => n >= live,
      (d) => lat.push(performance.timeOrigin + performance.now() - JSON.parse(new TextDecoder().decode(d)).t),
    );
    const js = jetstream(nc);
    const start = performance.now();
    const acks: Promise<unknown>[] = [];
    for (let i = 0; i < live; i++) {
      const due = start + (i * 1000) / RATE;
      const wait = due - performance.now();
      if (wait > 1) await new Promise((r) => setTimeout(r, wait));
      acks.push(js.publish(`events.pay.k${i % 50_000}`, payload(EVENTS + i), { timeout: 120_000 }));
    }
    await Promise.all(acks);
    await sub.stop();
    return { layout, publish, partitioned, backlog: backlogRate, p50: pct(lat, 0.5), p99: pct(lat, 0.99) };
  } finally {
    await nc.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const v = natsServerVersion(natsServerBinary()).text;
  console.log(
    `nats-server ${v}; ${PARTITIONS} partitions, ${EVENTS} events of ~200 bytes, live at ${RATE}/s`,
  );
  const rows: Row[] = [];
  for (const l of LAYOUTS) rows.push(await measure(l));
  const base = rows[0]!;
  const f = (x: number) => Math.round(x).toLocaleString('en');
  console.log(
    '| layout | publish (acked)/s | in partitions/s | backlog/s | live p50 ms | live p99 ms |\n| --- | --- | --- | --- | --- | --- |',
  );
  for (const r of rows) {
    const ratio = (x: number, b: number) => (r === base ? '' : ` (${(x / b).toFixed(2)}×)`);
    console.log(
      `| ${r.layout} | ${f(r.publish)}${ratio(r.publish, base.publish)} | ${f(r.partitioned)}${ratio(r.partitioned, base.partitioned)} | ${f(r.backlog)}${ratio(r.backlog, base.backlog)} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} |`,
    );
  }
}

await main();
