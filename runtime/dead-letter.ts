// Writes dead letters: the original payload and headers on `partita.dlq.<type>`, plus the reason.
import type { JetStreamClient } from '@nats-io/jetstream';
import { type MsgHdrs, headers as natsHeaders } from '@nats-io/transport-node';
import { DLQ_PREFIX, dlqTypeOf } from './subjects.js';

/** On emitted events and dead letters: the lease epoch of the owner that produced them. */
export const EPOCH_HEADER = 'Partita-Epoch';
export const PARTITION_HEADER = 'Partita-Partition';

export const DLQ_HEADERS = {
  code: 'Partita-Error-Code',
  error: 'Partita-Error',
  subject: 'Partita-Original-Subject',
  seq: 'Partita-Stream-Seq',
  stream: 'Partita-Stream',
  actor: 'Partita-Actor',
} as const;

export interface DeadLetterInput {
  /** The subject the event was stored under. */
  subject: string;
  /** The subject the producer used, when it differs (a mapped event's `events.<type>.<key>`). */
  originalSubject?: string;
  data: Uint8Array;
  headers?: MsgHdrs;
  stream: string;
  seq: number;
  code: string;
  message: string;
  actor?: string | null;
  /** The lease epoch of the partition's owner that wrote it. */
  epoch?: number;
}

/**
 * Publishes a dead letter and waits for JetStream's ack; its message id makes a retry a no-op.
 * Resolves false when JetStream dropped it as a duplicate of one already written (count only true).
 */
export async function publishDeadLetter(js: JetStreamClient, d: DeadLetterInput): Promise<boolean> {
  const h = natsHeaders();
  if (d.headers) {
    for (const k of d.headers.keys()) {
      if (k.startsWith('Nats-')) continue;
      for (const v of d.headers.values(k)) h.append(k, v);
    }
  }
  h.set(DLQ_HEADERS.code, d.code);
  // Header values cannot hold line breaks.
  h.set(DLQ_HEADERS.error, d.message.replace(/[\r\n]+/g, ' ').slice(0, 1024));
  h.set(DLQ_HEADERS.subject, d.originalSubject ?? d.subject);
  h.set(DLQ_HEADERS.stream, d.stream);
  h.set(DLQ_HEADERS.seq, String(d.seq));
  if (d.actor) h.set(DLQ_HEADERS.actor, d.actor);
  if (d.epoch) h.set(EPOCH_HEADER, String(d.epoch));
  const ack = await js.publish(`${DLQ_PREFIX}.${dlqTypeOf(d.subject)}`, d.data, {
    headers: h,
    msgID: `dlq:${d.stream}:${d.seq}:${d.actor ?? '-'}`,
  });
  return !ack.duplicate;
}

/** `partita.in.<p>.<type>.<key>` was published by a producer as `events.<type>.<key>`. */
export function producerSubject(inSubject: string): string {
  const t = inSubject.split('.');
  return t.length === 5 && t[0] === 'partita' && t[1] === 'in' ? `events.${t[3]}.${t[4]}` : inSubject;
}
