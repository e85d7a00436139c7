// The LMDB layout of a node's data dir. One environment, two databases:
//   states: [actor, key]        -> StateRecord
//   meta:   ['cp', partition]   -> Checkpoint  (input position, committed with the states)
//           ['ob', partition, seq] -> Outbox  (what a commit must publish; deleted once published)
//           ['wk' | 'wp', partition, actor, time, key] -> 1  (wake index of windows and timers, event /
//           processing time; kept in step with the records' `x.k` in the same transactions)
//           ['rb', partition] -> seq  (a rebuild from the input stream publishes nothing up to seq)
//           ['cl', partition] -> ChangelogPosition  (how far the partition's changelog holds the local state)
// Every batch writes its states, checkpoint and outbox in ONE transaction: that is the
// exactly-once invariant (see ARCHITECTURE.md, "Checkpoint protocol").
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { type Database, open, type RootDatabase } from 'lmdb';

/**
 * What a commit survives before its outputs are published.
 * - `sync`: an fsync per commit; survives power loss.
 * - `process`: no fsync; survives the process being killed (the OS holds the pages), not the OS
 *   crashing. A store left open by an OS that then restarted is set aside and rebuilt from the
 *   input streams (see `prepareStateDir`). Lower latency.
 */
export type Durability = 'sync' | 'process';

export interface StateRecord {
  /** The actor's state. */
  s: unknown;
  /** Sequence of the last input event applied. */
  q: number;
  /** Commit time, epoch ms. */
  t: number;
  /** Lineage: sequences of the last events applied, oldest first (see lineage.ts). */
  l?: number[];
  /** Lineage: the Nats-Msg-Id of the event at `q`, if it had one. */
  m?: string;
  /** Runtime-owned part of time-aware actors: open windows, timers, wakes (see event-time.ts). */
  x?: unknown;
}

export interface Checkpoint {
  /** Every event of the partition up to and including this sequence is reflected in state. */
  seq: number;
  /** Commit time, epoch ms. */
  at: number;
  /** The lease epoch under which it was committed. */
  epoch?: number;
  /** The partition clock (watermarks) at this position, when time-aware actors run. */
  clock?: unknown;
  /**
   * How many [actor, key] states the partition holds. Published with every state change
   * (`partitionKeys`), so a restore can tell that the state bucket lost entries.
   */
  n?: number;
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
  /** The partition's key count after the commit (`Checkpoint.n`). */
  n?: number;
}

export interface StateStore {
  readonly root: RootDatabase;
  readonly states: Database<StateRecord, [string, string]>;
  readonly meta: Database<unknown, (string | number)[]>;
  checkpoint(partition: number): Checkpoint | undefined;
  /** Outboxes not yet fully published, oldest first. */
  outboxes(partition: number): Outbox[];
  deleteOutbox(partition: number, seq: number): Promise<boolean>;
  /**
   * Deletes a published outbox soon: the deletes of every partition within
   * OUTBOX_DELETE_DELAY_MS go in one write transaction, not one each (one commit, and with
   * durability `sync` one fsync, that the workers' commits would otherwise queue behind).
   * `outboxes` no longer lists it.
   */
  deleteOutboxSoon(partition: number, seq: number): void;
  /** Writes the deletes `deleteOutboxSoon` holds back. */
  flushOutboxDeletes(): Promise<void>;
  /**
   * Deletes the checkpoints, states and outboxes of `partitions` (they moved here from another
   * node, whose state replaces this node's old copy). Scans the keys in slices, yielding between them.
   */
  clearPartitions(partitions: ReadonlySet<number>, partitionOf: (key: string) => number): Promise<void>;
  close(): Promise<void>;
}

/** How long a published outbox's delete waits for others to share its write transaction. */
export const OUTBOX_DELETE_DELAY_MS = 50;

const STORE_FILE = 'state.lmdb';
const MARKER_FILE = 'durability.json';

interface Marker {
  mode: Durability;
  bootId: string;
  /** The store was synced and closed. */
  clean: boolean;
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

/**
 * Called by the node before anything opens the store. A store written without fsync (`process`)
 * and not closed cleanly before the OS restarted may be torn: it is moved aside, so the node
 * rebuilds its state from the input streams. Returns the path moved aside, if any.
 */
export function prepareStateDir(dataDir: string, durability: Durability): string | undefined {
  mkdirSync(dataDir, { recursive: true });
  const markerPath = join(dataDir, MARKER_FILE);
  let moved: string | undefined;
  if (existsSync(markerPath)) {
    const m = JSON.parse(readFileSync(markerPath, 'utf8')) as Marker;
    if (m.mode === 'process' && !m.clean && m.bootId !== bootId() && existsSync(join(dataDir, STORE_FILE))) {
      moved = join(dataDir, `${STORE_FILE}.unsafe-${Date.now()}`);
      renameSync(join(dataDir, STORE_FILE), moved);
      if (existsSync(join(dataDir, `${STORE_FILE}-lock`)))
        renameSync(join(dataDir, `${STORE_FILE}-lock`), `${moved}-lock`);
    }
  }
  const marker: Marker = { mode: durability, bootId: bootId(), clean: false };
  writeFileSync(markerPath, JSON.stringify(marker));
  return moved;
}

/** After the store is closed: sync it to disk and mark it clean. */
export function markStateDirClean(dataDir: string, durability: Durability): void {
  const fd = openSync(join(dataDir, STORE_FILE), 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  const marker: Marker = { mode: durability, bootId: bootId(), clean: true };
  writeFileSync(join(dataDir, MARKER_FILE), JSON.stringify(marker));
}

/** Counts the states of one partition by scanning every key (once, for a checkpoint without `n`). */
export function countPartitionKeys(
  store: Pick<StateStore, 'states'>,
  partition: number,
  partitionOf: (key: string) => number,
): number {
  let n = 0;
  for (const k of store.states.getKeys()) if (partitionOf(k[1]) === partition) n++;
  return n;
}

export function openStateStore(dataDir: string, durability: Durability = 'sync'): StateStore {
  const root = open({
    path: join(dataDir, STORE_FILE),
    maxDbs: 4,
    mapSize: 2 ** 34,
    noSync: durability === 'process',
  });
  const states = root.openDB<StateRecord, [string, string]>({ name: 'states' });
  const meta = root.openDB<unknown, (string | number)[]>({ name: 'meta' });
  // Published outboxes waiting to be deleted, by partition.
  const doomed = new Map<number, Set<number>>();
  let deleteTimer: NodeJS.Timeout | null = null;
  let deleted: Promise<unknown> = Promise.resolve();
  const flushOutboxDeletes = (): Promise<void> => {
    if (deleteTimer) clearTimeout(deleteTimer);
    deleteTimer = null;
    const batch = [...doomed].flatMap(([p, seqs]) => [...seqs].map((seq) => [p, seq] as const));
    doomed.clear();
    // Issued in one turn, lmdb-js writes them in one transaction. A delete that fails leaves a
    // published outbox behind, which a restart publishes again (deduplicated): never fatal.
    try {
      for (const [p, seq] of batch) deleted = meta.remove(['ob', p, seq]).catch(() => false);
    } catch {
      // The store is closing: the outboxes stay.
    }
    return deleted.then(() => undefined);
  };
  return {
    root,
    states,
    meta,
    checkpoint: (p) => meta.get(['cp', p]) as Checkpoint | undefined,
    outboxes: (p) =>
      [...meta.getRange({ start: ['ob', p], end: ['ob', p + 1] })]
        .map((e) => e.value as Outbox)
        .filter((ob) => !doomed.get(p)?.has(ob.seq)),
    deleteOutbox: (p, seq) => {
      doomed.get(p)?.delete(seq);
      return meta.remove(['ob', p, seq]);
    },
    deleteOutboxSoon: (p, seq) => {
      const seqs = doomed.get(p) ?? new Set<number>();
      doomed.set(p, seqs);
      seqs.add(seq);
      if (!deleteTimer) {
        deleteTimer = setTimeout(flushOutboxDeletes, OUTBOX_DELETE_DELAY_MS);
        deleteTimer.unref();
      }
    },
    flushOutboxDeletes,
    clearPartitions: async (partitions, partitionOf) => {
      // Their outboxes all go below; a delete held back must not meet a new outbox of the same
      // sequence written after the restore.
      for (const p of partitions) doomed.delete(p);
      let start: [string, string] | undefined;
      let last: Promise<boolean> | undefined;
      // The checkpoints go first: a restore that fails halfway leaves no checkpoint behind, so the
      // next start restores again rather than resume from cleared states.
      for (const p of partitions) last = meta.remove(['cp', p]);
      await last;
      for (;;) {
        let n = 0;
        let next: [string, string] | undefined;
        for (const k of states.getKeys({ start, limit: 10_000 })) {
          n++;
          next = k;
          if (partitions.has(partitionOf(k[1]))) last = states.remove(k);
        }
        await last;
        if (n < 10_000 || !next) break;
        // Continue after the last key seen (the range start is inclusive).
        start = [next[0], `${next[1]}\u0000`];
        await new Promise((r) => setImmediate(r));
      }
      for (const p of partitions) {
        for (const tag of ['ob', 'wk', 'wp', 'rb', 'cl'])
          for (const k of meta.getKeys({ start: [tag, p], end: [tag, p + 1] })) last = meta.remove(k);
      }
      await last;
    },
    close: async () => {
      await flushOutboxDeletes();
      await root.close();
    },
  };
}
