// `partita replay`: rebuild one actor's state on a partition from the partition's input stream,
// for example after a handler bug fix. The owner of the partition runs it under its own lease, so
// a replay is fenced like any batch: the CLI sends a request to the node that holds the lease
// (`partita.control.replay.<node id>`); that node pauses the partition (finishes and publishes the
// batch in flight), folds the stream's events for the actor from the start position up to its
// checkpoint with the handler it runs now, commits the rebuilt states in one LMDB transaction with
// an outbox of the keys it changed, and resumes the partition, whose start publishes the outbox
// (the rebuilt states go to the state bucket and `partita.state.*`). See ARCHITECTURE.md, "Replay".

import { DeliverPolicy, type JetStreamManager, jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { pack, unpack } from 'msgpackr';
import type { LoadedActor } from './actor-loader.js';
import { recordAudit } from './audit.js';
import { actorsByType, applyBatch, type RawEvent } from './batch.js';
import { rawEventOf } from './batch-codec.js';
import { type ErrorCode, isErrorCode, PartitaError } from './errors.js';
import { GovernanceCache } from './governance.js';
import type { Logger } from './logger.js';
import type { NodeMetrics } from './metrics.js';
import type { PartitionLease } from './partition-lease.js';
import type { Outbox, StateRecord, StateStore } from './state-store.js';
import { inStream, LEASES_BUCKET, META_BUCKET, STATE_BUCKET, stateKvKey } from './subjects.js';

export const REPLAY_SUBJECT_PREFIX = 'partita.control.replay';

/** Where the node `nodeId` takes replay requests for the partitions it owns. */
export function replaySubject(nodeId: string): string {
  return `${REPLAY_SUBJECT_PREFIX}.${nodeId}`;
}

export interface ReplayRequest {
  actor: string;
  partition: number;
  /** First stream sequence of the partition to fold; events before it are not read. */
  fromSeq?: number;
  /** ISO 8601: fold from the first event JetStream stored at or after this time. */
  fromTime?: string;
}

export interface ReplayResult {
  actor: string;
  partition: number;
  /** The node that ran it, and the lease epoch it ran under. */
  node: string;
  epoch: number;
  /** The stream range folded (fromSeq > toSeq: nothing to fold). */
  fromSeq: number;
  toSeq: number;
  /** Events of the actor's types read in the range. */
  events: number;
  /** Keys whose state was rebuilt. */
  keys: number;
  /** Keys left with no state (every one of their events was dead-lettered by the handler). */
  deleted: number;
  /** Events the handler threw on: dead-lettered again, with `PARTITA_ERR_HANDLER`. */
  deadLettered: number;
  ms: number;
}

type ReplayReply = { ok: true; result: ReplayResult } | { ok: false; code: ErrorCode; message: string };

/** What a node lends the replay service. */
export interface ReplayHost {
  nodeId: string;
  nc: NatsConnection;
  jsm: JetStreamManager;
  store: StateStore;
  actors: readonly LoadedActor[];
  partitions: number;
  maxEventBytes: number;
  maxAttempts: number;
  /** The limits of live processing (ApplyOptions): a replay dead-letters what it would. */
  maxStateBytes?: number;
  maxEmitBytes?: number;
  /** The key of x-pii "hash" fields: a replay validates and masks as the workers do. */
  piiSecret?: string;
  metrics: NodeMetrics;
  log: Logger;
  /**
   * Runs `fn` while partition `p` is paused (its batch in flight finished and published) and its
   * lease held; resumes it afterwards. Throws PARTITA_ERR_NOT_OWNER when `p` is not held here.
   */
  exclusive<T>(p: number, fn: (lease: PartitionLease) => Promise<T>): Promise<T>;
}

const CHUNK = 2000;
/** Dead-letter codes that depend on the handler, and so may differ in a replay. */
const HANDLER_CODES: ReadonlySet<string> = new Set([
  'PARTITA_ERR_HANDLER',
  'PARTITA_ERR_STATE_TOO_LARGE',
  'PARTITA_ERR_OUTPUT_REFUSED',
]);
/** Longest stretch of handler calls between two yields of the main thread. */
const SLICE_MS = 20;

/** Answers replay requests sent to this node. */
export function serveReplays(host: ReplayHost): { stop(): Promise<void> } {
  const running = new Set<Promise<void>>();
  const sub: Subscription = host.nc.subscribe(replaySubject(host.nodeId), {
    callback: (err, msg) => {
      if (err) return;
      const run = (async () => {
        let reply: ReplayReply;
        let actor = '?';
        try {
          const req = msg.json<ReplayRequest>();
          actor = String(req.actor);
          if (!Number.isInteger(req.partition) || req.partition < 0)
            throw new PartitaError(
              'PARTITA_ERR_BAD_REQUEST',
              `partition must be a whole number, got ${req.partition}`,
            );
          const result = await host.exclusive(req.partition, (lease) => replayPartition(host, req, lease));
          host.metrics.replays.inc({ actor, result: 'ok' });
          reply = { ok: true, result };
        } catch (e) {
          host.metrics.replays.inc({ actor, result: 'failed' });
          const code = (e as { code?: string }).code;
          reply = {
            ok: false,
            code: code && isErrorCode(code) ? code : 'PARTITA_ERR_REPLAY',
            message: (e as Error).message,
          };
          host.log.warn({ actor, code: reply.code, err: reply.message }, 'replay failed');
        }
        msg.respond(JSON.stringify(reply));
      })();
      running.add(run);
      void run.finally(() => running.delete(run));
    },
  });
  return {
    async stop() {
      sub.unsubscribe();
      await Promise.allSettled([...running]);
    },
  };
}

/** The replay itself; runs on the owner, inside `exclusive`. */
export async function replayPartition(
  host: ReplayHost,
  req: ReplayRequest,
  lease: PartitionLease,
): Promise<ReplayResult> {
  const started = performance.now();
  const p = req.partition;
  const governance = new GovernanceCache(host.piiSecret);
  const actor = host.actors.find((a) => a.name === req.actor);
  if (!actor) {
    throw new PartitaError(
      'PARTITA_ERR_REPLAY',
      `node ${host.nodeId} runs no actor "${req.actor}" (it runs ${host.actors.map((a) => a.name).join(', ')})`,
    );
  }
  const log = host.log.child({ partition: p, actor: actor.name });
  const stream = inStream(p);
  // The fold ends at the checkpoint: what comes after it, the resumed partition applies with the
  // same (new) handler.
  const toSeq = host.store.checkpoint(p)?.seq ?? 0;
  const info = await host.jsm.streams.info(stream);
  let fromSeq: number;
  if (req.fromTime !== undefined) {
    fromSeq = await firstSeqAtOrAfter(host, stream, req.fromTime, info.state.last_seq);
  } else {
    fromSeq = Math.max(1, req.fromSeq ?? 1);
    if (fromSeq < info.state.first_seq && fromSeq <= toSeq) {
      throw new PartitaError(
        'PARTITA_ERR_REPLAY',
        `partition ${p}: events ${fromSeq}..${info.state.first_seq - 1} are no longer in ${stream}; replay from ${info.state.first_seq} or use --from-time`,
      );
    }
  }
  const base = {
    actor: actor.name,
    partition: p,
    node: host.nodeId,
    epoch: lease.epoch,
    fromSeq,
    toSeq,
  };
  log.info({ fromSeq, toSeq }, 'replay started');
  if (fromSeq > toSeq) {
    return {
      ...base,
      events: 0,
      keys: 0,
      deleted: 0,
      deadLettered: 0,
      ms: Math.round(performance.now() - started),
    };
  }

  // Fold the range with the handler this node runs now, from initial() for every key that has an
  // event in it. The states are kept packed (a fresh decode per load, as applyBatch requires).
  const types = new Set(actor.def.events);
  const byType = actorsByType([actor]);
  const rebuilt = new Map<string, Uint8Array>();
  const touched = new Set<string>();
  const dead: Outbox['dead'] = [];
  const now = Date.now();
  let events = 0;
  const fold = (chunk: RawEvent[]) => {
    const out = applyBatch(
      byType,
      chunk,
      (_a, key) => {
        const b = rebuilt.get(key);
        return b ? (unpack(b) as StateRecord) : undefined;
      },
      {
        partition: p,
        partitions: host.partitions,
        maxEventBytes: host.maxEventBytes,
        maxAttempts: host.maxAttempts,
        maxStateBytes: host.maxStateBytes,
        maxEmitBytes: host.maxEmitBytes,
        now,
        // The same schemas and masking as live processing: a replay must not let PII into state.
        govern: governance.current(host.store),
      },
    );
    for (const w of out.writes) rebuilt.set(w.key, pack(w.record));
    // Other codes (decode, size, partition) do not depend on the handler: they were dead-lettered
    // when the event first came and are not sent again.
    for (const d of out.dead) if (HANDLER_CODES.has(d.code)) dead.push([d.seq, d.code, d.message, d.actor]);
  };

  const consumer = await jetstream(host.nc).consumers.get(stream, {
    deliver_policy: DeliverPolicy.StartSequence,
    opt_start_seq: fromSeq,
  });
  let chunk: RawEvent[] = [];
  let slice = 64;
  let last = fromSeq - 1;
  while (last < toSeq) {
    if (!lease.valid())
      throw new PartitaError('PARTITA_ERR_NOT_OWNER', `lease of partition ${p} lost during the replay`);
    const batch = await consumer.fetch({ max_messages: Math.min(CHUNK, toSeq - last), expires: 5000 });
    let got = 0;
    for await (const m of batch) {
      got++;
      last = m.seq;
      if (m.seq > toSeq) break;
      const raw = rawEventOf(m, p);
      if (raw.badSubject !== undefined || !types.has(raw.type)) continue;
      events++;
      touched.add(raw.key);
      chunk.push(raw);
    }
    if (got === 0) break; // the stream ends before the checkpoint (it cannot, but never hang)
    // Handlers run here on the main thread, which also renews the leases: fold in slices of about
    // SLICE_MS and yield between them, so even a slow handler never starves a renewal.
    for (let i = 0; i < chunk.length; ) {
      const part = chunk.slice(i, i + slice);
      const t0 = performance.now();
      fold(part);
      i += part.length;
      const ms = performance.now() - t0;
      if (ms > SLICE_MS) slice = Math.max(1, Math.floor(slice / 2));
      else if (ms < SLICE_MS / 4) slice = Math.min(CHUNK, slice * 2);
      await new Promise((r) => setImmediate(r));
      if (!lease.valid())
        throw new PartitaError('PARTITA_ERR_NOT_OWNER', `lease of partition ${p} lost during the replay`);
    }
    chunk = [];
  }
  host.metrics.replayEvents.inc({ actor: actor.name }, events);

  if (!lease.valid()) {
    throw new PartitaError(
      'PARTITA_ERR_NOT_OWNER',
      `lease of partition ${p} lost during the replay: nothing committed`,
    );
  }
  // One transaction: the rebuilt states and an outbox naming them, so the resumed partition
  // publishes them even if this process dies right after the commit. The checkpoint does not move.
  // A published outbox's delete held back must land first, or it would take this one with it.
  await host.store.flushOutboxDeletes();
  const deleted: string[] = [];
  await host.store.root.transaction(() => {
    const keys: [string, string][] = [];
    let created = 0;
    for (const key of touched) {
      const b = rebuilt.get(key);
      if (b) {
        if (host.store.states.get([actor.name, key]) === undefined) created++;
        host.store.states.put([actor.name, key], unpack(b) as StateRecord);
        keys.push([actor.name, key]);
      } else if (host.store.states.get([actor.name, key]) !== undefined) {
        host.store.states.remove([actor.name, key]);
        deleted.push(key);
      }
    }
    // The partition's key count moves with the keys the replay created or removed.
    const cp = host.store.checkpoint(p);
    const n = cp?.n != null ? cp.n + created - deleted.length : undefined;
    if (cp && n !== undefined) host.store.meta.put(['cp', p], { ...cp, n });
    const prev = host.store.meta.get(['ob', p, toSeq]) as Outbox | undefined;
    const have = new Set((prev?.keys ?? []).map(([a, k]) => `${a}\u0000${k}`));
    const outbox: Outbox = {
      seq: toSeq,
      keys: [...(prev?.keys ?? []), ...keys.filter(([a, k]) => !have.has(`${a}\u0000${k}`))],
      emits: prev?.emits ?? [],
      dead: [...(prev?.dead ?? []), ...dead],
      ...(n !== undefined ? { n } : {}),
    };
    host.store.meta.put(['ob', p, toSeq], outbox);
  });
  // A key left with no state is removed from the bucket too (best effort: the outbox only carries
  // keys that have a record).
  if (deleted.length > 0) {
    const kv = await new Kvm(host.nc).open(STATE_BUCKET);
    for (const key of deleted) await kv.delete(stateKvKey(actor.name, key)).catch(() => undefined);
  }
  const result: ReplayResult = {
    ...base,
    events,
    keys: touched.size - deleted.length,
    deleted: deleted.length,
    deadLettered: dead.length,
    ms: Math.round(performance.now() - started),
  };
  log.info({ events, keys: result.keys, deleted: result.deleted, ms: result.ms }, 'replay committed');
  return result;
}

/** The sequence of the first message stored at or after `time`; last + 1 when there is none. */
async function firstSeqAtOrAfter(
  host: ReplayHost,
  stream: string,
  time: string,
  lastSeq: number,
): Promise<number> {
  const c = await jetstream(host.nc).consumers.get(stream, {
    deliver_policy: DeliverPolicy.StartTime,
    opt_start_time: time,
  });
  const msgs = await c.fetch({ max_messages: 1, expires: 2000 });
  for await (const m of msgs) return m.seq;
  return lastSeq + 1;
}

export interface ReplayOptions {
  actor: string;
  /** One partition; all partitions when omitted. */
  partition?: number;
  fromSeq?: number;
  /** ISO 8601 or epoch ms. */
  fromTime?: string;
  /** How long one partition's replay may take. @default 600000 */
  timeoutMs?: number;
  /** How long to wait for a partition to have an owner. @default 15000 */
  ownerWaitMs?: number;
  who?: string;
}

/** Client side (`partita replay`): asks each partition's owner to replay, then records an audit entry. */
export async function runReplay(nc: NatsConnection, o: ReplayOptions): Promise<ReplayResult[]> {
  if ((o.fromSeq === undefined) === (o.fromTime === undefined))
    throw new PartitaError('PARTITA_ERR_USAGE', 'give exactly one of --from-seq N and --from-time T');
  const fromTime = o.fromTime === undefined ? undefined : isoTime(o.fromTime);
  const kvm = new Kvm(nc);
  const meta = await kvm.open(META_BUCKET);
  const count = Number((await meta.get('partitions'))?.string() ?? 0);
  if (count === 0)
    throw new PartitaError(
      'PARTITA_ERR_REPLAY',
      'no Partita deployment on this NATS (no partition count in partita_meta)',
    );
  if (o.partition !== undefined && o.partition >= count)
    throw new PartitaError('PARTITA_ERR_USAGE', `--partition must be below ${count}`);
  const leases = await kvm.open(LEASES_BUCKET);
  const targets = o.partition === undefined ? Array.from({ length: count }, (_, p) => p) : [o.partition];
  const results: ReplayResult[] = [];
  const details = { partitions: targets, fromSeq: o.fromSeq, fromTime };
  try {
    // One partition at a time: the others keep running meanwhile.
    for (const p of targets) {
      results.push(
        await replayOne(nc, leases, { actor: o.actor, partition: p, fromSeq: o.fromSeq, fromTime }, o),
      );
    }
  } catch (err) {
    await recordAudit(nc, {
      action: 'replay',
      target: o.actor,
      who: o.who,
      details: { ...details, ok: false, error: (err as Error).message, results },
    }).catch(() => undefined);
    throw err;
  }
  await recordAudit(nc, {
    action: 'replay',
    target: o.actor,
    who: o.who,
    details: { ...details, ok: true, results },
  });
  return results;
}

async function replayOne(
  nc: NatsConnection,
  leases: Awaited<ReturnType<Kvm['open']>>,
  req: ReplayRequest,
  o: ReplayOptions,
): Promise<ReplayResult> {
  const deadline = Date.now() + (o.ownerWaitMs ?? 15_000);
  for (;;) {
    const lease = await leases.get(`p${req.partition}`).catch(() => null);
    const owner = lease?.operation === 'PUT' ? lease.json<{ node: string }>().node : undefined;
    let failure: PartitaError;
    if (owner === undefined) {
      failure = new PartitaError('PARTITA_ERR_NOT_OWNER', `partition ${req.partition} has no owner`);
    } else {
      let reply: ReplayReply;
      try {
        const m = await nc.request(replaySubject(owner), JSON.stringify(req), {
          timeout: o.timeoutMs ?? 600_000,
        });
        reply = m.json<ReplayReply>();
      } catch (err) {
        // No responder: the owner just stopped. A timeout: the replay may have committed; running
        // it again is safe (it is a pure function of the stream and the handler).
        reply = { ok: false, code: 'PARTITA_ERR_NOT_OWNER', message: `${owner}: ${(err as Error).message}` };
      }
      if (reply.ok) return reply.result;
      failure = new PartitaError(reply.code, reply.message.replace(/^.*?: /, ''));
      if (reply.code !== 'PARTITA_ERR_NOT_OWNER') throw failure;
    }
    if (Date.now() > deadline) throw failure;
    await new Promise((r) => setTimeout(r, 250));
  }
}

function isoTime(t: string): string {
  const d = /^\d+$/.test(t) ? new Date(Number(t)) : new Date(t);
  if (Number.isNaN(d.getTime()))
    throw new PartitaError('PARTITA_ERR_USAGE', `--from-time must be ISO 8601 or epoch ms, got "${t}"`);
  return d.toISOString();
}
