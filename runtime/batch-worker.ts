// The piscina worker: applies a partition's batch and commits states, checkpoint and outbox in one
// LMDB transaction, then returns what the main thread must publish. Actors never touch NATS.
import { workerData } from 'node:worker_threads';
import { pack, unpack } from 'msgpackr';
import { Piscina } from 'piscina';
import type { LoadedActor } from './actor-loader.js';
import { loadActors } from './actor-loader.js';
import { actorsByType, applyBatch, type RawEvent } from './batch.js';
import { timeOptionsFor, type WorkerTime, workerTimeOf, writeTime } from './event-time-store.js';
import { GovernanceCache } from './governance.js';
import { lineageJson } from './lineage.js';
import {
  countPartitionKeys,
  type Durability,
  type Outbox,
  openStateStore,
  type StateStore,
} from './state-store.js';
import { partitionOf, stateKvKey } from './subjects.js';

export interface WorkerConfig {
  actorFiles: string[];
  dataDir: string;
  partitions: number;
  maxEventBytes: number;
  maxAttempts: number;
  durability: Durability;
  /** Key of x-pii "hash" fields. */
  piiSecret?: string;
}

/** One piscina task: the ready batches of several partitions, committed in one transaction. */
export interface BatchTask {
  /** msgpack of PartitionBatch[] (empty: only load the actors and open LMDB). */
  batches: Uint8Array;
}

export interface PartitionBatch {
  partition: number;
  /** The lease epoch of the owner: written into the checkpoint and the published states. */
  epoch: number;
  events: RawEvent[];
}

export interface BatchResult {
  applied: number;
  created: number;
  lastSeq: number;
  /** [kv key, state change JSON, UTF-8 encoded here rather than on the main thread] */
  changes: [string, Uint8Array][];
  emits: Outbox['emits'];
  dead: Outbox['dead'];
  handlerMs: number;
  /** Time of the shared commit. */
  commitMs: number;
  /** Per actor, late events sent to the side output. */
  late: Record<string, number>;
  /** Windows or timers wait in this partition (the runner ticks it while idle). */
  timersPending: boolean;
  /** The lowest watermark of the partition's time-aware actors, if any (epoch ms). */
  watermark: number | null;
}

interface Ready {
  byType: Map<string, LoadedActor[]>;
  store: StateStore;
  time: WorkerTime;
}

const cfg = workerData as WorkerConfig;
let ready: Promise<Ready> | undefined;
const governance = new GovernanceCache(cfg.piiSecret);

async function init(): Promise<Ready> {
  const actors = await loadActors(cfg.actorFiles);
  const byType = actorsByType(actors);
  return { byType, store: openStateStore(cfg.dataDir, cfg.durability), time: workerTimeOf(actors) };
}

/** Copies into a buffer of its own so it can be transferred (msgpackr reuses its buffers). */
export function ownBuffer(b: Uint8Array): Uint8Array {
  const out = new Uint8Array(b.byteLength);
  out.set(b);
  return out;
}

/** Returns msgpack of BatchResult[], in the order of the task's batches. */
export default async function runBatches(task: BatchTask): Promise<unknown> {
  ready ??= init();
  const { byType, store, time } = await ready;
  // lmdb-js renews a thread's read snapshot on a setTimeout(0), which a worker waiting for its next
  // task (piscina's Atomics.wait) may not have run: start every task on the latest snapshot, or
  // it may miss what the main thread wrote meanwhile (states restored for a partition it takes).
  store.root.resetReadTxn();
  const batches = unpack(task.batches) as PartitionBatch[];
  if (batches.length === 0) return null;
  const now = Date.now();
  const updatedAt = new Date(now).toISOString();
  const govern = governance.current(store);
  // Each partition's key count (`Checkpoint.n`): keys are only ever added by batches, so the count
  // after a batch is the one before plus the keys it created. It goes out with every state change,
  // so a restore can tell when the bucket holds fewer keys than an owner had stored (see restore.ts).
  const counts = new Map<number, number>();
  const outs = batches.map((b) => {
    const t0 = performance.now();
    const out = applyBatch(byType, b.events, (actor, key) => store.states.get([actor, key]), {
      partition: b.partition,
      partitions: cfg.partitions,
      maxEventBytes: cfg.maxEventBytes,
      maxAttempts: cfg.maxAttempts,
      now,
      govern,
      time: timeOptionsFor(time, store, b.partition),
    });
    return { b, out, handlerMs: performance.now() - t0 };
  });
  const t1 = performance.now();
  // Group commit: every partition's states, checkpoint and outbox in one synchronous transaction.
  // Each partition's part is still all-or-nothing, which is all exactly-once needs.
  store.root.transactionSync(() => {
    for (const { b, out } of outs) {
      const keys: [string, string][] = [];
      let n = keyCountOf(store, b.partition);
      for (const w of out.writes) {
        store.states.put([w.actor, w.key], w.record);
        keys.push([w.actor, w.key]);
        if (w.created) n++;
      }
      counts.set(b.partition, n);
      const dead: Outbox['dead'] = out.dead.map((d) => [d.seq, d.code, d.message, d.actor]);
      const outbox: Outbox = { seq: out.lastSeq, keys, emits: out.emits, dead, n };
      store.meta.put(['cp', b.partition], {
        seq: out.lastSeq,
        at: now,
        epoch: b.epoch,
        clock: out.clock,
        n,
      });
      store.meta.put(['ob', b.partition, out.lastSeq], outbox);
      writeTime(store, b.partition, out);
    }
  });
  const commitMs = performance.now() - t1;
  const results: BatchResult[] = outs.map(({ b, out, handlerMs }) => {
    let created = 0;
    const changes: [string, Uint8Array][] = [];
    const n = counts.get(b.partition)!;
    for (const w of out.writes) {
      if (w.created) created++;
      changes.push([
        stateKvKey(w.actor, w.key),
        Buffer.from(
          `{"actor":${JSON.stringify(w.actor)},"key":${JSON.stringify(w.key)},"state":${w.json},"seq":${w.record.q},"updatedAt":"${updatedAt}","partition":${b.partition},"epoch":${b.epoch},"partitionKeys":${n}${lineageJson(b.partition, w.record)}${w.sysJson ? `,"sys":${w.sysJson}` : ''}}`,
        ),
      ]);
    }
    return {
      applied: out.applied,
      created,
      lastSeq: out.lastSeq,
      changes,
      emits: out.emits,
      dead: out.dead.map((d) => [d.seq, d.code, d.message, d.actor]),
      handlerMs,
      commitMs,
      late: out.late,
      ...time.summary(store, b.partition, out.clock),
    };
  });
  return Piscina.move(ownBuffer(pack(results)));
}

/**
 * The partition's key count from its checkpoint; a checkpoint written before counts were kept (or
 * none) is counted once from the states.
 */
function keyCountOf(store: StateStore, partition: number): number {
  const cp = store.checkpoint(partition);
  if (cp?.n != null) return cp.n;
  return countPartitionKeys(store, partition, (key) => partitionOf(key, cfg.partitions));
}
