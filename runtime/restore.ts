// Restoring partitions that this node did not own last: their state comes from the state KV bucket,
// which holds the latest committed state of every key (a compacted changelog), so a restore reads
// state, not history. The caller then resumes at the old owner's acknowledged position; events
// after it that some keys already reflect are skipped by the per-key sequence (`StateRecord.q`).
import { DeliverPolicy, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import type { Logger } from './logger.js';
import type { StateRecord } from './state-store.js';
import { consumerPrefix, inStream, partitionOf, STATE_BUCKET } from './subjects.js';

export interface RestoredState {
  actor: string;
  key: string;
  record: StateRecord;
}

/** Reads the latest state of every key in `partitions` from the state bucket, in one pass. */
export async function readPartitionStates(
  js: JetStreamClient,
  jsm: JetStreamManager,
  partitions: ReadonlySet<number>,
  partitionCount: number,
  log: Logger,
  /** Entries read per second at most, so a large restart does not saturate NATS. @default 200000 */
  ratePerSecond = 200_000,
): Promise<Map<number, RestoredState[]>> {
  const out = new Map<number, RestoredState[]>([...partitions].map((p) => [p, []]));
  const stream = `KV_${STATE_BUCKET}`;
  const info = await jsm.streams.info(stream);
  if (info.state.messages === 0) return out;
  const consumer = await js.consumers.get(stream, {
    filter_subjects: `$KV.${STATE_BUCKET}.>`,
    deliver_policy: DeliverPolicy.LastPerSubject,
  });
  const started = performance.now();
  let read = 0;
  const msgs = await consumer.consume({ max_messages: 5000 });
  for await (const m of msgs) {
    read++;
    // Rate limit: sleep whenever reading runs ahead of the allowance.
    if (read % 1000 === 0) {
      const ahead = (read / ratePerSecond) * 1000 - (performance.now() - started);
      if (ahead > 0) await new Promise((r) => setTimeout(r, ahead));
    }
    const op = m.headers?.get('KV-Operation');
    if (op !== 'DEL' && op !== 'PURGE' && m.data.length > 0) {
      try {
        const v = m.json<{ actor: string; key: string; state: unknown; seq: number; updatedAt: string }>();
        const p = partitionOf(v.key, partitionCount);
        if (partitions.has(p)) {
          out.get(p)!.push({
            actor: v.actor,
            key: v.key,
            record: { s: v.state, q: v.seq, t: Date.parse(v.updatedAt) },
          });
        }
      } catch (err) {
        log.warn(
          { subject: m.subject, err: (err as Error).message },
          'unreadable state entry skipped in restore',
        );
      }
    }
    // Done when caught up with what the bucket held at the start (later puts are fresher anyway).
    if (m.info.pending === 0 || m.seq >= info.state.last_seq) break;
  }
  msgs.stop();
  log.info(
    { partitions: [...partitions], entries: read, ms: Math.round(performance.now() - started) },
    'state restored from the state bucket',
  );
  return out;
}

/**
 * Where the previous owner got to: the highest acknowledged sequence over the partition's
 * consumers (acks follow commit and publish, so every state up to it is in the bucket).
 */
export async function acknowledgedSeq(jsm: JetStreamManager, partition: number): Promise<number> {
  let seq = 0;
  for await (const ci of jsm.consumers.list(inStream(partition))) {
    if (ci.name.startsWith(consumerPrefix(partition))) seq = Math.max(seq, ci.ack_floor.stream_seq);
  }
  return seq;
}
