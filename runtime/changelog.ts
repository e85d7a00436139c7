// A partition's changelog: what its owner commits, as one stored message per batch on
// `partita.changelog.<partition>` rather than one stored put per changed key, fenced by the server,
// compacted by snapshots written into the same subject, and read back by whoever takes the
// partition next (Flink's changelog state backend; Restate's snapshot plus log).
//
// - **Fencing.** Every message is appended with `Nats-Expected-Last-Subject-Sequence` set to the
//   subject's last sequence as its writer knows it, and names that sequence (`p`). An owner starts
//   with a claim appended the same way, so once it holds, any append of a former owner (a zombie
//   paused past its lease) is refused with 10071: the subject is one linear history, and each
//   message's `p` proves that nothing was left out between two messages read.
// - **Entries.** A batch's changed records, with the input position they reach (`to`) and the
//   partition clock and key count after it. A batch larger than a message goes as several parts;
//   only its last part (`end`) moves the position. A record carries the input sequence it reflects
//   (`q`), so applying records is order-free: per key, the highest `q` wins. A part without its
//   end (the writer died between them) is harmless: its keys skip the events they reflect when
//   the batch is processed again, as any key ahead of a checkpoint does.
// - **Snapshots.** The partition's records at one position (chunks `s`, then a marker `S`), written
//   between the owner's batches; once the marker is stored, everything before the first chunk is
//   purged. The caller takes the records at a position whose batches are all appended: a record
//   ahead of it could stand for events whose emits are not yet published.
// - **Restore.** Claim first, then read from the start of the subject (or, for a node that owned
//   the partition up to a sequence it still has, from just after that sequence) through the claim.
import {
  DeliverPolicy,
  JetStreamApiError,
  type JetStreamClient,
  type JetStreamManager,
  RetentionPolicy,
  StorageType,
} from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { Packr } from 'msgpackr';
import { type Clock, type Sys, wakeKey } from './event-time.js';
import { lineageOfChange } from './lineage.js';
import type { Checkpoint, StateRecord, StateStore } from './state-store.js';
import { partitionOf } from './subjects.js';

export const CHANGELOG_STREAM = 'PARTITA_CHANGELOG';
export const CHANGELOG_PREFIX = 'partita.changelog';
export function changelogSubject(partition: number): string {
  return `${CHANGELOG_PREFIX}.${partition}`;
}

/** The server's answer to an append whose expected last subject sequence is not the last. */
const WRONG_LAST_SEQUENCE = 10071;
/** A restore's read of a changelog that gets no further for this long fails. */
const READ_STALL_MS = 60_000;
/** Records an incremental restore writes in one LMDB transaction. */
const APPLY_RECORDS = 10_000;
/** Room left in a message for its headers and the entry's own fields. */
const HEADROOM = 8 * 1024;

/** [actor, key, record]: one state as the changelog carries it. */
export type ChangelogRecord = [string, string, StateRecord];

/** A message of the changelog. `p`: the subject's sequence before it (0: the first ever). */
export type ChangelogMessage =
  /** A batch (or a part of one): `to` and the rest count only with `end`. */
  | {
      k: 'b';
      p: number;
      e: number;
      to: number;
      at: number;
      n: number;
      c?: Clock;
      /** The changed records, or (`j`) each change as the state bucket stores it, its JSON. */
      s?: ChangelogRecord[];
      j?: Uint8Array[];
      /** The state bucket's key of each change in `j`. */
      jk?: string[];
      end: boolean;
    }
  /** A new owner's claim: nothing of an older epoch is appended after it. */
  | { k: 'c'; p: number; e: number; node: string; at: number }
  /** A chunk of a snapshot at position `to`. */
  | { k: 's'; p: number; e: number; to: number; s: ChangelogRecord[] }
  /** A snapshot complete: its chunks start at stream sequence `from`. */
  | { k: 'S'; p: number; e: number; to: number; at: number; n: number; c?: Clock; from: number };

/** A message as its writer gives it: the predecessor `p` is filled in at append time. */
export type ChangelogBody = ChangelogMessage extends infer M
  ? M extends unknown
    ? Omit<M, 'p'>
    : never
  : never;

const packr = new Packr({ useRecords: false, moreTypes: false });
export const encodeMessage = (m: ChangelogMessage): Uint8Array => packr.pack(m);
export const decodeMessage = (b: Uint8Array): ChangelogMessage => packr.unpack(b) as ChangelogMessage;

/** An append refused because another writer appended since: this writer no longer owns the log. */
export class ChangelogFencedError extends Error {
  constructor(
    readonly partition: number,
    readonly expected: number,
  ) {
    super(
      `partition ${partition}: the changelog moved past sequence ${expected}: another owner has claimed it`,
    );
  }
}

export async function ensureChangelogStream(jsm: JetStreamManager, replicas: number): Promise<void> {
  const config = {
    name: CHANGELOG_STREAM,
    subjects: [`${CHANGELOG_PREFIX}.>`],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    num_replicas: replicas,
    max_msgs_per_subject: -1,
    // A retried append within it is answered as the duplicate it is.
    duplicate_window: 120_000_000_000,
  };
  try {
    await jsm.streams.info(CHANGELOG_STREAM);
  } catch {
    await jsm.streams.add(config);
  }
}

/** Most bytes of an entry's message on this connection. */
function maxMessageBytes(nc: NatsConnection): number {
  return Math.max(64 * 1024, (nc.info?.max_payload ?? 1024 * 1024) - HEADROOM);
}

/**
 * The owner's side of one partition's changelog: appends in order, each fenced on the one
 * before. One append at a time (callers chain them, as the partition's publishing does).
 */
export class ChangelogWriter {
  private readonly subject: string;
  private readonly maxBytes: number;
  /** The subject's last sequence before this writer's claim (0: nobody wrote it before). */
  claimedAfter = 0;
  /** Bytes of batches in the log since its newest snapshot, and the size of that snapshot: a
   * restore reads both, so the owner snapshots once the first outgrows the second. */
  bytesSinceSnapshot = 0;
  snapshotBytes = 0;
  /** The append in flight: each waits for the one before, which it is fenced on. */
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    readonly partition: number,
    readonly epoch: number,
    /** The subject's last sequence: the claim's, then each append's. */
    public last: number,
    /** Most bytes of a message (tests make it small); the server's payload limit by default. */
    maxBytes?: number,
  ) {
    this.subject = changelogSubject(partition);
    this.maxBytes = maxBytes ?? maxMessageBytes(nc);
  }

  /** Appends one message after those before it, fenced on the last; answers its stream sequence. */
  append(body: ChangelogBody): Promise<number> {
    const run = this.tail.then(() => this.appendNow(body));
    this.tail = run.catch(() => undefined);
    return run;
  }

  private async appendNow(body: ChangelogBody): Promise<number> {
    // Named by its writer and its place: a retry has the same id, and no other message can.
    const msgID = `cl:${this.partition}:${this.epoch}:${this.last}`;
    const m = { ...body, p: this.last } as ChangelogMessage;
    try {
      const data = encodeMessage(m);
      const ack = await this.js.publish(this.subject, data, {
        msgID,
        expect: { lastSubjectSequence: this.last },
        timeout: 5000,
      });
      this.last = ack.seq;
      if (m.k === 'b') this.bytesSinceSnapshot += data.length;
      return ack.seq;
    } catch (err) {
      if (!(err instanceof JetStreamApiError && err.code === WRONG_LAST_SEQUENCE)) throw err;
      // The server checks the expected sequence before the message id: a retry of an append whose
      // PubAck was lost is refused like a zombie's. It is ours if the subject ends with it.
      const last = await this.jsm.streams.getMessage(CHANGELOG_STREAM, { last_by_subj: this.subject });
      if (last && last.header?.get('Nats-Msg-Id') === msgID) {
        this.last = last.seq;
        return last.seq;
      }
      throw new ChangelogFencedError(this.partition, this.last);
    }
  }

  /**
   * Appends a committed batch: its records and the checkpoint they reach. Retrying after an error
   * is safe (the same parts carry the same ids); a ChangelogFencedError is final.
   */
  async appendBatch(cp: Checkpoint, records: ChangelogRecord[]): Promise<void> {
    const body = (s: ChangelogRecord[], end: boolean): ChangelogBody => ({
      k: 'b',
      e: this.epoch,
      to: cp.seq,
      at: cp.at,
      n: cp.n ?? 0,
      ...(end && cp.clock ? { c: cp.clock as Clock } : {}),
      s,
      end,
    });
    // Sized as a last part, the largest a part can be.
    const parts = this.split(records, (s) => body(s, true));
    for (let i = 0; i < parts.length; i++) await this.append(body(parts[i]!, i === parts.length - 1));
  }

  /**
   * Appends a committed batch as its state changes' JSON (as the worker built them for the
   * bucket), cut into parts by size without encoding anything again. Retrying is safe, as above.
   */
  async appendChanges(cp: Checkpoint, changes: [string, Uint8Array][]): Promise<void> {
    const parts: [string, Uint8Array][][] = [[]];
    let bytes = 0;
    for (const c of changes) {
      const size = c[0].length * 3 + c[1].length + 16;
      if (parts[parts.length - 1]!.length > 0 && bytes + size > this.maxBytes) {
        parts.push([]);
        bytes = 0;
      }
      parts[parts.length - 1]!.push(c);
      bytes += size;
    }
    for (let i = 0; i < parts.length; i++) {
      const end = i === parts.length - 1;
      await this.append({
        k: 'b',
        e: this.epoch,
        to: cp.seq,
        at: cp.at,
        n: cp.n ?? 0,
        ...(end && cp.clock ? { c: cp.clock as Clock } : {}),
        j: parts[i]!.map((c) => c[1]),
        jk: parts[i]!.map((c) => c[0]),
        end,
      });
    }
  }

  /**
   * Writes a snapshot of the partition at checkpoint `cp` (every record of the partition as
   * committed there), then purges what came before it. Answers the sequence of its first chunk.
   */
  async snapshot(
    cp: Checkpoint,
    records: Iterable<ChangelogRecord>,
    /** Awaited before the purge (the owner's export must be past what it removes). */
    beforePurge?: () => Promise<void>,
  ): Promise<number> {
    const since = this.bytesSinceSnapshot;
    let first = 0;
    let part: ChangelogRecord[] = [];
    let bytes = 0;
    let total = 0;
    const flush = async () => {
      total += bytes;
      const seq = await this.append({ k: 's', e: this.epoch, to: cp.seq, s: part });
      if (first === 0) first = seq;
      part = [];
      bytes = 0;
    };
    for (const r of records) {
      const size = approxBytes(r);
      if (part.length > 0 && bytes + size > this.maxBytes) await flush();
      part.push(r);
      bytes += size;
    }
    // A partition without keys still gets a chunk: the marker names where the snapshot starts.
    if (part.length > 0 || first === 0) await flush();
    await this.append({
      k: 'S',
      e: this.epoch,
      to: cp.seq,
      at: cp.at,
      n: cp.n ?? 0,
      ...(cp.clock ? { c: cp.clock as Clock } : {}),
      from: first,
    });
    this.bytesSinceSnapshot -= since;
    this.snapshotBytes = total;
    await beforePurge?.();
    await this.jsm.streams.purge(CHANGELOG_STREAM, { filter: this.subject, seq: first });
    return first;
  }

  /** Records in parts whose messages fit the server's payload limit. */
  private split(
    records: ChangelogRecord[],
    shape: (s: ChangelogRecord[]) => ChangelogBody,
  ): ChangelogRecord[][] {
    const whole = { ...shape(records), p: this.last } as ChangelogMessage;
    if (records.length <= 1 || encodeMessage(whole).length <= this.maxBytes) return [records];
    const half = records.length >> 1;
    return [...this.split(records.slice(0, half), shape), ...this.split(records.slice(half), shape)];
  }
}

/** A cheap upper estimate of a record's encoded size, for cutting snapshot chunks. */
function approxBytes(r: ChangelogRecord): number {
  const [actor, key, rec] = r;
  return (
    actor.length * 3 +
    key.length * 3 +
    64 +
    (rec.x ? 256 : 0) +
    (rec.l ? rec.l.length * 9 : 0) +
    stateBytes(rec.s)
  );
}

function stateBytes(s: unknown): number {
  if (s == null || typeof s === 'number' || typeof s === 'boolean') return 9;
  if (typeof s === 'string') return s.length * 3 + 5;
  return packr.pack(s).length;
}

/**
 * Claims the partition's changelog for `epoch`: appends a claim fenced on the subject's last
 * sequence, read from the stream's leader, and tries again if another append came between.
 */
export async function claimChangelog(
  nc: NatsConnection,
  js: JetStreamClient,
  jsm: JetStreamManager,
  partition: number,
  epoch: number,
  node: string,
  opts: { maxBytes?: number } = {},
): Promise<ChangelogWriter> {
  const subject = changelogSubject(partition);
  for (let attempt = 1; ; attempt++) {
    // nats.js answers null when the subject holds nothing; a timeout or no leader throws.
    const lastMsg = await jsm.streams.getMessage(CHANGELOG_STREAM, { last_by_subj: subject });
    const writer = new ChangelogWriter(nc, js, jsm, partition, epoch, lastMsg?.seq ?? 0, opts.maxBytes);
    try {
      await writer.append({ k: 'c', e: epoch, node, at: Date.now() });
      writer.claimedAfter = lastMsg?.seq ?? 0;
      return writer;
    } catch (err) {
      if (!(err instanceof ChangelogFencedError) || attempt >= 10) throw err;
    }
  }
}

/** What a restore from the changelog gave a partition. */
export interface ChangelogRestore {
  /** The partition's checkpoint now (also written into the store). */
  checkpoint: Checkpoint;
  /** Messages read, and records taken into the store (replacing an older one or new). */
  messages: number;
  records: number;
  /** Whether the local state was replaced whole (read from the start of the subject). */
  full: boolean;
}

/** The read of a changelog broke its chain: a message's predecessor is not the one read before. */
export class ChangelogGapError extends Error {}

/**
 * Brings the store's state of `partition` up to the claim `writer` made: from the local
 * checkpoint's changelog position when the subject still continues from it, else whole from the
 * start of the subject (the local state cleared first). Writes the checkpoint last, with the
 * claim's sequence, so a restore that fails halfway is simply done again.
 */
export async function restoreFromChangelog(
  js: JetStreamClient,
  store: StateStore,
  partitions: number,
  writer: ChangelogWriter,
): Promise<ChangelogRestore> {
  const { partition } = writer;
  const through = writer.last;
  const local = store.checkpoint(partition);
  const appended = changelogPosition(store, partition);
  // Incremental only when the local state is exactly what the changelog held at `appended`: a
  // commit past it (its batch not yet appended when the node stopped) may be superseded by
  // another owner's batches.
  if (local && appended && appended.seq > 0 && appended.to === local.seq) {
    try {
      return await readInto(js, store, writer, appended.seq, local, through);
    } catch (err) {
      if (!(err instanceof ChangelogGapError)) throw err;
      // Compacted past the local position (another owner snapshotted): read it whole.
    }
  }
  await store.clearPartitions(new Set([partition]), (key) => partitionOf(key, partitions));
  return readInto(js, store, writer, 0, { seq: 0, at: 0, n: 0 }, through);
}

/** Where the local state stands in the changelog: `seq` holds the batch that reached input `to`. */
export interface ChangelogPosition {
  seq: number;
  to: number;
}

export function changelogPosition(store: StateStore, partition: number): ChangelogPosition | undefined {
  return store.meta.get(['cl', partition]) as ChangelogPosition | undefined;
}

/** Records that the local state up to input `to` is in the changelog up to `seq`. */
export function setChangelogPosition(
  store: StateStore,
  partition: number,
  at: ChangelogPosition,
): Promise<boolean> {
  return store.meta.put(['cl', partition], at);
}

async function readInto(
  js: JetStreamClient,
  store: StateStore,
  writer: ChangelogWriter,
  after: number,
  base: Checkpoint,
  through: number,
): Promise<ChangelogRestore> {
  const { partition } = writer;
  const full = after === 0;
  let cp: Checkpoint = { ...base };
  let n = base.n ?? 0;
  let messages = 0;
  let records = 0;
  let prev = after;
  let chunkBytes = 0;
  const apply = full ? applyWhole(store, partition) : applyOnto(store, partition);
  // A read that ends early (an ordered consumer gives up after missed heartbeats while the
  // thread is busy applying) goes on from where it got to, until a minute passes without progress.
  let reached = after;
  let lastProgress = Date.now();
  while (reached < through && Date.now() - lastProgress < READ_STALL_MS) {
    const consumer = await js.consumers.get(CHANGELOG_STREAM, {
      filter_subjects: [changelogSubject(partition)],
      ...(reached > 0
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: reached + 1 }
        : { deliver_policy: DeliverPolicy.All }),
    });
    // A few messages at a time, by count: many partitions restored at once must stay within what
    // the server buffers for one connection, and a pull bounded by bytes stalls until it expires
    // when the next message (up to the payload limit) does not fit what is left of it.
    const msgs = await consumer.consume({ max_messages: 4 });
    const timer = setInterval(() => {
      if (Date.now() - lastProgress >= READ_STALL_MS) msgs.stop();
    }, 1000);
    try {
      for await (const m of msgs) {
        if (m.seq <= reached) continue;
        const msg = decodeMessage(m.data);
        messages++;
        // The first message read from the very start may follow purged ones (a snapshot's first
        // chunk does); every other one must follow the one read before.
        if (!(full && messages === 1 && (msg.p === 0 || msg.k === 's')) && msg.p !== prev)
          throw new ChangelogGapError(
            `partition ${partition}: changelog message ${m.seq} follows ${msg.p}, not ${prev}`,
          );
        prev = m.seq;
        if (msg.k === 's' || (msg.k === 'b' && msg.s)) apply.add(msg.s!);
        if (msg.k === 'b' && msg.j) apply.add(msg.j.map(recordOfChange));
        if (msg.k === 'b') writer.bytesSinceSnapshot += m.data.length;
        else if (msg.k === 's') chunkBytes += m.data.length;
        else if (msg.k === 'S') {
          writer.snapshotBytes = chunkBytes;
          writer.bytesSinceSnapshot = 0;
          chunkBytes = 0;
        }
        if ((msg.k === 'b' && msg.end) || msg.k === 'S') {
          if (msg.to > cp.seq)
            cp = { seq: msg.to, at: msg.at, epoch: msg.e, n: msg.n, ...(msg.c ? { clock: msg.c } : {}) };
        }
        reached = m.seq;
        lastProgress = Date.now();
        if (m.seq >= through) break;
      }
    } finally {
      clearInterval(timer);
      msgs.stop();
    }
  }
  if (reached < through)
    throw new Error(
      `partition ${partition}: read its changelog to ${reached}, not to the claim at ${through}`,
    );
  ({ n, records } = await apply.done(n));
  const checkpoint: Checkpoint = { ...cp, at: Date.now(), epoch: writer.epoch, n };
  await setChangelogPosition(store, partition, { seq: through, to: checkpoint.seq });
  await store.meta.put(['cp', partition], checkpoint);
  return { checkpoint, messages, records, full };
}

/** How a restore takes records into the store: per key, the highest `q` wins. */
interface Apply {
  add(recs: ChangelogRecord[]): void;
  /** Once every record is added: all written. Answers the partition's key count (from `n`
   * before) and how many records replaced an older state or were new. */
  done(n: number): Promise<{ n: number; records: number }>;
}

const idOf = (actor: string, key: string) => `${actor}\u0000${key}`;

/**
 * Onto a partition's cleared state: asynchronous puts, which lmdb-js writes on its own thread while
 * this one reads on, with what was taken so far in memory (a put not yet written cannot be read
 * back). A snapshot's chunk may follow a batch its writer appended meanwhile, with newer states.
 */
function applyWhole(store: StateStore, partition: number): Apply {
  const taken = new Map<string, number>();
  // Time-aware keys' wake times, to take out of the wake index when a newer state replaces them.
  const wakesOf = new Map<string, [number | null, number | null]>();
  let last: Promise<unknown> = Promise.resolve();
  let took = 0;
  return {
    add(recs) {
      for (const [actor, key, rec] of recs) {
        const id = idOf(actor, key);
        const q = taken.get(id);
        if (q !== undefined && q >= rec.q) continue;
        taken.set(id, rec.q);
        const old = wakesOf.get(id);
        for (const kind of [0, 1] as const) {
          const t = old?.[kind];
          if (t != null) last = store.meta.remove(wakeKey(partition, actor, kind, t, key));
        }
        last = store.states.put([actor, key], rec);
        const wakes = (rec.x as Sys | undefined)?.k;
        if (wakes) wakesOf.set(id, wakes);
        else if (old) wakesOf.delete(id);
        for (const kind of [0, 1] as const) {
          const t = wakes?.[kind];
          if (t != null) last = store.meta.put(wakeKey(partition, actor, kind, t, key), 1);
        }
        took++;
      }
    },
    async done() {
      await last;
      return { n: taken.size, records: took };
    },
  };
}

/** Onto the local state: each record against the stored one, in transactions of a few thousand. */
function applyOnto(store: StateStore, partition: number): Apply {
  let pending: ChangelogRecord[][] = [];
  let pendingRecords = 0;
  let created = 0;
  let took = 0;
  const write = (recs: ChangelogRecord[]) => {
    for (const [actor, key, rec] of recs) {
      const old = store.states.get([actor, key]);
      if (old && old.q >= rec.q) continue;
      const oldWakes = (old?.x as Sys | undefined)?.k;
      for (const kind of [0, 1] as const) {
        const t = oldWakes?.[kind];
        if (t != null) store.meta.removeSync(wakeKey(partition, actor, kind, t, key));
      }
      store.states.putSync([actor, key], rec);
      const wakes = (rec.x as Sys | undefined)?.k;
      for (const kind of [0, 1] as const) {
        const t = wakes?.[kind];
        if (t != null) store.meta.putSync(wakeKey(partition, actor, kind, t, key), 1);
      }
      if (!old) created++;
      took++;
    }
  };
  const flush = () => {
    const batch = pending;
    pending = [];
    pendingRecords = 0;
    if (batch.length > 0) store.root.transactionSync(() => batch.forEach(write));
  };
  return {
    add(recs) {
      pending.push(recs);
      pendingRecords += recs.length;
      if (pendingRecords >= APPLY_RECORDS) flush();
    },
    async done(n) {
      flush();
      return { n: n + created, records: took };
    },
  };
}

const utf8 = new TextDecoder();

/** A state change's JSON (docs/state-changes.md) as the record it was built from. */
export function recordOfChange(json: Uint8Array): ChangelogRecord {
  const v = JSON.parse(utf8.decode(json)) as {
    actor: string;
    key: string;
    state: unknown;
    seq: number;
    updatedAt: string;
    lineage?: unknown;
    cause?: { msgId?: unknown };
    sys?: unknown;
  };
  return [
    v.actor,
    v.key,
    {
      s: v.state,
      q: v.seq,
      t: Date.parse(v.updatedAt),
      ...lineageOfChange(v),
      ...(v.sys ? { x: v.sys } : {}),
    },
  ];
}
