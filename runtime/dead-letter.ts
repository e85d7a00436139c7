// Dead letters as messages: the original payload and headers for `partita.dlq.<type>`, plus the
// reason; they go out through the stored publisher with the rest of a batch (acked-publisher.ts).
import { type MsgHdrs, headers as natsHeaders } from '@nats-io/transport-node';
import type { Outgoing } from './acked-publisher.js';
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
  /** On refused outputs (`PARTITA_ERR_OUTPUT_REFUSED`): the key whose output it was. */
  key: 'Partita-Key',
  /** On refused outputs whose payload was left out (it was the cause): its size in bytes. */
  size: 'Partita-Original-Size',
} as const;

/** Header values cannot hold line breaks, and long ones count against the server's limits. */
const headerValue = (v: string) => v.replace(/[\r\n]+/g, ' ').slice(0, 1024);

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
  /** The `partita.dlq.<type>` token. @default the type of `subject` */
  type?: string;
  /** @default `dlq:<stream>:<seq>:<actor>` */
  msgID?: string;
}

/** A dead letter as a message: the original headers (but NATS's own) plus the reason, with an id
 * that makes a retry (or a second writer) a no-op within the stream's duplicate window. */
export function deadLetterMessage(d: DeadLetterInput & { key?: string; size?: number }): Outgoing {
  const h = natsHeaders();
  if (d.headers) {
    for (const k of d.headers.keys()) {
      if (k.startsWith('Nats-')) continue;
      for (const v of d.headers.values(k)) h.append(k, v);
    }
  }
  h.set(DLQ_HEADERS.code, d.code);
  h.set(DLQ_HEADERS.error, headerValue(d.message));
  // Whole, not cut: it is where a fixed event is published again (subjects hold no line breaks).
  h.set(DLQ_HEADERS.subject, d.originalSubject ?? d.subject);
  h.set(DLQ_HEADERS.stream, d.stream);
  if (d.seq > 0) h.set(DLQ_HEADERS.seq, String(d.seq));
  if (d.actor) h.set(DLQ_HEADERS.actor, d.actor);
  if (d.key !== undefined) h.set(DLQ_HEADERS.key, d.key.replace(/[\r\n]+/g, ' '));
  if (d.size !== undefined) h.set(DLQ_HEADERS.size, String(d.size));
  if (d.epoch) h.set(EPOCH_HEADER, String(d.epoch));
  h.set('Nats-Msg-Id', d.msgID ?? `dlq:${d.stream}:${d.seq}:${d.actor ?? '-'}`);
  return { subject: `${DLQ_PREFIX}.${d.type ?? dlqTypeOf(d.subject)}`, data: d.data, headers: h };
}

/** `partita.in.<p>.<type>.<key>` was published by a producer as `events.<type>.<key>`. */
export function producerSubject(inSubject: string): string {
  const t = inSubject.split('.');
  return t.length === 5 && t[0] === 'partita' && t[1] === 'in' ? `events.${t[3]}.${t[4]}` : inSubject;
}
