// Creates (idempotently) the streams and buckets Partita runs on. See ARCHITECTURE.md, "Subjects".
import {
  DiscardPolicy,
  type JetStreamManager,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
} from '@nats-io/jetstream';
import { type KV, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { PartitaError } from './errors.js';
import {
  DLQ_PREFIX,
  DLQ_STREAM,
  EVENTS_PREFIX,
  IN_PREFIX,
  IN_STREAM,
  META_BUCKET,
  STATE_BUCKET,
  STATE_PREFIX,
  UNROUTED_STREAM,
} from './subjects.js';

export interface TopologyOptions {
  /** Partition count; when omitted the deployment's recorded count (else 16) is used. */
  partitions?: number;
  /** Stream replicas (1 or 3). @default 1 */
  replicas?: number;
  /** Max age of raw events in the input stream, in ms; 0 keeps them forever. @default 90 days */
  eventsMaxAgeMs?: number;
}

export interface Topology {
  readonly jsm: JetStreamManager;
  readonly partitions: number;
  readonly state: KV;
  readonly meta: KV;
}

export const DEFAULT_PARTITIONS = 16;
const DAY_MS = 86_400_000;
const nanos = (ms: number) => ms * 1_000_000;

async function ensureStream(jsm: JetStreamManager, cfg: Partial<StreamConfig> & { name: string }) {
  try {
    await jsm.streams.info(cfg.name);
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

export async function ensureTopology(nc: NatsConnection, opts: TopologyOptions = {}): Promise<Topology> {
  const jsm = await jetstreamManager(nc);
  const replicas = opts.replicas ?? 1;
  const kvm = new Kvm(nc);
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
  await ensureStream(jsm, {
    name: IN_STREAM,
    subjects: [`${IN_PREFIX}.>`],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    max_age: nanos(opts.eventsMaxAgeMs ?? 90 * DAY_MS),
    duplicate_window: nanos(120_000),
    num_replicas: replicas,
  });
  await ensureStream(jsm, {
    name: UNROUTED_STREAM,
    subjects: [`${EVENTS_PREFIX}.>`],
    storage: StorageType.File,
    // A work queue: an unrouted event leaves once it has been dead-lettered.
    retention: RetentionPolicy.Workqueue,
    duplicate_window: nanos(120_000),
    num_replicas: replicas,
  });
  await ensureStream(jsm, {
    name: DLQ_STREAM,
    subjects: [`${DLQ_PREFIX}.>`],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    duplicate_window: nanos(120_000),
    num_replicas: replicas,
  });
  const state = await kvm.create(STATE_BUCKET, {
    history: 1,
    replicas,
    storage: StorageType.File,
    republish: { src: `$KV.${STATE_BUCKET}.>`, dest: `${STATE_PREFIX}.>` },
  });
  return { jsm, partitions, state, meta };
}
