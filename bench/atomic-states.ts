// `node dist/bench/atomic-states.js`: the backlog rate of one node publishing each batch's state
// changes one acknowledged KV put each (today's path, and the only one before nats-server 2.12)
// against atomic batches (2.12+), in one run, alternating, each on a fresh nats-server. It reports;
// it asserts nothing.
//
// Flags: --events N (200000) --keys N (100000) --partitions N (16) --rounds N (2) --threads N
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { pino } from 'pino';
import {
  atomicStatesAvailable,
  ensureTopology,
  inStream,
  natsServerVersion,
  STATE_BUCKET,
  startNatsServer,
  startNode,
} from '../runtime/index.js';

const { values: flags } = parseArgs({
  options: {
    events: { type: 'string' },
    keys: { type: 'string' },
    partitions: { type: 'string' },
    rounds: { type: 'string' },
    threads: { type: 'string' },
  },
});
const EVENTS = Number(flags.events ?? 200_000);
const KEYS = Number(flags.keys ?? 100_000);
const PARTITIONS = Number(flags.partitions ?? 16);
const ROUNDS = Number(flags.rounds ?? 2);
const THREADS = flags.threads ? Number(flags.threads) : undefined;
const ACTORS_DIR = fileURLToPath(new URL('./actors/', import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Run {
  mode: 'per-put' | 'atomic';
  eventsPerSec: number;
  keys: number;
  /** Whether the bucket's newest entry carries the atomic batch headers (the path that ran). */
  batchHeaders: boolean;
}

async function once(atomic: boolean): Promise<Run> {
  const dir = mkdtempSync(join(tmpdir(), 'partita-bench-atomic-'));
  const server = await startNatsServer({
    port: 0,
    dataDir: join(dir, 'nats'),
    partitions: PARTITIONS,
    syncInterval: '2m',
  });
  const nc = await connect({ servers: server.url });
  try {
    await ensureTopology(nc, { partitions: PARTITIONS });
    const jsm = await jetstreamManager(nc);
    if (atomic && !(await atomicStatesAvailable(nc, jsm)))
      throw new Error(`nats-server ${nc.info?.version} has no atomic batches for the state bucket`);
    for (let i = 0; i < EVENTS; i++) {
      const key = `a${(i * 2654435761) % KEYS}`;
      nc.publish(
        `events.tx.${key}`,
        JSON.stringify({ id: i, amount: (i % 10_000) / 100, note: 'backlog event' }),
      );
      if (i % 5000 === 4999) await nc.flush();
    }
    await nc.flush();
    for (;;) {
      let have = 0;
      for (let p = 0; p < PARTITIONS; p++) have += (await jsm.streams.info(inStream(p))).state.messages;
      if (have >= EVENTS) break;
      await sleep(50);
    }
    const t0 = performance.now();
    const node = await startNode({
      natsUrl: server.url,
      actorsDir: ACTORS_DIR,
      dataDir: join(dir, 'node'),
      partitions: PARTITIONS,
      ...(THREADS ? { threads: THREADS } : {}),
      atomicStates: atomic,
      logger: pino({ level: 'warn', base: { node: 'bench' } }),
    });
    // Done when every partition's consumer has acknowledged its whole stream: acks follow the
    // stored publishing of every output.
    for (;;) {
      let done = true;
      for (let p = 0; p < PARTITIONS && done; p++) {
        const last = (await jsm.streams.info(inStream(p))).state.last_seq;
        let floor = 0;
        for await (const ci of jsm.consumers.list(inStream(p)))
          if (ci.name.startsWith(`partita-p${p}-`)) floor = Math.max(floor, ci.ack_floor.stream_seq);
        if (floor < last) done = false;
      }
      if (done) break;
      await sleep(20);
    }
    const seconds = (performance.now() - t0) / 1000;
    await node.stop();
    const info = await jsm.streams.info(`KV_${STATE_BUCKET}`);
    const newest = await jsm.streams.getMessage(`KV_${STATE_BUCKET}`, { seq: info.state.last_seq });
    return {
      mode: atomic ? 'atomic' : 'per-put',
      eventsPerSec: EVENTS / seconds,
      keys: info.state.messages,
      batchHeaders:
        newest?.header?.get('Nats-Batch-Id') !== undefined && newest?.header?.get('Nats-Batch-Id') !== '',
    };
  } finally {
    await nc.close().catch(() => undefined);
    await server.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

console.log(
  `nats-server ${natsServerVersion().text}; backlog of ${EVENTS} events over ${KEYS} keys, ${PARTITIONS} partitions, ${ROUNDS} rounds alternating`,
);
const runs: Run[] = [];
for (let r = 0; r < ROUNDS; r++) {
  // Alternate which goes first, so neither always gets the quieter moment.
  for (const atomic of r % 2 === 0 ? [false, true] : [true, false]) {
    const run = await once(atomic);
    runs.push(run);
    console.log(
      `  round ${r + 1} ${run.mode.padEnd(7)} ${Math.round(run.eventsPerSec).toString().padStart(7)} events/s  (${run.keys} keys in the bucket; batch headers ${run.batchHeaders ? 'yes' : 'no'})`,
    );
  }
}
const mean = (mode: Run['mode']) => {
  const xs = runs.filter((r) => r.mode === mode).map((r) => r.eventsPerSec);
  return xs.reduce((a, b) => a + b, 0) / xs.length;
};
const a = mean('per-put');
const b = mean('atomic');
console.log('| path | events/s (mean) | ratio |');
console.log('| --- | --- | --- |');
console.log(`| one acknowledged KV put per change | ${Math.round(a)} | 1.00 |`);
console.log(`| atomic batches of ≤ 1000 changes | ${Math.round(b)} | ${(b / a).toFixed(2)} |`);
