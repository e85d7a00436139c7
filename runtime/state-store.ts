// The LMDB layout of a node's data dir. One environment, two databases:
//   states: [actor, key]        -> StateRecord
//   meta:   ['cp', partition]   -> Checkpoint  (input position, committed with the states)
//           ['ob', partition, seq] -> Outbox  (what a commit must publish; deleted once published)
// Every batch writes its states, checkpoint and outbox in ONE transaction: that is the
// exactly-once invariant (see ARCHITECTURE.md, "Checkpoint protocol").
import { join } from 'node:path';
import { type Database, open, type RootDatabase } from 'lmdb';

export interface StateRecord {
  /** The actor's state. */
  s: unknown;
  /** Sequence of the last input event applied. */
  q: number;
  /** Commit time, epoch ms. */
  t: number;
}

export interface Checkpoint {
  /** Every event of the partition up to and including this sequence is reflected in state. */
  seq: number;
  /** Commit time, epoch ms. */
  at: number;
}

/** What a commit has to publish; kept until the next commit of the partition overwrites it. */
export interface Outbox {
  seq: number;
  /** [actor, key] of every state the batch changed. */
  keys: [string, string][];
  /** [subject, msgId, json] of every emitted event. */
  emits: [string, string, string][];
  /** [input seq, code, message, actor] of every dead letter. */
  dead: [number, string, string, string | null][];
}

export interface StateStore {
  readonly root: RootDatabase;
  readonly states: Database<StateRecord, [string, string]>;
  readonly meta: Database<unknown, (string | number)[]>;
  checkpoint(partition: number): Checkpoint | undefined;
  /** Outboxes not yet fully published, oldest first. */
  outboxes(partition: number): Outbox[];
  deleteOutbox(partition: number, seq: number): Promise<boolean>;
  close(): Promise<void>;
}

export function openStateStore(dataDir: string): StateStore {
  const root = open({
    path: join(dataDir, 'state.lmdb'),
    maxDbs: 4,
    mapSize: 2 ** 34,
    noSync: process.env.PARTITA_LMDB_NOSYNC === '1',
  });
  const states = root.openDB<StateRecord, [string, string]>({ name: 'states' });
  const meta = root.openDB<unknown, (string | number)[]>({ name: 'meta' });
  return {
    root,
    states,
    meta,
    checkpoint: (p) => meta.get(['cp', p]) as Checkpoint | undefined,
    outboxes: (p) =>
      [...meta.getRange({ start: ['ob', p], end: ['ob', p + 1] })].map((e) => e.value as Outbox),
    deleteOutbox: (p, seq) => meta.remove(['ob', p, seq]),
    close: () => root.close(),
  };
}
