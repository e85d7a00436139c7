// Where events landed in their partition's stream. A PubAck names the ingest stream (PARTITA_EVENTS)
// and its sequence; the partition stream that sources the event gives it its own sequence, the one
// checkpoints, lineage and `seq` in a state count.
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { inStream, partitionOf } from '../../runtime/index.js';
import { check } from './check.js';

/**
 * The partition-stream sequences of the events published to `events.<type>.<key>`, in order, once
 * `count` of them have been sourced.
 */
export async function partitionSeqs(
  nc: NatsConnection,
  partitions: number,
  type: string,
  key: string,
  count: number,
): Promise<number[]> {
  const p = partitionOf(key, partitions);
  const stream = inStream(p);
  const subject = `partita.in.${p}.${type}.${key}`;
  const jsm = await jetstreamManager(nc, { checkAPI: false });
  return check(
    async () => {
      const held =
        (await jsm.streams.info(stream, { subjects_filter: subject })).state.subjects?.[subject] ?? 0;
      if (held < count) return undefined;
      const consumer = await jetstream(nc).consumers.get(stream, { filter_subjects: [subject] });
      const seqs: number[] = [];
      for await (const m of await consumer.fetch({ max_messages: held, expires: 5000 })) {
        seqs.push(m.seq);
        if (seqs.length === held) break;
      }
      return seqs.length === held ? seqs : undefined;
    },
    20_000,
    `${count} events of ${key} in ${stream}`,
  );
}

/** Sets each event's `seq` to its partition-stream sequence (a key's events are in publish order). */
export async function setPartitionSeqs(
  nc: NatsConnection,
  partitions: number,
  type: string,
  events: { key: string; seq: number }[],
): Promise<void> {
  const byKey = new Map<string, { seq: number }[]>();
  for (const e of events) byKey.set(e.key, [...(byKey.get(e.key) ?? []), e]);
  for (const [key, list] of byKey) {
    const seqs = await partitionSeqs(nc, partitions, type, key, list.length);
    list.forEach((e, i) => {
      e.seq = seqs[i]!;
    });
  }
}
