// Where the gateway's state and feature reads come from: each key's partition owner first, over
// NATS request/reply (runtime/state-query.ts), so an answer is never behind a committed change;
// the state bucket only for the keys whose owner cannot answer now (no node runs the partition, it
// is moving or starting, or it does not answer in time), as the bucket is the asynchronous export.
// Keys are grouped by partition: one request per partition (split at MAX_QUERY_KEYS), all in
// flight at once.
import { setImmediate as nextTurn } from 'node:timers/promises';
import { type KV, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { Counter, type Registry } from 'prom-client';
import {
  MAX_QUERY_KEYS,
  META_BUCKET,
  PartitaError,
  partitionOf,
  queryStates,
  type StoredStateChange,
  scanStates,
  stateKvKey,
} from '../runtime/index.js';

/** Who answered a read: the partition's owner, or the state bucket (the export). */
export type StateSource = 'owner' | 'export';

/** The response header that names the sources of an answer (`owner`, `export`, or both). */
export const STATE_SOURCE_HEADER = 'Partita-State-Source';

/** How the routes that read state declare `Partita-State-Source` in the OpenAPI document. */
export const STATE_SOURCE_OPENAPI = {
  [STATE_SOURCE_HEADER]: {
    description:
      "which source answered: `owner` (the partition's owner, never behind a committed change), `export` (the state bucket, where no owner answered: it may lag), or both for a request of many keys",
    schema: { type: 'string', enum: ['owner', 'export', 'owner, export'] },
  },
};

export interface StateReaderOptions {
  state: KV;
  /** Without a connection every read goes to the bucket. */
  nc?: NatsConnection;
  registry: Registry;
  /** How long the owners have to answer before their keys are read from the bucket, ms. @default 500 */
  ownerTimeoutMs?: number;
}

export interface StateRead {
  /** One per key asked, in order: the state change as the bucket stores it, or null. */
  changes: (StoredStateChange | null)[];
  /** The sources that answered at least one key. */
  sources: ReadonlySet<StateSource>;
}

export const DEFAULT_OWNER_TIMEOUT_MS = 500;
/** Bucket reads in flight for one request: enough to hide the round trip, few enough to share NATS. */
const READS_IN_FLIGHT = 64;
/** Bucket reads taken in between two yields to the event loop. */
const READS_PER_TURN = 2000;
/** How soon to look for the partition count again when the deployment has none yet. */
const PARTITIONS_RETRY_MS = 1000;

export class StateReader {
  private readonly reads: Counter<'source'>;
  private partitions: number | undefined;
  private partitionsRead: Promise<void> | undefined;
  private partitionsTriedAt = 0;

  constructor(private readonly opts: StateReaderOptions) {
    this.reads = new Counter({
      name: 'partita_gateway_state_reads_total',
      help: 'Keys read for state and feature requests, by the source that answered',
      labelNames: ['source'],
      registers: [opts.registry],
    });
    for (const source of ['owner', 'export'] as const) this.reads.inc({ source }, 0);
  }

  /** The committed states of `keys` ([actor, key] pairs). */
  async read(keys: readonly (readonly [string, string])[]): Promise<StateRead> {
    const changes = new Array<StoredStateChange | null | undefined>(keys.length).fill(undefined);
    const sources = new Set<StateSource>();
    const nc = this.opts.nc;
    const partitions = nc ? await this.partitionCount(nc) : undefined;
    if (nc && partitions !== undefined) {
      const byPartition = new Map<number, number[]>();
      keys.forEach(([, key], i) => {
        const p = partitionOf(key, partitions);
        const list = byPartition.get(p);
        if (list) list.push(i);
        else byPartition.set(p, [i]);
      });
      const asks: Promise<void>[] = [];
      for (const [p, all] of byPartition)
        for (let i = 0; i < all.length; i += MAX_QUERY_KEYS)
          asks.push(this.ask(nc, p, all.slice(i, i + MAX_QUERY_KEYS), keys, changes));
      await Promise.all(asks);
    }
    let fromOwner = 0;
    const rest: number[] = [];
    changes.forEach((c, i) => {
      if (c === undefined) rest.push(i);
      else fromOwner++;
    });
    if (fromOwner > 0) {
      sources.add('owner');
      this.reads.inc({ source: 'owner' }, fromOwner);
    }
    if (rest.length > 0) {
      await this.readExport(rest, keys, changes);
      sources.add('export');
      this.reads.inc({ source: 'export' }, rest.length);
    }
    return { changes: changes as (StoredStateChange | null)[], sources };
  }

  /**
   * Every committed state of `actor` (of every actor when absent), from each partition's owner, a
   * page at a time as the caller takes them. Answers the partitions whose owner could not answer
   * (none runs it now, it is moving, or it is slow) without their states: the caller reads those
   * from the bucket. Undefined for all of them when the deployment has no partitions yet.
   */
  async *scan(
    actor: string | undefined,
    missed: (partitions: ReadonlySet<number> | undefined) => void,
  ): AsyncIterable<StoredStateChange> {
    const nc = this.opts.nc;
    const partitions = nc ? await this.partitionCount(nc) : undefined;
    if (!nc || partitions === undefined) return missed(undefined);
    const failed = new Set<number>();
    const timeout = this.opts.ownerTimeoutMs ?? DEFAULT_OWNER_TIMEOUT_MS;
    for (let p = 0; p < partitions; p++) {
      // A partition read part way and then lost is read again whole from the bucket: the caller
      // keeps the newest change of each key.
      let after: [string, string] | undefined;
      try {
        for (;;) {
          const page = await scanStates(
            nc,
            p,
            { ...(actor !== undefined ? { actor } : {}), ...(after ? { after } : {}) },
            timeout,
          );
          this.reads.inc({ source: 'owner' }, page.changes.length);
          yield* page.changes;
          if (page.next === null) break;
          after = page.next;
        }
      } catch {
        failed.add(p);
      }
    }
    missed(failed);
  }

  /**
   * Asks the owner of partition `p` for the keys at `indices`; an answer too large for one NATS
   * message is asked for again in halves. Keys left unanswered (undefined) go to the bucket.
   */
  private async ask(
    nc: NatsConnection,
    p: number,
    indices: number[],
    keys: readonly (readonly [string, string])[],
    changes: (StoredStateChange | null | undefined)[],
  ): Promise<void> {
    try {
      const got = await queryStates(
        nc,
        p,
        indices.map((i) => keys[i]!),
        this.opts.ownerTimeoutMs ?? DEFAULT_OWNER_TIMEOUT_MS,
      );
      indices.forEach((i, j) => {
        changes[i] = got[j] ?? null;
      });
    } catch (err) {
      if (err instanceof PartitaError && err.code === 'PARTITA_ERR_QUERY_TOO_LARGE' && indices.length > 1) {
        const half = Math.ceil(indices.length / 2);
        await Promise.all([
          this.ask(nc, p, indices.slice(0, half), keys, changes),
          this.ask(nc, p, indices.slice(half), keys, changes),
        ]);
      }
      // Otherwise no owner answers now (none runs the partition, it is moving, or it is slow):
      // these keys are read from the bucket.
    }
  }

  /** Reads the keys at `indices` from the state bucket, a bounded number in flight. */
  private async readExport(
    indices: number[],
    keys: readonly (readonly [string, string])[],
    changes: (StoredStateChange | null | undefined)[],
  ): Promise<void> {
    const queue = [...indices];
    let taken = 0;
    const reader = async () => {
      for (let i = queue.pop(); i !== undefined; i = queue.pop()) {
        const [actor, key] = keys[i]!;
        const e = await this.opts.state.get(stateKvKey(actor, key));
        changes[i] = e?.operation === 'PUT' && e.length > 0 ? parseChange(e.string()) : null;
        if (++taken % READS_PER_TURN === 0) await nextTurn();
      }
    };
    await Promise.all(Array.from({ length: Math.min(READS_IN_FLIGHT, queue.length) }, reader));
  }

  /**
   * The deployment's partition count, from `partita_meta` (fixed when the deployment is created, so
   * read once); undefined while the deployment has none yet (no node has ever started).
   */
  async knownPartitions(): Promise<number | undefined> {
    return this.opts.nc ? this.partitionCount(this.opts.nc) : undefined;
  }

  private async partitionCount(nc: NatsConnection): Promise<number | undefined> {
    if (this.partitions !== undefined) return this.partitions;
    if (!this.partitionsRead && Date.now() - this.partitionsTriedAt >= PARTITIONS_RETRY_MS) {
      this.partitionsRead = (async () => {
        try {
          const meta = await new Kvm(nc).open(META_BUCKET);
          const n = Number((await meta.get('partitions'))?.string());
          if (Number.isInteger(n) && n > 0) this.partitions = n;
        } catch {
          // No meta bucket yet: read from the state bucket, and look again later.
        } finally {
          this.partitionsTriedAt = Date.now();
          this.partitionsRead = undefined;
        }
      })();
    }
    await this.partitionsRead;
    return this.partitions;
  }
}

/** The header value naming the sources of a read. */
export function sourceHeader(sources: ReadonlySet<StateSource>): string {
  return [...(['owner', 'export'] as const)].filter((s) => sources.has(s)).join(', ');
}

function parseChange(raw: string): StoredStateChange | null {
  try {
    const v = JSON.parse(raw) as unknown;
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as StoredStateChange) : null;
  } catch {
    return null;
  }
}
