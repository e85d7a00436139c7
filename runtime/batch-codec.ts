// The bytes a task hands a worker: the batches of its partitions, each event as the wire brought it.
//
// The main thread copies each delivery's subject, NATS header block and payload into one buffer,
// which is transferred to the worker; the worker decodes subjects and headers into `RawEvent`s.
// So the main thread neither parses headers nor builds an object per event for the boundary, and
// nothing is msgpack-encoded on one side and decoded on the other (the costs measured in
// docs/hot-path-profile.md, item 4). A round-trip test holds the worker's events equal to what
// `rawEventOf` makes of the same deliveries.
//
// Layout, little-endian:
//   u8 version (1), u32 batch count, then per batch:
//     u32 partition, f64 epoch, u32 event count, u32 length of the poisoned calls' JSON (0: none)
//     and that JSON, then per event:
//       f64 seq, f64 publish time (epoch ms), u32 subject length and the subject (UTF-8),
//       i32 header block length (-1: no headers) and the block, u32 payload length and the payload.
import type { JsMsg } from '@nats-io/jetstream';
import type { MsgHdrsImpl } from '@nats-io/nats-core';
import type { Poison, RawEvent } from './batch.js';
import { parseInSubject } from './subjects.js';

const VERSION = 1;
const MSGPACK = 'application/msgpack';
const te = new TextEncoder();

/** One delivery of a partition stream, as received. */
export interface Delivery {
  seq: number;
  /** JetStream publish time, epoch ms. */
  publishMs: number;
  /** The stored subject, UTF-8. */
  subject: Uint8Array;
  /** The NATS header block (`NATS/1.0\r\n…\r\n\r\n`), or null without headers. */
  headers: Uint8Array | null;
  data: Uint8Array;
}

/** What a partition hands the dispatcher: a batch of deliveries under its lease epoch. */
export interface OutgoingBatch {
  partition: number;
  epoch: number;
  deliveries: readonly Delivery[];
  /** Calls an earlier run of this batch timed out in, or died in. */
  poisoned?: Poison[];
}

/** The batch as the worker folds it. */
export interface PartitionBatch {
  partition: number;
  /** The lease epoch of the owner: written into the checkpoint and the published states. */
  epoch: number;
  events: RawEvent[];
  /** Calls an earlier run of this batch timed out in, or died in: dead-lettered, not made again. */
  poisoned?: Poison[];
}

/** nats.js's message internals: the raw subject, and header block and payload in one buffer. */
interface WireMsg {
  _msg?: { subject?: unknown; hdr?: unknown };
  _rdata?: unknown;
}

/**
 * The bytes of a delivery. nats.js keeps the subject and the header block as received and parses
 * them only when asked; they are taken from there when its internals have the expected shape
 * (tested against the installed client), else through its public API.
 */
export function deliveryOf(m: JsMsg): Delivery {
  const seq = m.seq;
  const publishMs = Math.floor(m.info.timestampNanos / 1_000_000);
  const w = (m as unknown as { msg?: WireMsg }).msg;
  const subject = w?._msg?.subject;
  const hdr = w?._msg?.hdr;
  const rdata = w?._rdata;
  if (subject instanceof Uint8Array && typeof hdr === 'number' && rdata instanceof Uint8Array) {
    return hdr > -1
      ? { seq, publishMs, subject, headers: rdata.subarray(0, hdr), data: rdata.subarray(hdr) }
      : { seq, publishMs, subject, headers: null, data: rdata };
  }
  return publicDeliveryOf(m);
}

/** `deliveryOf` through nats.js's public API only (slower: headers are parsed and encoded again). */
export function publicDeliveryOf(m: JsMsg): Delivery {
  return {
    seq: m.seq,
    publishMs: Math.floor(m.info.timestampNanos / 1_000_000),
    subject: te.encode(m.subject),
    headers: m.headers ? (m.headers as unknown as MsgHdrsImpl).encode() : null,
    data: m.data,
  };
}

/** One buffer, of its own (transferable), holding `batches`. */
export function encodeBatches(batches: readonly OutgoingBatch[]): Uint8Array<ArrayBuffer> {
  const poisons = batches.map((b) => (b.poisoned?.length ? te.encode(JSON.stringify(b.poisoned)) : null));
  let size = 1 + 4;
  for (const [i, b] of batches.entries()) {
    size += 4 + 8 + 4 + 4 + (poisons[i]?.byteLength ?? 0);
    for (const d of b.deliveries) {
      size += 8 + 8 + 4 + d.subject.byteLength + 4 + (d.headers?.byteLength ?? 0) + 4 + d.data.byteLength;
    }
  }
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  let p = 0;
  v.setUint8(p, VERSION);
  v.setUint32(p + 1, batches.length, true);
  p += 5;
  const bytes = (b: Uint8Array) => {
    out.set(b, p);
    p += b.byteLength;
  };
  for (const [i, b] of batches.entries()) {
    v.setUint32(p, b.partition, true);
    v.setFloat64(p + 4, b.epoch, true);
    v.setUint32(p + 12, b.deliveries.length, true);
    const poison = poisons[i];
    v.setUint32(p + 16, poison?.byteLength ?? 0, true);
    p += 20;
    if (poison) bytes(poison);
    for (const d of b.deliveries) {
      v.setFloat64(p, d.seq, true);
      v.setFloat64(p + 8, d.publishMs, true);
      v.setUint32(p + 16, d.subject.byteLength, true);
      p += 20;
      bytes(d.subject);
      v.setInt32(p, d.headers ? d.headers.byteLength : -1, true);
      p += 4;
      if (d.headers) bytes(d.headers);
      v.setUint32(p, d.data.byteLength, true);
      p += 4;
      bytes(d.data);
    }
  }
  return out;
}

/**
 * The batches of `encodeBatches`, each delivery made the `RawEvent` that `rawEventOf` makes of it.
 * Payloads are views into `buf`.
 */
export function decodeBatches(buf: Uint8Array): PartitionBatch[] {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const text = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (buf.byteLength < 5 || v.getUint8(0) !== VERSION) {
    throw new Error(`not a batch task of version ${VERSION}`);
  }
  const n = v.getUint32(1, true);
  let p = 5;
  const batches: PartitionBatch[] = [];
  for (let i = 0; i < n; i++) {
    const partition = v.getUint32(p, true);
    const epoch = v.getFloat64(p + 4, true);
    const count = v.getUint32(p + 12, true);
    const poisonLen = v.getUint32(p + 16, true);
    p += 20;
    const batch: PartitionBatch = { partition, epoch, events: new Array(count) };
    if (poisonLen > 0) {
      batch.poisoned = JSON.parse(text.toString('utf8', p, p + poisonLen)) as Poison[];
      p += poisonLen;
    }
    for (let e = 0; e < count; e++) {
      const seq = v.getFloat64(p, true);
      const publishMs = v.getFloat64(p + 8, true);
      const subjectLen = v.getUint32(p + 16, true);
      p += 20;
      const subject = text.toString('utf8', p, p + subjectLen);
      p += subjectLen;
      const headerLen = v.getInt32(p, true);
      p += 4;
      let headers: Record<string, string> | null = null;
      if (headerLen > -1) {
        headers = headerRecord(text.toString('utf8', p, p + headerLen));
        p += headerLen;
      }
      const dataLen = v.getUint32(p, true);
      p += 4;
      const data = text.subarray(p, p + dataLen);
      p += dataLen;
      const raw = rawEvent(seq, subject, partition, data, headers, publishMs);
      batch.events[e] = raw;
    }
    batches.push(batch);
  }
  if (p !== buf.byteLength) throw new Error(`batch task: ${buf.byteLength - p} bytes after its batches`);
  return batches;
}

/**
 * An input stream message as a batch event, through nats.js's public API (replays read it this
 * way; the partition runner hands workers `Delivery` bytes, which `decodeBatches` makes the same).
 */
export function rawEventOf(m: JsMsg, partition: number): RawEvent {
  let headers: Record<string, string> | null = null;
  if (m.headers) {
    headers = {};
    for (const k of m.headers.keys()) headers[k] = m.headers.get(k);
  }
  return rawEvent(
    m.seq,
    m.subject,
    partition,
    m.data,
    headers,
    Math.floor(m.info.timestampNanos / 1_000_000),
  );
}

/** The event of a stored message of `partition`: its subject parsed, a bad one named. */
function rawEvent(
  seq: number,
  subject: string,
  partition: number,
  data: Uint8Array,
  headers: Record<string, string> | null,
  publishMs: number,
): RawEvent {
  const parsed = parseInSubject(subject);
  const raw: RawEvent = {
    seq,
    type: parsed?.type ?? '',
    key: parsed?.key ?? '',
    data,
    msgpack: headers?.['Content-Type'] === MSGPACK,
    publishMs,
    headers,
  };
  if (!parsed || parsed.partition !== partition) raw.badSubject = subject;
  return raw;
}

/**
 * The first value of each header in a NATS header block, as nats.js reads it (`MsgHdrsImpl.decode`
 * then `get`): lines split at CRLF after the status line, the key up to the first colon as is, the
 * value after it trimmed. nats.js's decoder is not used here because it builds a map of arrays
 * per message; this runs for every event in the worker (tested against it on random blocks).
 */
export function headerRecord(block: string): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = block.indexOf('\r\n');
  if (pos < 0) return out;
  pos += 2;
  while (pos < block.length) {
    let end = block.indexOf('\r\n', pos);
    if (end < 0) end = block.length;
    const colon = block.indexOf(':', pos);
    if (colon > -1 && colon < end) {
      const k = block.slice(pos, colon);
      if (!Object.hasOwn(out, k)) out[k] = block.slice(colon + 1, end).trim();
    }
    pos = end + 2;
  }
  return out;
}
