// One pass over the state bucket, read on its stream's leader: what restores and state audits
// share. The bucket holds one entry per key (history 1), so reading every message reads every key.
import { AckPolicy, DeliverPolicy, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import type { Sys } from './event-time.js';
import type { Logger } from './logger.js';
import { STATE_BUCKET } from './subjects.js';

/** A scan whose bucket replica shows nothing new for this long fails. */
const STALL_MS = 20_000;
/** A scan whose consumer delivers nothing for this long asks the server whether it is done. */
const QUIET_MS = 1500;

/** A state bucket entry: the state change a node published (see batch-worker.ts). */
export interface StateEntry {
  actor: string;
  key: string;
  state: unknown;
  seq: number;
  updatedAt: string;
  lineage?: unknown;
  sys?: Sys;
  epoch?: number;
  partitionKeys?: number;
}

/**
 * Calls `onEntry` for every state entry (deleted keys and unreadable entries skipped) with its
 * bucket sequence, in bucket order, at most `ratePerSecond` entries a second; awaits what
 * `onEntry` returned every 5,000 entries and at the end. Reads the replica on the stream's leader
 * (or on `server`, one of its peers), and throws when it could not read up to the bucket's end
 * there (or the leader changed meanwhile).
 */
export async function scanStateBucket(
  js: JetStreamClient,
  jsm: JetStreamManager,
  log: Logger,
  ratePerSecond: number,
  /** `late`: read after the scan reached the bucket's last sequence at its start, so possibly a
   * key read already and rewritten since; every earlier `onEntry` has settled by then. */
  onEntry: (entry: StateEntry, bucketSeq: number, late: boolean) => Promise<unknown> | undefined,
  server?: string,
): Promise<{ read: number }> {
  const stream = `KV_${STATE_BUCKET}`;
  const started = performance.now();
  const info = await jsm.streams.info(stream);
  let read = 0;
  if (info.state.messages === 0) return { read };
  // The scan reads the replica its consumer sits on, and nats-server places an ephemeral consumer
  // on any of the stream's peers. A follower can be behind, or (2.9, after a server was killed)
  // miss messages for good, and serve a key's older state: a restore from it loses events. So the
  // consumer is placed on the stream's leader (created again until it lands there), and the scan
  // reads up to the leader's last sequence.
  const name = await consumerOn(jsm, stream, server ?? info.cluster?.leader);
  const consumer = await js.consumers.get(stream, name);
  const msgs = await consumer.consume({ max_messages: 5000 });
  let pending: Promise<unknown> | undefined;
  let lastSeen = performance.now();
  let stalled = false;
  // Set when the consumer has nothing more to deliver: the stream's last messages may be gone
  // (deleted, or lost by a replica), so its last sequence may never be delivered.
  let drained = false;
  let probing = false;
  const watchdog = setInterval(() => {
    const quiet = performance.now() - lastSeen;
    if (quiet >= STALL_MS) {
      stalled = true;
      msgs.stop();
    } else if (quiet >= QUIET_MS && !probing) {
      probing = true;
      jsm.consumers
        .info(stream, name)
        .then((ci) => {
          if (ci.num_pending === 0 && performance.now() - lastSeen >= QUIET_MS) {
            drained = true;
            msgs.stop();
          }
        })
        .catch(() => undefined)
        .finally(() => {
          probing = false;
        });
    }
  }, 500);
  let reached = false;
  let target = info.state.last_seq;
  let extended = false;
  try {
    for await (const m of msgs) {
      lastSeen = performance.now();
      read++;
      const op = m.headers?.get('KV-Operation');
      if (op !== 'DEL' && op !== 'PURGE' && m.data.length > 0) {
        let entry: StateEntry | undefined;
        try {
          entry = m.json<StateEntry>();
        } catch (err) {
          log.warn({ subject: m.subject, err: (err as Error).message }, 'unreadable state entry skipped');
        }
        if (entry) pending = onEntry(entry, m.seq, extended) ?? pending;
      }
      if (read % 5000 === 0) {
        // Let the writes and the event loop (lease renewals) keep up, and keep to the rate.
        await pending;
        const ahead = (read / ratePerSecond) * 1000 - (performance.now() - started);
        if (ahead > 0) await new Promise((r) => setTimeout(r, ahead));
      }
      // Done at the leader's last sequence at the start, extended once: a key rewritten during the
      // scan (a paused former owner waking up mid-publish) loses its older entry before the scan
      // reaches it, and its newer one lies past that sequence. Such a rewrite of an entry not yet
      // read happens before the scan gets to the first target, so it lies below the bucket's last
      // sequence then. A delivery with nothing pending also counts as reaching it: the bucket's
      // last messages may be gone, and their sequences are never delivered.
      if (m.seq >= target || m.info.pending === 0) {
        if (extended) {
          reached = true;
          break;
        }
        extended = true;
        await pending;
        target = (await jsm.streams.info(stream)).state.last_seq;
        if (m.seq >= target) {
          reached = true;
          break;
        }
      }
    }
  } finally {
    clearInterval(watchdog);
    msgs.stop();
    await pending;
    await jsm.consumers.delete(stream, name).catch(() => undefined);
  }
  // Nothing left to deliver once the scan went quiet: everything up to the bucket's last message
  // then was read, which covers the extension's target too.
  if (drained) reached = true;
  if (!reached) {
    throw new Error(
      `the scan read the state bucket up to ${read} entries but not to its last sequence ${info.state.last_seq}${stalled ? ` (nothing new for ${STALL_MS} ms)` : ''}`,
    );
  }
  const after = (await jsm.streams.info(stream)).cluster?.leader;
  if (server === undefined && after !== info.cluster?.leader)
    throw new Error(`the state bucket's leader changed during the scan (${info.cluster?.leader} → ${after})`);
  return { read };
}

/** The peers of the state bucket's stream other than its leader (none when not clustered). */
export async function stateBucketFollowers(jsm: JetStreamManager): Promise<string[]> {
  const info = await jsm.streams.info(`KV_${STATE_BUCKET}`);
  return (info.cluster?.replicas ?? []).filter((r) => !r.offline).map((r) => r.name);
}

/**
 * Creates an ephemeral consumer of the whole stream on `server` (any server when undefined or the
 * stream is not clustered), deleting the ones that land elsewhere. It reads that server's replica.
 */
export async function consumerOn(
  jsm: JetStreamManager,
  stream: string,
  server: string | undefined,
): Promise<string> {
  for (let attempt = 1; attempt <= 30; attempt++) {
    const ci = await jsm.consumers.add(stream, {
      ack_policy: AckPolicy.None,
      // The bucket keeps one entry per key (history 1), so All reads the same entries as
      // LastPerSubject, which 2.9 is slow to set up over a million subjects.
      deliver_policy: DeliverPolicy.All,
      inactive_threshold: 30_000_000_000,
      mem_storage: true,
    });
    if (!server || !ci.cluster?.leader || ci.cluster.leader === server) return ci.name;
    await jsm.consumers.delete(stream, ci.name).catch(() => undefined);
  }
  throw new Error(`could not place a consumer of ${stream} on ${server}`);
}
