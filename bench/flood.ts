// A flood of bad events mixed with good ones, against one node with 16 partitions (what
// `partita dev` runs): 100,000 events of a type no actor consumes and 10,000 payments to the
// ledger among them, published as fast as the server takes them (JetStream publishes, 2,000 in
// flight: nats-server 2.11+ drops core publishes beyond a stream's ingest queue, and every event
// goes through the one ingest stream) while the node runs. Checks that the streams stored every
// one, then prints the time to
// work it all off, the dead letters against the distinct bad events, the leases lost and the log
// volume. Run from dist: `node dist/bench/flood.js [bad] [good] [limit seconds]`; it gives up
// after the limit (default 900 s) and prints what it saw by then.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Writable } from 'node:stream';
import { AckPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  createLogger,
  DLQ_STREAM,
  ensureTopology,
  STATE_BUCKET,
  startNatsServer,
  startNode,
} from '../runtime/index.js';

const BAD = Number(process.argv[2] ?? 100_000);
const GOOD = Number(process.argv[3] ?? 10_000);
const ACCOUNTS = 100;
const PARTITIONS = 16;
const LIMIT_S = Number(process.argv[4] ?? 900);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function counter(node: Awaited<ReturnType<typeof startNode>>, name: string): Promise<number> {
  const m = node.metrics.registry.getSingleMetric(name);
  return m ? (await m.get()).values.reduce((a, v) => a + v.value, 0) : 0;
}

/** How many distinct input events the dead-letter stream holds (by stream and sequence). */
async function distinctDeadLetters(nc: NatsConnection): Promise<number> {
  const jsm = await jetstreamManager(nc);
  const seen = new Set<string>();
  const c = await jsm.consumers.add(DLQ_STREAM, {
    ack_policy: AckPolicy.None,
    inactive_threshold: 60_000_000_000,
  });
  const consumer = await jetstream(nc).consumers.get(DLQ_STREAM, c.name);
  let left = (await jsm.streams.info(DLQ_STREAM)).state.messages;
  while (left > 0) {
    const batch = await consumer.fetch({ max_messages: 5000, expires: 2000 });
    let got = 0;
    for await (const m of batch) {
      got++;
      seen.add(`${m.headers?.get('Partita-Stream')}:${m.headers?.get('Partita-Stream-Seq')}`);
    }
    if (got === 0) break;
    left -= got;
  }
  return seen.size;
}

const dir = mkdtempSync(join(tmpdir(), 'partita-flood-'));
const server = await startNatsServer({ port: 0, dataDir: join(dir, 'nats'), partitions: PARTITIONS });
try {
  const nc = await connect({ servers: server.url });
  await ensureTopology(nc, { partitions: PARTITIONS });
  let lines = 0;
  let bytes = 0;
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      bytes += chunk.length;
      for (const c of chunk) if (c === 10) lines++;
      done();
    },
  });
  const node = await startNode({
    natsUrl: server.url,
    dataDir: join(dir, 'node'),
    id: 'flood',
    logger: createLogger({ node: 'flood' }, sink),
  });
  const linesAtStart = lines;
  const jsm = await jetstreamManager(nc);
  const stored = async () => {
    let n = 0;
    for (let p = 0; p < PARTITIONS; p++) n += (await jsm.streams.info(`PARTITA_IN_${p}`)).state.messages;
    return n;
  };
  const before = await stored();
  const t0 = performance.now();
  const every = Math.max(1, Math.round(BAD / Math.max(1, GOOD)));
  const js = jetstream(nc);
  const inFlight = new Set<Promise<unknown>>();
  const send = async (subject: string, data: string) => {
    const p = js.publish(subject, data, { timeout: 30_000 });
    inFlight.add(p);
    p.finally(() => inFlight.delete(p)).catch(() => undefined);
    if (inFlight.size >= 2000) await Promise.race(inFlight);
  };
  let good = 0;
  for (let i = 0; i < BAD; i++) {
    await send(`events.nosuchtype.k${i}`, JSON.stringify({ i }));
    if (i % every === 0 && good < GOOD) {
      await send(`events.payments.acct${good % ACCOUNTS}`, JSON.stringify({ amount: 1 }));
      good++;
    }
  }
  for (; good < GOOD; good++)
    await send(`events.payments.acct${good % ACCOUNTS}`, JSON.stringify({ amount: 1 }));
  await Promise.all(inFlight);
  const published = performance.now() - t0;
  const kv = await new Kvm(nc).open(STATE_BUCKET);
  const applied = async () => {
    let n = 0;
    for (let a = 0; a < ACCOUNTS && a < GOOD; a++)
      n += (await kv.get(`ledger.acct${a}`))?.json<{ state: { count: number } }>().state.count ?? 0;
    return n;
  };
  // The streams may still be taking the burst in: wait until they hold all of it (or give up).
  let inStreams = 0;
  for (let i = 0; i < 120; i++) {
    inStreams = (await stored()) - before;
    if (inStreams >= BAD + GOOD) break;
    await sleep(250);
  }
  const deadline = Date.now() + LIMIT_S * 1000;
  let dead = 0;
  let goodApplied = 0;
  while (Date.now() < deadline) {
    dead = await counter(node, 'partita_events_dead_lettered_total');
    if (dead >= BAD || Date.now() + 250 >= deadline) {
      goodApplied = await applied();
      if (goodApplied >= GOOD) break;
    }
    await sleep(250);
  }
  const workedOff = performance.now() - t0;
  const dlq = (await jsm.streams.info(DLQ_STREAM)).state.messages;
  const distinctDead = await distinctDeadLetters(nc);
  const out = {
    badEvents: BAD,
    goodEvents: GOOD,
    partitions: PARTITIONS,
    publishSeconds: +(published / 1000).toFixed(2),
    storedInInputStreams: inStreams,
    workedOff: dead >= BAD && goodApplied >= GOOD,
    workedOffSeconds: +(workedOff / 1000).toFixed(2),
    badPerSecond: Math.round(BAD / (workedOff / 1000)),
    dlqMessages: dlq,
    distinctBadEvents: BAD,
    distinctDeadLettered: distinctDead,
    deadLettersCounted: dead,
    goodApplied,
    leaseLosses: await counter(node, 'partita_lease_losses_total'),
    fencedBatches: await counter(node, 'partita_fenced_batches_total'),
    ownedPartitions: node.owned().length,
    logLines: lines - linesAtStart,
    logBytes: bytes,
  };
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  await node.stop();
  await nc.close();
} finally {
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
}
