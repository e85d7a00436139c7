// A flood of bad events mixed with good ones, against one node with 16 partitions (what
// `partita dev` runs): 100,000 events of a type no actor consumes, published as fast as JetStream
// takes them, and 10,000 payments to the ledger among them. Prints the time to work it all off,
// the dead letters against the distinct bad events, the leases lost and the log volume (issue 17,
// finding 1). Run from dist: `node dist/bench/flood.js [bad] [good]`.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Writable } from 'node:stream';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function counter(node: Awaited<ReturnType<typeof startNode>>, name: string): Promise<number> {
  const m = node.metrics.registry.getSingleMetric(name);
  return m ? (await m.get()).values.reduce((a, v) => a + v.value, 0) : 0;
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
  const js = jetstream(nc);
  const t0 = performance.now();
  let inFlight: Promise<unknown>[] = [];
  const every = Math.max(1, Math.round(BAD / Math.max(1, GOOD)));
  let good = 0;
  for (let i = 0; i < BAD; i++) {
    inFlight.push(js.publish(`events.nosuchtype.k${i}`, JSON.stringify({ i })));
    if (i % every === 0 && good < GOOD) {
      inFlight.push(js.publish(`events.payments.acct${good % ACCOUNTS}`, JSON.stringify({ amount: 1 })));
      good++;
    }
    if (inFlight.length >= 2000) {
      await Promise.all(inFlight);
      inFlight = [];
    }
  }
  for (; good < GOOD; good++)
    inFlight.push(js.publish(`events.payments.acct${good % ACCOUNTS}`, JSON.stringify({ amount: 1 })));
  await Promise.all(inFlight);
  const published = performance.now() - t0;
  const kv = await new Kvm(nc).open(STATE_BUCKET);
  const applied = async () => {
    let n = 0;
    for (let a = 0; a < ACCOUNTS && a < GOOD; a++)
      n += (await kv.get(`ledger.acct${a}`))?.json<{ state: { count: number } }>().state.count ?? 0;
    return n;
  };
  const deadline = Date.now() + 15 * 60_000;
  let dead = 0;
  let goodApplied = 0;
  while (Date.now() < deadline) {
    dead = await counter(node, 'partita_events_dead_lettered_total');
    if (dead >= BAD) {
      goodApplied = await applied();
      if (goodApplied >= GOOD) break;
    }
    await sleep(250);
  }
  const workedOff = performance.now() - t0;
  const jsm = await jetstreamManager(nc);
  const dlq = (await jsm.streams.info(DLQ_STREAM)).state.messages;
  const out = {
    badEvents: BAD,
    goodEvents: GOOD,
    partitions: PARTITIONS,
    publishSeconds: +(published / 1000).toFixed(2),
    workedOffSeconds: +(workedOff / 1000).toFixed(2),
    badPerSecond: Math.round(BAD / (workedOff / 1000)),
    dlqMessages: dlq,
    distinctBadEvents: BAD,
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
