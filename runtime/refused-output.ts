// An output NATS will never store (larger than the server's max_payload or the stream's
// max_msg_size, a subject longer than a protocol line) becomes a dead letter instead of being
// retried forever: the partition goes on, and the loss is visible, counted and names its actor and
// key. The state stays committed in LMDB; only its copy in the bucket (or the emit) is missing.
import type { Outgoing } from './acked-publisher.js';
import { deadLetterMessage } from './dead-letter.js';

/** What a publishing step was, for its dead letter and its log lines. */
export interface OutputInfo {
  kind: 'emit' | 'state' | 'dead-letter';
  actor?: string | null;
  key?: string;
  /** The input event's sequence, where known. */
  seq?: number;
  /** For dead letters: their code (counted once stored). */
  code?: string;
}

/** Payloads up to this size are kept in the dead letter; larger ones were likely the cause. */
const KEEP_PAYLOAD_BYTES = 64 * 1024;
const decoder = new TextDecoder();

/** Actor, key and sequence of a state change, from its JSON (only read when it is refused). */
export function stateInfo(json: Uint8Array | string): OutputInfo {
  try {
    const v = JSON.parse(typeof json === 'string' ? json : decoder.decode(json)) as {
      actor?: string;
      key?: string;
      seq?: number;
    };
    return { kind: 'state', actor: v.actor ?? null, key: v.key, seq: v.seq };
  } catch {
    return { kind: 'state' };
  }
}

/** Actor and key of an emit: the actor from its message id (`pt:<actor>:…`, `late:<actor>:…`),
 * the key from the last token of its subject. */
export function emitInfo(subject: string, msgID: string): OutputInfo {
  return {
    kind: 'emit',
    actor: msgID.split(':')[1] ?? null,
    key: subject.slice(subject.lastIndexOf('.') + 1),
  };
}

/**
 * The `PARTITA_ERR_OUTPUT_REFUSED` dead letter of an output; `bare` leaves the payload out (a
 * dead letter that was itself refused is sent again bare).
 */
export function refusedOutput(
  out: Outgoing,
  info: OutputInfo,
  why: string,
  ctx: { stream: string; partition: number; epoch: number },
  bare = false,
): Outgoing {
  const data = typeof out.data === 'string' ? new TextEncoder().encode(out.data) : out.data;
  const keep = !bare && data.length <= KEEP_PAYLOAD_BYTES;
  const id = out.headers?.get('Nats-Msg-Id') || `${out.subject.slice(0, 512)}:${info.seq ?? ''}`;
  return deadLetterMessage({
    subject: out.subject,
    data: keep ? data : new Uint8Array(0),
    stream: ctx.stream,
    seq: info.seq ?? 0,
    code: 'PARTITA_ERR_OUTPUT_REFUSED',
    message: `partition ${ctx.partition}: ${info.kind} of actor ${info.actor ?? '?'} for key ${JSON.stringify((info.key ?? '?').slice(0, 200))} refused: ${why}`,
    actor: info.actor,
    key: info.key,
    size: keep ? undefined : data.length,
    epoch: ctx.epoch,
    type: '_output',
    msgID: `dlq:out:${bare ? 'bare:' : ''}${id}`.slice(0, 1000),
  });
}
