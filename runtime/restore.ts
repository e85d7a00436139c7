// Restoring partitions that this node did not own last: their state comes from the state KV bucket,
// which holds the latest committed state of every key (a compacted changelog), so a restore reads
// state, not history. The caller then resumes at the old owner's acknowledged position; events
// after it that some keys already reflect are skipped by the per-key sequence (`StateRecord.q`).
import {
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamClient,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { consumerNames, newestEpochConsumers } from './consumer-names.js';
import { type Clock, maxClock, type Sys, wakeKey } from './event-time.js';
import { readKvLatest } from './kv-latest.js';
import { lineageOfChange } from './lineage.js';
import type { Logger } from './logger.js';
import { type StateEntry, scanStateBucket, stateBucketFollowers } from './state-scan.js';
import type { StateRecord, StateStore } from './state-store.js';
import { inStream, META_BUCKET, partitionOf } from './subjects.js';

export interface RestoreTarget {
  partition: number;
  epoch: number;
  /** Where the previous owner's stretch of ownership began, from its owner record. */
  previous?: OwnerFence;
  /** The previous owner was rebuilding the partition up to this sequence (its owner record). */
  rebuildTo?: number;
}

/** A partition whose state the bucket no longer holds whole: rebuilt from its input stream. */
export interface Rebuild {
  partition: number;
  /** Keys the bucket lacks (0 when an unfinished rebuild is taken over). */
  missing: number;
  /** Outputs of events up to here are stored already: the rebuild publishes none of them. */
  to: number;
}

/**
 * The start of an owner's stretch of ownership of a partition: its lease epoch then, and the state
 * bucket's last sequence before it wrote anything. A state of the partition stored after
 * `stateRev` under an older epoch can only come from a former owner that was paused past its
 * lease and woke up mid-publish (a zombie): it may have replaced a newer state.
 */
export interface OwnerFence {
  epoch: number;
  stateRev: number;
}

/** `owner.p<N>` in the meta bucket: who ran the partition last. */
export interface OwnerRecord {
  node: string;
  epoch: number;
  at: number;
  fence?: OwnerFence;
  /** The owner is rebuilding the partition from its input stream, publishing nothing up to `to`. */
  rebuild?: { to: number };
}

/**
 * Replaces the local state of `targets` with what the state bucket holds for their keys, in one
 * pass over the bucket, writing as it reads (memory stays flat whatever the state's size), then
 * sets each checkpoint to the previous owner's acknowledged position. Until that last write the
 * node's owner record is not updated, so a crash halfway simply restores again.
 */
export async function restorePartitions(
  js: JetStreamClient,
  jsm: JetStreamManager,
  store: StateStore,
  targets: readonly RestoreTarget[],
  partitionCount: number,
  log: Logger,
  /** Entries read per second at most, so a large restart does not saturate NATS. @default 200000 */
  ratePerSecond = 200_000,
  /** The pass over the bucket on its leader (`bench/restore.ts` puts another beside it). */
  scan: typeof scanStateBucket = scanStateBucket,
): Promise<{
  entries: number;
  restored: number;
  zombieStates: number;
  rebuilds: Rebuild[];
  /** States a follower held newer than the leader. */
  fromFollowers: number;
}> {
  const partitions = new Set(targets.map((t) => t.partition));
  const started = performance.now();
  // Where the previous owners got to, read before the states: every state change of an event at
  // or below it was stored before it was acknowledged, so the scan below sees all of them. Read
  // after, it could take in the ack of a batch (a paused former owner's, resuming) whose states
  // the scan already went past.
  const positions: Record<number, number> = {};
  for (const t of targets) positions[t.partition] = await acknowledgedSeq(jsm, t.partition);
  const acknowledged = { ...positions };
  await store.clearPartitions(partitions, (key) => partitionOf(key, partitionCount));
  let restored = 0;
  // Event time travels in each time-aware record (`sys`): its windows, timers and wake times go
  // back into the record and the wake index, and the partition clock becomes the newest any of
  // its records saw (at most a batch ahead of the acknowledged position: see ARCHITECTURE.md).
  const clocks = new Map<number, Clock | undefined>();
  // A zombie's state (see OwnerFence) is a true fold of the events up to its sequence, but it may
  // have replaced a newer one: the partition then resumes just after it instead of at the
  // acknowledged position, and every key newer than that skips what it already reflects.
  const fenceOf = new Map(targets.flatMap((t) => (t.previous ? [[t.partition, t.previous] as const] : [])));
  let zombieStates = 0;
  // Whether the bucket still holds every key: each state change carries its partition's key count
  // after its batch (`partitionKeys`). Take the newest entry (by bucket sequence) of an
  // acknowledged batch: every key counted in it was created at or before that batch, and every
  // acknowledged state put was stored, so each of those keys has an entry (its last put's). Fewer
  // entries than that count means the bucket lost some.
  const found = new Map<number, number>();
  const counted = new Map<number, { seq: number; n: number }>();
  // Takes one entry into LMDB, replacing `previous`: a state of its key read before (an older one
  // from another replica, or one rewritten during the scan), which is not counted again.
  const take = (v: StateEntry, bucketSeq: number, p: number, previous?: StateRecord) => {
    let pending: Promise<unknown> | undefined;
    const oldWakes = (previous?.x as Sys | undefined)?.k;
    for (const kind of [0, 1] as const) {
      const t = oldWakes?.[kind];
      if (t != null) pending = store.meta.remove(wakeKey(p, v.actor, kind, t, v.key));
    }
    pending = store.states.put([v.actor, v.key], {
      s: v.state,
      q: v.seq,
      t: Date.parse(v.updatedAt),
      ...lineageOfChange(v),
      ...(v.sys ? { x: v.sys } : {}),
    });
    for (const kind of [0, 1] as const) {
      const t = v.sys?.k?.[kind];
      if (t != null) pending = store.meta.put(wakeKey(p, v.actor, kind, t, v.key), 1);
    }
    if (v.sys?.c) clocks.set(p, maxClock(clocks.get(p), v.sys.c));
    if (!previous) {
      found.set(p, (found.get(p) ?? 0) + 1);
      restored++;
    }
    if (v.partitionKeys != null && v.seq <= acknowledged[p]! && bucketSeq > (counted.get(p)?.seq ?? 0))
      counted.set(p, { seq: bucketSeq, n: v.partitionKeys });
    const fence = fenceOf.get(p);
    if (fence && bucketSeq > fence.stateRev && (v.epoch ?? 0) < fence.epoch && v.seq < positions[p]!) {
      zombieStates++;
      positions[p] = v.seq;
    }
    return pending;
  };
  // Entries read late (past the bucket's last sequence at the start) may be keys read already and
  // rewritten since (a paused former owner waking up): taken one after another, each replaces the
  // state read before, and a key is counted once.
  let lateTakes: Promise<unknown> = Promise.resolve();
  const { read } = await scan(js, jsm, log, ratePerSecond, (v, bucketSeq, late) => {
    const p = partitionOf(v.key, partitionCount);
    if (!partitions.has(p)) return undefined;
    if (!late) return take(v, bucketSeq, p);
    lateTakes = lateTakes.then(() => take(v, bucketSeq, p, store.states.get([v.actor, v.key])));
    return lateTakes;
  });
  // The other replicas too: on 2.9 a killed server's replica can come back with a key's older
  // entry (or none) and lead, while the others hold the newer one. Newer states (by `seq`) found
  // on a follower replace the leader's; a follower that cannot be read is skipped.
  const newer = new Map<string, { v: StateEntry; bucketSeq: number }>();
  const followers = await stateBucketFollowers(jsm).catch(() => [] as string[]);
  await Promise.all(
    followers.map((server) =>
      scanStateBucket(
        js,
        jsm,
        log,
        ratePerSecond,
        (v, bucketSeq) => {
          if (!partitions.has(partitionOf(v.key, partitionCount))) return undefined;
          const id = `${v.actor}\u0000${v.key}`;
          const best = newer.get(id)?.v.seq ?? store.states.get([v.actor, v.key])?.q ?? 0;
          if (v.seq > best) newer.set(id, { v, bucketSeq });
          return undefined;
        },
        server,
      ).catch((err) =>
        log.warn({ server, err: (err as Error).message }, 'restore could not read a follower replica'),
      ),
    ),
  );
  let pending: Promise<unknown> | undefined;
  for (const { v, bucketSeq } of newer.values()) {
    const p = partitionOf(v.key, partitionCount);
    pending = take(v, bucketSeq, p, store.states.get([v.actor, v.key])) ?? pending;
  }
  await pending;
  if (newer.size > 0)
    log.warn(
      { states: newer.size, followers },
      "the state bucket's leader served older states (or none) of keys a follower holds newer: took the newer",
    );
  const rebuilds: Rebuild[] = [];
  for (const t of targets) {
    const p = t.partition;
    const missing = Math.max(0, (counted.get(p)?.n ?? 0) - (found.get(p) ?? 0));
    // An unfinished rebuild is taken over whatever the count says: the bucket may hold fewer
    // acknowledged entries then, which would hide the keys it still lacks.
    if (missing > 0 || (t.rebuildTo ?? 0) > acknowledged[p]!)
      rebuilds.push({ partition: p, missing, to: Math.max(acknowledged[p]!, t.rebuildTo ?? 0) });
  }
  if (rebuilds.length > 0) {
    // Start over from the stream's first event, from nothing: a deterministic refold gives back
    // every state (and the partition clock) as first computed. The surviving entries stay in the
    // bucket until the rebuild passes `to` and publishes the partition's states whole.
    await store.clearPartitions(new Set(rebuilds.map((r) => r.partition)), (key) =>
      partitionOf(key, partitionCount),
    );
    for (const r of rebuilds) {
      await store.meta.put(['rb', r.partition], r.to);
      log.error(
        { partition: r.partition, missing: r.missing, acknowledged: acknowledged[r.partition], to: r.to },
        r.missing > 0
          ? 'the state bucket lost keys of this partition: rebuilding it from its input stream'
          : 'taking over an unfinished rebuild of this partition from its input stream',
      );
    }
  }
  const rebuilding = new Set(rebuilds.map((r) => r.partition));
  for (const t of targets) {
    const clock = clocks.get(t.partition);
    await store.meta.put(
      ['cp', t.partition],
      rebuilding.has(t.partition)
        ? { seq: 0, at: Date.now(), epoch: t.epoch, n: 0 }
        : {
            seq: positions[t.partition]!,
            at: Date.now(),
            epoch: t.epoch,
            n: found.get(t.partition) ?? 0,
            ...(clock ? { clock } : {}),
          },
    );
  }
  if (zombieStates > 0)
    log.warn(
      { zombieStates, positions },
      'former owners stored states after losing their leases: resuming those partitions after them',
    );
  log.info(
    { positions, entries: read, restored, zombieStates, ms: Math.round(performance.now() - started) },
    'state restored from the state bucket',
  );
  return { entries: read, restored, zombieStates, rebuilds, fromFollowers: newer.size };
}

/**
 * Where the previous owner got to: the highest acknowledged sequence over the consumers of the
 * newest lease epoch (acks follow the stored publishing of every output, so every state up to it
 * is in the bucket). A consumer of an older epoch can outlive its owner (its delete failed, or a
 * paused owner created it late): its floor may lie past what the newest owner published, after
 * that owner went back to its own, older checkpoint, or past states the newest owner replaced with
 * older folds, and trusting it would skip those events.
 *
 * The consumers are named by the meta layer (`consumerNames`), not listed: a listing leaves out a
 * consumer whose leader does not answer within 4 s (a NATS server just died, or is starved of
 * CPU), so the newest epoch's consumer could silently drop out and an older one's floor be taken.
 * Every consumer of the newest epoch must answer; one that does not fails the restore, which is
 * tried again (the partitions are released and taken again).
 */
export async function acknowledgedSeq(jsm: JetStreamManager, partition: number): Promise<number> {
  const stream = inStream(partition);
  for (let attempt = 1; ; attempt++) {
    const { epoch: newest, names } = newestEpochConsumers(await consumerNames(jsm, stream), partition);
    let seq = 0;
    try {
      for (const name of names) {
        const ci = await jsm.consumers.info(stream, name);
        // Until its first ack a consumer reports a floor of 0, not the one below where it starts
        // (the checkpoint it was created at), which would send a new owner back to the stream's start.
        const start = ci.config.opt_start_seq ? ci.config.opt_start_seq - 1 : 0;
        seq = Math.max(seq, ci.ack_floor.consumer_seq > 0 ? ci.ack_floor.stream_seq : start);
      }
      return seq;
    } catch (err) {
      // Deleted since it was named (its owner resumed with a fresh one): name them again.
      if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.ConsumerNotFound && attempt < 5)
        continue;
      throw new Error(
        `partition ${partition}: the acknowledged position of consumer epoch ${newest} could not be read: ${(err as Error).message}`,
        { cause: err },
      );
    }
  }
}

/**
 * The partition's owner record, read from the meta bucket's stream leader: a follower still catching
 * up would name a former owner, and a node could take itself for the last owner and start from a
 * stale checkpoint.
 */
export async function readOwnerRecord(
  jsm: JetStreamManager,
  partition: number,
): Promise<{ record?: OwnerRecord; revision: number }> {
  const e = await readKvLatest(jsm, META_BUCKET, ownerKey(partition));
  return e ? { record: e.json<OwnerRecord>(), revision: e.revision } : { revision: 0 };
}

/** The key of a partition's owner record in the meta bucket. */
export function ownerKey(partition: number): string {
  return `owner.p${partition}`;
}
