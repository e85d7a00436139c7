// The subject namespace, in one place. See ARCHITECTURE.md, "Subjects".

/** Producers publish here: `events.<type>.<key>`. */
export const EVENTS_PREFIX = 'events';
/** Where the ingest stream's transform (or a legacy server mapping) puts events: `partita.in.<partition>.<type>.<key>`. */
export const IN_PREFIX = 'partita.in';
/** Committed state changes, republished by the state KV bucket: `partita.state.<actor>.<key>`. */
export const STATE_PREFIX = 'partita.state';
/** Dead letters: `partita.dlq.<type>`. */
export const DLQ_PREFIX = 'partita.dlq';
/** State queries to a partition's owner (request/reply): `partita.query.<partition>`. */
export const QUERY_PREFIX = 'partita.query';
export function querySubject(partition: number): string {
  return `${QUERY_PREFIX}.${partition}`;
}

/** Input streams, one per partition: `PARTITA_IN_<partition>` on `partita.in.<partition>.>`. */
export const IN_STREAM_PREFIX = 'PARTITA_IN_';
export function inStream(partition: number): string {
  return `${IN_STREAM_PREFIX}${partition}`;
}
/** The partition of an input stream's name, or null. */
export function streamPartition(stream: string): number | null {
  if (!stream.startsWith(IN_STREAM_PREFIX)) return null;
  const p = Number(stream.slice(IN_STREAM_PREFIX.length));
  return Number.isInteger(p) && p >= 0 ? p : null;
}
/**
 * The ingest stream on `events.>`: its subject transform assigns each `events.<type>.<key>` its
 * partition (stored as `partita.in.<p>.<type>.<key>`, sourced from there by the partition's
 * stream); other shapes stay as published and are dead-lettered from it.
 */
export const INGEST_STREAM = 'PARTITA_EVENTS';
/**
 * Before the ingest stream: the work queue on `events.>` of what the server's mapping did not
 * route. An existing one is retired (moved off `events.>`), drained and deleted.
 */
export const UNROUTED_STREAM = 'PARTITA_UNROUTED';
/** The subject a retired PARTITA_UNROUTED is moved to, which nothing publishes on. */
export const UNROUTED_RETIRED_SUBJECT = 'partita.unrouted.retired';
export const DLQ_STREAM = 'PARTITA_DLQ';
/** Late events' side output, on `partita.late.>`. */
export const LATE_STREAM = 'PARTITA_LATE';
/** Window results (aggregates), on `partita.agg.>`, kept for the aggregate retention. */
export const AGG_STREAM = 'PARTITA_AGG';
export const STATE_BUCKET = 'partita_state';
export const META_BUCKET = 'partita_meta';
export const NODES_BUCKET = 'partita_nodes';
export const LEASES_BUCKET = 'partita_leases';
/** Each partition's consumer is named after it and the lease epoch that created it. */
export function consumerPrefix(partition: number): string {
  return `partita-p${partition}-`;
}

/** The transform that assigns partitions; `partition(n, 2)` hashes the key token. */
export function partitionTransform(partitions: number): { src: string; dest: string } {
  return {
    src: `${EVENTS_PREFIX}.*.*`,
    dest: `${IN_PREFIX}.{{partition(${partitions},2)}}.{{wildcard(1)}}.{{wildcard(2)}}`,
  };
}

/**
 * The same transform as a server-side mapping, which deployments configured before the ingest
 * stream; one that still has it keeps working (events reach the partition streams directly).
 */
export function partitionMapping(partitions: number): Record<string, string> {
  const { src, dest } = partitionTransform(partitions);
  return { [src]: dest };
}

/**
 * The partition nats-server assigns to a key: FNV-1a 32-bit over the key token, mod n.
 * Used to check that the server's mapping and the node agree on the partition count.
 */
export function partitionOf(key: string, partitions: number): number {
  let h = 0x811c9dc5;
  const bytes = Buffer.from(key, 'utf8');
  for (const b of bytes) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % partitions;
}

export interface InSubject {
  partition: number;
  type: string;
  key: string;
}

/** Parses `partita.in.<p>.<type>.<key>`; null when the subject has another shape. */
export function parseInSubject(subject: string): InSubject | null {
  const t = subject.split('.');
  if (t.length !== 5 || t[0] !== 'partita' || t[1] !== 'in') return null;
  const partition = Number(t[2]);
  if (!Number.isInteger(partition) || partition < 0) return null;
  return { partition, type: t[3]!, key: t[4]! };
}

/** The type token used for the dead-letter subject of any subject (`_` when there is none). */
export function dlqTypeOf(subject: string): string {
  const t = subject.split('.');
  if (t[0] === 'partita' && t[1] === 'in') return t[3] || '_';
  return t[1] || '_';
}

/**
 * The longest key, in UTF-8 bytes. Its escaped KV form (at most three times as long) must fit a
 * NATS control line (4096 bytes, with the subject prefix and a reply subject) and, with the actor
 * name, an LMDB key (1978 bytes). Longer keys are dead-lettered (`PARTITA_ERR_KEY_TOO_LONG`) and
 * refused by the gateway with a 400.
 */
export const MAX_KEY_BYTES = 512;

/** Whether a key is longer than `MAX_KEY_BYTES`. */
export function keyTooLong(key: string): boolean {
  return key.length > MAX_KEY_BYTES || Buffer.byteLength(key, 'utf8') > MAX_KEY_BYTES;
}

const KV_KEY_OK = /^[-/_=a-zA-Z0-9]+$/;

/**
 * KV keys allow fewer characters than subject tokens; other bytes are escaped as `=XX` (hex of
 * the UTF-8 byte), so `partita.state.<actor>.<key>` carries the escaped key for such keys.
 */
export function kvToken(token: string): string {
  if (KV_KEY_OK.test(token) && !token.includes('=')) return token;
  let out = '';
  for (const b of Buffer.from(token, 'utf8')) {
    const c = String.fromCharCode(b);
    out += /[-/_a-zA-Z0-9]/.test(c) ? c : `=${b.toString(16).padStart(2, '0').toUpperCase()}`;
  }
  return out;
}

export function stateKvKey(actor: string, key: string): string {
  return `${kvToken(actor)}.${kvToken(key)}`;
}
