// Creates (idempotently) the streams and buckets Partita runs on. See ARCHITECTURE.md, "Subjects".

import {
  DiscardPolicy,
  JetStreamApiError,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
} from '@nats-io/jetstream';
import { type KV, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { ensureAuditStream } from './audit.js';
import { ensureChangelogStream } from './changelog.js';
import { PartitaError } from './errors.js';
import { AGG_PREFIX, LATE_PREFIX } from './event-time.js';
import { timedOut } from './nats-refusal.js';
import { serverFeatures } from './server-features.js';
import {
  AGG_STREAM,
  DLQ_PREFIX,
  DLQ_STREAM,
  EVENTS_PREFIX,
  IN_PREFIX,
  INGEST_STREAM,
  inStream,
  LATE_STREAM,
  LEASES_BUCKET,
  META_BUCKET,
  NODES_BUCKET,
  partitionOf,
  partitionTransform,
  STATE_BUCKET,
  STATE_PREFIX,
  UNROUTED_RETIRED_SUBJECT,
  UNROUTED_STREAM,
} from './subjects.js';
import { parseDuration } from './window.js';

export interface TopologyOptions {
  /** Partition count; when omitted the deployment's recorded count (else 16) is used. */
  partitions?: number;
  /** Stream and bucket replicas for a new deployment (1 or 3). @default 3 on a cluster, else 1 */
  replicas?: number;
  /** Max age of raw events in the input stream, in ms; 0 keeps them forever. @default 90 days */
  eventsMaxAgeMs?: number;
  /** Lease TTL for a new deployment (an existing one keeps its own). @default 2000 */
  leaseTtlMs?: number;
  /** Max age of window results in PARTITA_AGG, in ms; 0 keeps them forever. @default 2 years */
  aggregatesMaxAgeMs?: number;
  /** Max age of dead letters in PARTITA_DLQ, in ms; 0 keeps them forever. @default 30 days */
  dlqMaxAgeMs?: number;
  /** Most bytes PARTITA_DLQ holds, the oldest dead letters dropped first; -1: no limit. @default 1 GiB */
  dlqMaxBytes?: number;
}

export interface Topology {
  readonly jsm: JetStreamManager;
  readonly partitions: number;
  readonly state: KV;
  readonly meta: KV;
  /** Live nodes: one key per node, expiring `leaseTtlMs` after its last heartbeat. */
  readonly nodes: KV;
  /** Partition leases: `p<N>`, expiring `leaseTtlMs` after the last renewal. */
  readonly leases: KV;
  /** The lease TTL the deployment was created with. */
  readonly leaseTtlMs: number;
  /**
   * Whether an expired entry of `nodes` and `leases` leaves a delete marker (nats-server 2.11+),
   * which their watchers see at once; otherwise expiries show only in the next periodic round.
   */
  readonly expiryMarkers: boolean;
}

export const DEFAULT_PARTITIONS = 16;
const DAY_MS = 86_400_000;
const nanos = (ms: number) => ms * 1_000_000;

/** A duration from the environment (`90d`, `2y`, or ms), if set. */
function envMs(name: string): number | undefined {
  const v = process.env[name];
  return v ? parseDuration(/^\d+$/.test(v) ? Number(v) : v, name) : undefined;
}

async function ensureStream(
  jsm: JetStreamManager,
  cfg: Partial<StreamConfig> & { name: string },
  /** An explicitly configured max age also applies to an existing stream. */
  updateMaxAge = false,
) {
  try {
    const info = await jsm.streams.info(cfg.name);
    if (updateMaxAge && cfg.max_age !== undefined && info.config.max_age !== cfg.max_age) {
      await jsm.streams.update(cfg.name, { ...info.config, max_age: cfg.max_age });
    }
  } catch {
    try {
      await jsm.streams.add(cfg);
    } catch (err) {
      // Another process may have created it between info and add.
      await jsm.streams.info(cfg.name).catch(() => {
        throw err;
      });
    }
  }
}

/** Dead letters are duplicates within this window drop: long enough to cover a batch published
 * again after its partition was fenced and taken again, or a node restarted. */
const DLQ_DUPLICATE_WINDOW_MS = 10 * 60_000;

/**
 * PARTITA_DLQ, with a retention (a flood of bad events must not fill the disk: age and size, the
 * oldest dropped first). Only an explicit value (option or environment) changes an existing one.
 */
async function ensureDlqStream(
  jsm: JetStreamManager,
  replicas: number,
  opts: TopologyOptions,
): Promise<void> {
  const ageExplicit = opts.dlqMaxAgeMs ?? envMs('PARTITA_DLQ_MAX_AGE');
  const envBytes = process.env.PARTITA_DLQ_MAX_BYTES;
  const bytesExplicit = opts.dlqMaxBytes ?? (envBytes ? Number(envBytes) : undefined);
  if (bytesExplicit !== undefined && !(Number.isInteger(bytesExplicit) && bytesExplicit >= -1))
    throw new PartitaError(
      'PARTITA_ERR_USAGE',
      `PARTITA_DLQ_MAX_BYTES must be a whole number, got "${envBytes}"`,
    );
  const maxAge = ageExplicit ?? 30 * DAY_MS;
  const limits = {
    max_age: nanos(maxAge),
    max_bytes: bytesExplicit ?? 1024 ** 3,
    // The server refuses a duplicate window longer than the max age.
    duplicate_window: nanos(maxAge > 0 ? Math.min(maxAge, DLQ_DUPLICATE_WINDOW_MS) : DLQ_DUPLICATE_WINDOW_MS),
  };
  await ensureStream(jsm, {
    name: DLQ_STREAM,
    subjects: [`${DLQ_PREFIX}.>`],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    num_replicas: replicas,
    ...limits,
  });
  if (ageExplicit === undefined && bytesExplicit === undefined) return;
  const info = await jsm.streams.info(DLQ_STREAM);
  const want = {
    ...info.config,
    ...(ageExplicit !== undefined
      ? { max_age: limits.max_age, duplicate_window: limits.duplicate_window }
      : {}),
    ...(bytesExplicit !== undefined ? { max_bytes: limits.max_bytes } : {}),
  };
  if (
    want.max_age !== info.config.max_age ||
    want.max_bytes !== info.config.max_bytes ||
    want.duplicate_window !== info.config.duplicate_window
  )
    await jsm.streams.update(DLQ_STREAM, want);
}

export async function ensureTopology(nc: NatsConnection, opts: TopologyOptions = {}): Promise<Topology> {
  const jsm = await jetstreamManager(nc);
  const kvm = new Kvm(nc);
  const replicas = opts.replicas ?? defaultReplicas(nc);
  const meta = await kvm.create(META_BUCKET, { history: 1, replicas, storage: StorageType.File });
  const recorded = await meta.get('partitions');
  let partitions = opts.partitions;
  if (recorded?.operation === 'PUT') {
    const n = Number(recorded.string());
    if (partitions !== undefined && partitions !== n) {
      throw new PartitaError(
        'PARTITA_ERR_PARTITIONS_CONFLICT',
        `deployment has ${n}, asked for ${partitions}`,
      );
    }
    partitions = n;
  } else {
    partitions ??= DEFAULT_PARTITIONS;
    try {
      await meta.create('partitions', String(partitions));
    } catch {
      const now = Number((await meta.get('partitions'))?.string());
      if (now !== partitions) {
        throw new PartitaError(
          'PARTITA_ERR_PARTITIONS_CONFLICT',
          `deployment has ${now}, asked for ${partitions}`,
        );
      }
    }
  }
  // Retention: options, else the environment, else the seed's 90 days of raw events and 2 years
  // of aggregates. Only an explicit value changes an existing deployment's streams.
  const eventsExplicit = opts.eventsMaxAgeMs ?? envMs('PARTITA_EVENTS_MAX_AGE');
  const eventsMaxAge = eventsExplicit ?? 90 * DAY_MS;
  const aggExplicit = opts.aggregatesMaxAgeMs ?? envMs('PARTITA_AGGREGATES_MAX_AGE');
  await ensureIngest(jsm, partitions, replicas, eventsMaxAge);
  // One input stream per partition, sourcing its events from the ingest stream (see ARCHITECTURE.md,
  // "Partition layout"): per-partition sequences, retention and leaders spread over a cluster. Its
  // own subjects take the partition ticker's ticks and a legacy server mapping's events.
  await Promise.all(
    Array.from({ length: partitions }, async (_, p) => {
      const source = { name: INGEST_STREAM, filter_subject: `${IN_PREFIX}.${p}.>` };
      await ensureStream(
        jsm,
        {
          name: inStream(p),
          subjects: [`${IN_PREFIX}.${p}.>`],
          sources: [source],
          storage: StorageType.File,
          retention: RetentionPolicy.Limits,
          discard: DiscardPolicy.Old,
          max_age: nanos(eventsMaxAge),
          duplicate_window: nanos(120_000),
          num_replicas: replicas,
        },
        eventsExplicit !== undefined,
      );
      // A stream from before the ingest stream gets its source.
      const info = await jsm.streams.info(inStream(p));
      if (!info.config.sources?.some((s) => s.name === INGEST_STREAM))
        await jsm.streams.update(inStream(p), {
          ...info.config,
          sources: [...(info.config.sources ?? []), source],
        });
    }),
  );
  if (opts.eventsMaxAgeMs !== undefined) await setEventsMaxAge(jsm, partitions, opts.eventsMaxAgeMs);
  await ensureDlqStream(jsm, replicas, opts);
  await ensureAuditStream(nc, replicas);
  await ensureChangelogStream(jsm, replicas);
  // Event time: late events' side output, and every window result (the aggregates' history).
  await ensureStream(
    jsm,
    {
      name: LATE_STREAM,
      subjects: [`${LATE_PREFIX}.>`],
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      max_age: nanos(eventsMaxAge),
      duplicate_window: nanos(120_000),
      num_replicas: replicas,
    },
    eventsExplicit !== undefined,
  );
  await ensureStream(
    jsm,
    {
      name: AGG_STREAM,
      subjects: [`${AGG_PREFIX}.>`],
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      max_age: nanos(aggExplicit ?? 2 * 365 * DAY_MS),
      duplicate_window: nanos(120_000),
      num_replicas: replicas,
    },
    aggExplicit !== undefined,
  );
  const state = await ensureStateBucket(nc, replicas);
  // On 2.9 a KV bucket's TTL is its stream's max age: an entry not rewritten within it vanishes.
  const ttl = opts.leaseTtlMs ?? 2000;
  const nodes = await kvm.create(NODES_BUCKET, { history: 1, replicas, ttl, storage: StorageType.Memory });
  const leases = await kvm.create(LEASES_BUCKET, { history: 1, replicas, ttl, storage: StorageType.File });
  const leaseTtlMs = (await leases.status()).ttl || ttl;
  const marked = serverFeatures(nc).expiryMarkers
    ? await Promise.all(
        [NODES_BUCKET, LEASES_BUCKET].map((b) => ensureExpiryMarkers(jsm, `KV_${b}`, leaseTtlMs)),
      )
    : [];
  const expiryMarkers = marked.length > 0 && marked.every(Boolean);
  return { jsm, partitions, state, meta, nodes, leases, leaseTtlMs, expiryMarkers };
}

/**
 * Has the server leave a delete marker where an entry of the bucket's stream expires (2.11+), on a
 * new bucket and on one an older Partita or a 2.10 server created. The bucket-wide TTL (max age)
 * stays the lease TTL: nodes of an older Partita renew without a per-message TTL, and 2.10 servers
 * of a cluster in a rolling upgrade know none. False when the server refuses (a leader still on
 * 2.10): expiries are then noticed by the periodic rounds, as before.
 */
async function ensureExpiryMarkers(jsm: JetStreamManager, stream: string, ttlMs: number): Promise<boolean> {
  try {
    const info = await jsm.streams.info(stream);
    if ((info.config.subject_delete_marker_ttl ?? 0) > 0) return true;
    // The server keeps a marker at least a second. It lives as long as a lease, then goes itself.
    const marker = nanos(Math.max(1000, ttlMs));
    const updated = await jsm.streams.update(stream, {
      ...info.config,
      allow_msg_ttl: true,
      subject_delete_marker_ttl: marker,
    });
    return (updated.config.subject_delete_marker_ttl ?? 0) > 0;
  } catch {
    return false;
  }
}

/** How long the ingest stream keeps an event: its partition's stream has it long before. */
const INGEST_MAX_AGE_MS = 7 * DAY_MS;

/**
 * The ingest stream on `events.>`: its transform stores `events.<type>.<key>` as
 * `partita.in.<p>.<type>.<key>`, so no server configuration is needed; other shapes stay as they
 * are, for the unrouted dead-letterer. A PARTITA_UNROUTED from before (the same subjects) is moved
 * off `events.>` first (streams may not overlap), then drained by the node and deleted.
 */
async function ensureIngest(
  jsm: JetStreamManager,
  partitions: number,
  replicas: number,
  eventsMaxAge: number,
): Promise<void> {
  const unrouted = await jsm.streams.info(UNROUTED_STREAM).catch(() => null);
  if (unrouted && !unrouted.config.subjects?.includes(UNROUTED_RETIRED_SUBJECT)) {
    await jsm.streams.update(UNROUTED_STREAM, { ...unrouted.config, subjects: [UNROUTED_RETIRED_SUBJECT] });
  }
  const maxAge = eventsMaxAge > 0 ? Math.min(eventsMaxAge, INGEST_MAX_AGE_MS) : INGEST_MAX_AGE_MS;
  await ensureStream(jsm, {
    name: INGEST_STREAM,
    subjects: [`${EVENTS_PREFIX}.>`],
    subject_transform: partitionTransform(partitions),
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    max_age: nanos(maxAge),
    duplicate_window: nanos(Math.min(maxAge, 120_000)),
    num_replicas: replicas,
  });
}

/** Applies a changed raw-event retention to existing input streams (given explicitly only). */
async function setEventsMaxAge(jsm: JetStreamManager, partitions: number, maxAgeMs: number): Promise<void> {
  await Promise.all(
    Array.from({ length: partitions }, async (_, p) => {
      const info = await jsm.streams.info(inStream(p));
      if (info.config.max_age !== nanos(maxAgeMs))
        await jsm.streams.update(inStream(p), { ...info.config, max_age: nanos(maxAgeMs) });
    }),
  );
}

/**
 * The bucket of latest states; its republish sends every put on `partita.state.<actor>.<key>`
 * (2.9 accepts republish only at creation). The gateway needs only this, not the partitions.
 */
export async function ensureStateBucket(nc: NatsConnection, replicas = defaultReplicas(nc)): Promise<KV> {
  return new Kvm(nc).create(STATE_BUCKET, {
    history: 1,
    replicas,
    storage: StorageType.File,
    republish: { src: `$KV.${STATE_BUCKET}.>`, dest: `${STATE_PREFIX}.>` },
  });
}

/**
 * Allows atomic batches on the state bucket's stream where the server has them (2.12+), and says
 * whether the stream now allows them. A server that does not know the field drops it (a cluster
 * whose meta leader runs an older server), so this reads back what the stream holds.
 */
export async function atomicStatesAvailable(nc: NatsConnection, jsm: JetStreamManager): Promise<boolean> {
  if (!serverFeatures(nc).atomicBatches) return false;
  let info = await jsm.streams.info(`KV_${STATE_BUCKET}`);
  // Atomic batches are refused on a stream that persists asynchronously.
  if (!info.config.allow_atomic && info.config.persist_mode !== 'async')
    info = await jsm.streams.update(info.config.name, { ...info.config, allow_atomic: true });
  return info.config.allow_atomic === true;
}

/** Replicated (R3) on a cluster, so that one server dying loses nothing; R1 on a single server. */
export function defaultReplicas(nc: NatsConnection): number {
  return nc.info?.cluster ? 3 : 1;
}

/** A probe event's type; it is never stored (see `verifyPartitionMapping`). */
export const PROBE_TYPE = 'partita-probe';

/**
 * Checks that events reach the partitions this node computes: through the ingest stream (its
 * transform is set by `ensureTopology` from the recorded count) or, on a server that keeps a
 * legacy `partition()` mapping, straight into the partition's stream, which must then agree. Each
 * probe is a JetStream publish that names the stream it expects and an impossible last sequence,
 * so the server always refuses to store it, and its answer says where it would have gone: "wrong
 * last sequence" means the expected stream, "expected stream does not match" another one, "no
 * responders" no stream at all.
 */
export async function verifyPartitionMapping(nc: NatsConnection, partitions: number): Promise<void> {
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  /** The probe's answer for `stream`: reached it (true), another stream (false), else it throws. */
  const reaches = async (subject: string, stream: string, again = true): Promise<boolean> => {
    try {
      await js.publish(subject, '', {
        expect: { streamName: stream, lastSubjectSequence: 999_999_999_999 },
        timeout: 5000,
      });
    } catch (err) {
      const code = err instanceof JetStreamApiError ? err.code : undefined;
      if (code === 10071) return true; // wrong last sequence: the expected stream
      if (code === 10060) return false;
      // No answer in time: a stream electing a leader, not a wrong mapping (the caller retries; a
      // probe is never stored).
      if (timedOut(err)) throw err;
      // No stream took it: none for the subject, or the stream without a leader for now (no
      // responders either way). Probe again once it has one; the caller retries while it has none.
      if (again) {
        const { cluster } = await jsm.streams.info(stream);
        if (cluster && !cluster.leader) throw new Error(`no responders: ${stream} has no leader yet`);
        return reaches(subject, stream, false);
      }
      throw new PartitaError(
        'PARTITA_ERR_PARTITIONS_CONFLICT',
        `${subject} reached no stream (${(err as Error).message ?? String(err)})`,
        { cause: err },
      );
    }
    // Stored: cannot happen (the last-sequence check always fails), but say so if it did.
    throw new PartitaError(
      'PARTITA_ERR_PARTITIONS_CONFLICT',
      'a partitioning probe was stored; the server ignores expected-sequence headers',
    );
  };
  const probe = async (i: number) => {
    const key = `k${i}`;
    const p = partitionOf(key, partitions);
    const subject = `${EVENTS_PREFIX}.${PROBE_TYPE}.${key}`;
    if (await reaches(subject, INGEST_STREAM)) return;
    if (await reaches(subject, inStream(p))) return;
    throw new PartitaError(
      'PARTITA_ERR_PARTITIONS_CONFLICT',
      `key "${key}" reached neither ${INGEST_STREAM} nor ${inStream(p)}: the server maps events.*.* with another partition count; remove its \`mappings\` (Partita partitions in its ingest stream) or make it ${partitions}`,
    );
  };
  await Promise.all(Array.from({ length: 8 }, (_, i) => probe(i)));
}
