// The piscina worker: applies a partition's batch and commits states, checkpoint and outbox in one
// LMDB transaction, then returns what the main thread must publish. Actors never touch NATS.
import { workerData } from 'node:worker_threads';
import { pack } from 'msgpackr';
import { Piscina } from 'piscina';
import type { LoadedActor } from './actor-loader.js';
import { loadActors } from './actor-loader.js';
import { type ApplyOutput, actorsByType, applyBatch } from './batch.js';
import { decodeBatches, type PartitionBatch } from './batch-codec.js';
import { timeOptionsFor, type WorkerTime, workerTimeOf, writeTime } from './event-time-store.js';
import { GovernanceCache } from './governance.js';
import { CallRecorder } from './handler-watchdog.js';
import { lineageJson } from './lineage.js';
import {
  type Checkpoint,
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
  /** Largest state change (see ApplyOptions.maxStateBytes). */
  maxStateBytes?: number;
  /** Largest emitted payload: the server's max_payload less room for headers. */
  maxEmitBytes?: number;
  /** Recovery by changelog: each result carries its records and checkpoint (changelog.ts). */
  changelog?: boolean;
}

/** One piscina task: the ready batches of several partitions, committed in one transaction. */
export interface BatchTask {
  /** `encodeBatches` of the task's batches (none: only load the actors and open LMDB). */
  batches: Uint8Array;
  /** The watchdog's view of the task (handler-watchdog.ts). */
  watch?: SharedArrayBuffer;
}

/** A batch the worker could not apply or commit; nothing of it was committed. */
export interface BatchFailure {
  failed: string;
}

/** What a task answers for each of its batches, in order. */
export type BatchOutcome = BatchResult | BatchFailure;

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
  /** Recovery by changelog: the checkpoint the batch reaches (its changes go as they are). */
  checkpoint?: Checkpoint;
}

interface Ready {
  byType: Map<string, LoadedActor[]>;
  /** Each actor's place in the loaded list: how the watchdog record names it. */
  actorIndex: Map<string, number>;
  store: StateStore;
  time: WorkerTime;
}

const cfg = workerData as WorkerConfig;
let ready: Promise<Ready> | undefined;
const governance = new GovernanceCache(cfg.piiSecret);

async function init(): Promise<Ready> {
  const actors = await loadActors(cfg.actorFiles);
  const byType = actorsByType(actors);
  return {
    byType,
    actorIndex: new Map(actors.map((a, i) => [a.name, i])),
    store: openStateStore(cfg.dataDir, cfg.durability),
    time: workerTimeOf(actors),
  };
}

/** Copies into a buffer of its own so it can be transferred (msgpackr reuses its buffers). */
export function ownBuffer(b: Uint8Array): Uint8Array {
  const out = new Uint8Array(b.byteLength);
  out.set(b);
  return out;
}

/** Returns msgpack of BatchOutcome[], in the order of the task's batches. */
export default async function runBatches(task: BatchTask): Promise<unknown> {
  ready ??= init();
  const { byType, actorIndex, store, time } = await ready;
  // lmdb-js renews a thread's read snapshot on a setTimeout(0), which a worker waiting for its next
  // task (piscina's Atomics.wait) may not have run: start every task on the latest snapshot, or
  // it may miss what the main thread wrote meanwhile (states restored for a partition it takes).
  store.root.resetReadTxn();
  const batches = decodeBatches(task.batches);
  if (batches.length === 0) return null;
  const recorder = task.watch ? new CallRecorder(task.watch, actorIndex) : undefined;
  const now = Date.now();
  const updatedAt = new Date(now).toISOString();
  const govern = governance.current(store);
  const failures = new Map<number, string>();
  const outs: { i: number; b: PartitionBatch; out: ApplyOutput; handlerMs: number }[] = [];
  for (const [i, b] of batches.entries()) {
    recorder?.batch(i);
    const t0 = performance.now();
    try {
      const out = applyBatch(byType, b.events, (actor, key) => store.states.get([actor, key]), {
        partition: b.partition,
        partitions: cfg.partitions,
        maxEventBytes: cfg.maxEventBytes,
        maxAttempts: cfg.maxAttempts,
        maxStateBytes: cfg.maxStateBytes,
        maxEmitBytes: cfg.maxEmitBytes,
        now,
        govern,
        time: timeOptionsFor(time, store, b.partition),
        onCall: recorder?.record,
        poisoned: b.poisoned,
      });
      outs.push({ i, b, out, handlerMs: performance.now() - t0 });
    } catch (err) {
      // Only this partition's batch fails; the others of the task still commit.
      failures.set(i, `partition ${b.partition}: ${(err as Error).message}`);
    }
  }
  // Past this point the watchdog leaves the thread alone: it is never terminated mid-commit.
  if (recorder && !recorder.commit()) recorder.awaitTermination();
  // Each partition's key count (`Checkpoint.n`): keys are only ever added by batches, so the count
  // after a batch is the one before plus the keys it created. It goes out with every state change,
  // so a restore can tell when the bucket holds fewer keys than an owner had stored (see restore.ts).
  const counts = new Map<number, number>();
  const t1 = performance.now();
  const commit = (part: typeof outs) =>
    store.root.transactionSync(() => {
      for (const { b, out } of part) {
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
  // Group commit: every partition's states, checkpoint and outbox in one synchronous transaction.
  // Each partition's part is still all-or-nothing, which is all exactly-once needs. If it fails, one
  // transaction per partition: a batch that cannot be stored fails alone.
  try {
    commit(outs);
  } catch (err) {
    if (outs.length === 1) failures.set(outs[0]!.i, `commit: ${(err as Error).message}`);
    else
      for (const o of outs) {
        try {
          commit([o]);
        } catch (e) {
          failures.set(o.i, `partition ${o.b.partition}: commit: ${(e as Error).message}`);
        }
      }
  }
  const commitMs = performance.now() - t1;
  const results: BatchOutcome[] = batches.map((_, i) => ({ failed: failures.get(i) ?? 'not applied' }));
  for (const { i, b, out, handlerMs } of outs) {
    if (failures.has(i)) continue;
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
    results[i] = {
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
      ...(cfg.changelog
        ? {
            checkpoint: {
              seq: out.lastSeq,
              at: now,
              epoch: b.epoch,
              n,
              ...(out.clock ? { clock: out.clock } : {}),
            },
          }
        : {}),
    };
  }
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
