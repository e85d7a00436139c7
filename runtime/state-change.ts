// A state change as the state bucket stores it and `partita.state.<actor>.<key>` carries it, built
// from a committed LMDB record. The partition runner publishes these when it stores states again
// (outbox recovery, the end of a rebuild, repairs), and the owner answers state queries with them
// (state-query.ts), so a reader gets the same JSON from either. Worker threads build the same fields
// as text for the states of a batch they just committed (batch-worker.ts); docs/state-changes.md
// documents every field.
import { lineageOfRecord } from './lineage.js';
import type { StateRecord } from './state-store.js';

export interface StateChangeContext {
  partition: number;
  /** The lease epoch of the node that sends the change. */
  epoch: number;
  /** The partition's key count (`Checkpoint.n`), if known. */
  partitionKeys?: number | undefined;
}

/** The JSON of a state change: actor, key, state, seq, updatedAt, partition, epoch and the rest. */
export function stateChangeJson(
  actor: string,
  key: string,
  rec: StateRecord,
  ctx: StateChangeContext,
): string {
  return JSON.stringify({
    actor,
    key,
    state: rec.s,
    seq: rec.q,
    updatedAt: new Date(rec.t).toISOString(),
    partition: ctx.partition,
    epoch: ctx.epoch,
    ...(ctx.partitionKeys != null ? { partitionKeys: ctx.partitionKeys } : {}),
    ...lineageOfRecord(ctx.partition, rec),
    // Open windows and timers travel with the state, as in the worker's JSON.
    ...(rec.x ? { sys: rec.x } : {}),
  });
}
