// `node dist/bench/restore.js`: a restore of every partition by a node that never owned them, from
// a state bucket of N keys, with the bucket read the way restores read it today (an ephemeral
// consumer placed on the stream's leader) and with batch direct gets (nats-server 2.11+), in one
// run, alternating, on one fresh nats-server per size; and the same states restored from each
// partition's changelog (a snapshot, as compaction leaves it: runtime/changelog.ts). Also each
// bucket read alone, without LMDB. It reports; it asserts nothing.
//
// Flags: --keys 100000,1000000 --partitions N (16) --rounds N (2) --batch N (direct gets per
// request, 1000) --parallel N (direct requests in flight, 4)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { type JetStreamClient, type JetStreamManager, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { pino } from 'pino';
import { AckedPublisher, type Outgoing } from '../runtime/acked-publisher.js';
import {
  type ChangelogRecord,
  claimChangelog,
  ensureChangelogStream,
  restoreFromChangelog,
} from '../runtime/changelog.js';
import {
  ensureTopology,
  natsServerVersion,
  partitionOf,
  STATE_BUCKET,
  startNatsServer,
} from '../runtime/index.js';
import type { Logger } from '../runtime/logger.js';
import { restorePartitions } from '../runtime/restore.js';
import { type StateEntry, scanStateBucket } from '../runtime/state-scan.js';
import { openStateStore } from '../runtime/state-store.js';

const { values: flags } = parseArgs({
  options: {
    keys: { type: 'string' },
    partitions: { type: 'string' },
    rounds: { type: 'string' },
    batch: { type: 'string' },
    parallel: { type: 'string' },
  },
});
const SIZES = (flags.keys ?? '100000,1000000').split(',').map(Number);
const PARTITIONS = Number(flags.partitions ?? 16);
const ROUNDS = Number(flags.rounds ?? 2);
const BATCH = Number(flags.batch ?? 1000);
const PARALLEL = Number(flags.parallel ?? 4);
const STREAM = `KV_${STATE_BUCKET}`;

/**
 * The bucket read with batch direct gets: `PARALLEL` requests in flight, each for up to `BATCH`
 * messages from a start sequence, over the sequences up to the bucket's last at the start, then
 * once more up to its last then (as `scanStateBucket` extends its pass). A direct get may be
 * answered by any replica, not only the leader: this is only sound on a single server.
 */
async function scanDirect(
  _js: JetStreamClient,
  jsm: JetStreamManager,
  log: Logger,
  _rate: number,
  onEntry: (entry: StateEntry, bucketSeq: number, late: boolean) => Promise<unknown> | undefined,
): Promise<{ read: number }> {
  let read = 0;
  let pending: Promise<unknown> | undefined;
  const range = async (from: number, to: number, late: boolean) => {
    const starts: number[] = [];
    for (let s = from; s <= to; s += BATCH) starts.push(s);
    const one = async (start: number) => {
      // A batch from `start` returns the next BATCH messages that exist: past this chunk's end when
      // sequences are missing (deleted), which the next chunk reads itself.
      const end = Math.min(to, start + BATCH - 1);
      for (let seq = start; seq <= end; ) {
        const it = await jsm.direct.getBatch(STREAM, { seq, batch: BATCH });
        let last = 0;
        for await (const m of it) {
          last = m.seq;
          if (m.seq > end) continue;
          read++;
          const op = m.header?.get('KV-Operation');
          if (op === 'DEL' || op === 'PURGE' || m.data.length === 0) continue;
          try {
            pending = onEntry(m.json<StateEntry>(), m.seq, late) ?? pending;
          } catch (err) {
            log.warn({ err: (err as Error).message }, 'unreadable state entry skipped');
          }
        }
        if (last === 0) break;
        seq = last + 1;
      }
    };
    let next = 0;
    await Promise.all(
      Array.from({ length: PARALLEL }, async () => {
        while (next < starts.length) await one(starts[next++]!);
      }),
    );
    await pending;
  };
  const first = (await jsm.streams.info(STREAM)).state;
  if (first.messages === 0) return { read };
  await range(first.first_seq, first.last_seq, false);
  const again = (await jsm.streams.info(STREAM)).state.last_seq;
  if (again > first.last_seq) await range(first.last_seq + 1, again, true);
  return { read };
}

/** The state `fill` stores for key number `j`, as a record. */
function recordOf(j: number): ChangelogRecord {
  return [
    'account',
    `k${j}`,
    { s: { count: 1 + (j % 50), total: j / 100, lastId: j, lastTs: 0 }, q: 1 + (j % 1000), t: Date.now() },
  ];
}

/** Each partition's changelog as compaction leaves it: one snapshot of all its keys. */
async function fillChangelog(nc: NatsConnection, js: JetStreamClient, jsm: JetStreamManager, n: number) {
  await ensureChangelogStream(jsm, 1);
  const byPartition: ChangelogRecord[][] = Array.from({ length: PARTITIONS }, () => []);
  for (let j = 0; j < n; j++) byPartition[partitionOf(`k${j}`, PARTITIONS)]!.push(recordOf(j));
  for (let p = 0; p < PARTITIONS; p++) {
    const w = await claimChangelog(nc, js, jsm, p, 1, 'bench');
    await w.snapshot({ seq: 1000, at: Date.now(), n: byPartition[p]!.length }, byPartition[p]!);
  }
}

let epoch = 1;
/** Every partition restored from its changelog by a node that never owned it, all at once. */
async function restoreChangelog(nc: NatsConnection, js: JetStreamClient, jsm: JetStreamManager, dir: string) {
  const store = openStateStore(dir, 'process');
  epoch++;
  const res = await Promise.all(
    Array.from({ length: PARTITIONS }, async (_, p) =>
      restoreFromChangelog(js, store, PARTITIONS, await claimChangelog(nc, js, jsm, p, epoch, 'bench')),
    ),
  );
  await store.close();
  return res.reduce((a, r) => a + r.checkpoint.n!, 0);
}

async function fill(nc: NatsConnection, jsm: JetStreamManager, n: number): Promise<void> {
  // Stored publishes, 5,000 awaited at a time: core publishes this fast can be dropped.
  const publisher = new AckedPublisher(nc);
  const updatedAt = new Date().toISOString();
  for (let i = 0; i < n; i += 5000) {
    let items: Outgoing[] = [];
    for (let j = i; j < Math.min(n, i + 5000); j++) {
      const key = `k${j}`;
      items.push({
        subject: `$KV.${STATE_BUCKET}.account.${key}`,
        data:
          `{"actor":"account","key":"${key}","state":{"count":${1 + (j % 50)},"total":${j / 100},"lastId":${j},"lastTs":0},` +
          `"seq":${1 + (j % 1000)},"updatedAt":"${updatedAt}","partition":${partitionOf(key, PARTITIONS)},"epoch":1}`,
      });
    }
    while (items.length > 0) {
      const stored = await publisher.publish(items, 10_000);
      items = stored.failed.map((k) => items[k]!);
    }
  }
  publisher.close();
  if ((await jsm.streams.info(STREAM)).state.messages !== n)
    throw new Error('the bucket does not hold every key');
}

type Path = 'consumer' | 'direct' | 'changelog';
const rows: { keys: number; what: string; path: Path; ms: number }[] = [];

console.log(
  `nats-server ${natsServerVersion().text}; restore of ${PARTITIONS} partitions by a node that never owned them; ` +
    `direct gets: ${BATCH} a request, ${PARALLEL} in flight; ${ROUNDS} rounds alternating`,
);
for (const n of SIZES) {
  const dir = mkdtempSync(join(tmpdir(), 'partita-bench-restore-'));
  const server = await startNatsServer({
    port: 0,
    dataDir: join(dir, 'nats'),
    partitions: PARTITIONS,
    syncInterval: '2m',
  });
  const nc = await connect({ servers: server.url });
  try {
    await ensureTopology(nc, { partitions: PARTITIONS });
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    const t0 = performance.now();
    await fill(nc, jsm, n);
    console.log(`${n} keys: bucket filled in ${Math.round(performance.now() - t0)} ms`);
    const t1 = performance.now();
    await fillChangelog(nc, js, jsm, n);
    console.log(`${n} keys: changelog snapshots written in ${Math.round(performance.now() - t1)} ms`);
    const log = pino({ level: 'warn' });
    const targets = Array.from({ length: PARTITIONS }, (_, p) => ({ partition: p, epoch: 1 }));
    for (let r = 0; r < ROUNDS; r++) {
      for (const path of (r % 2 === 0
        ? ['consumer', 'direct', 'changelog']
        : ['changelog', 'direct', 'consumer']) as Path[]) {
        if (path === 'changelog') {
          const t = performance.now();
          const restored = await restoreChangelog(nc, js, jsm, join(dir, `node-changelog-${r}`));
          rows.push({ keys: n, what: 'restore', path, ms: performance.now() - t });
          if (restored !== n) console.log(`  changelog: restored ${restored} of ${n}`);
          console.log(`  round ${r + 1} changelog restore ${Math.round(rows.at(-1)!.ms)} ms`);
          continue;
        }
        const scan = path === 'direct' ? scanDirect : scanStateBucket;
        let t = performance.now();
        let seen = 0;
        await scan(js, jsm, log, 1e9, () => {
          seen++;
          return undefined;
        });
        rows.push({ keys: n, what: 'read only', path, ms: performance.now() - t });
        const store = openStateStore(join(dir, `node-${path}-${r}`), 'process');
        t = performance.now();
        const res = await restorePartitions(js, jsm, store, targets, PARTITIONS, log, 1e9, scan);
        rows.push({ keys: n, what: 'restore', path, ms: performance.now() - t });
        await store.close();
        if (seen !== n || res.restored !== n)
          console.log(`  ${path}: read ${seen}, restored ${res.restored} of ${n}`);
        console.log(
          `  round ${r + 1} ${path.padEnd(8)} read ${Math.round(rows.at(-2)!.ms)} ms, restore ${Math.round(rows.at(-1)!.ms)} ms`,
        );
      }
    }
  } finally {
    await nc.close().catch(() => undefined);
    await server.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}
const mean = (keys: number, what: string, path: Path) => {
  const xs = rows.filter((r) => r.keys === keys && r.what === what && r.path === path).map((r) => r.ms);
  return xs.reduce((a, b) => a + b, 0) / xs.length;
};
console.log(
  '| keys | what | bucket, consumer on the leader (ms) | bucket, batch direct get (ms) | direct / consumer | changelog snapshot (ms) | changelog / consumer |',
);
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const n of SIZES)
  for (const what of ['read only', 'restore']) {
    const a = mean(n, what, 'consumer');
    const b = mean(n, what, 'direct');
    const c = what === 'restore' ? mean(n, what, 'changelog') : Number.NaN;
    console.log(
      `| ${n} | ${what} | ${Math.round(a)} | ${Math.round(b)} | ${(b / a).toFixed(2)} | ${Number.isNaN(c) ? '–' : Math.round(c)} | ${Number.isNaN(c) ? '–' : (c / a).toFixed(2)} |`,
    );
  }
