// `partita status`: partitions, their owners, lag and checkpoint age, read from JetStream.
import { type ConsumerInfo, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { consumerNames, newestEpochConsumers } from './consumer-names.js';
import { kvKeys } from './kv-keys.js';
import { inStream, LEASES_BUCKET, META_BUCKET, NODES_BUCKET } from './subjects.js';

export interface PartitionState {
  partition: number;
  /** The node id that runs the partition, or null when none does. */
  owner: string | null;
  /** Events in the partition's stream not yet acknowledged by its owner. */
  lagMessages: number | null;
  /** Seconds since the owner last acknowledged a commit; null before the first. */
  checkpointAgeSeconds: number | null;
  ackedSeq: number | null;
  /** The partition's input stream: events held and their sequence range. */
  stream: { name: string; messages: number; firstSeq: number; lastSeq: number } | null;
}

export interface ClusterStatus {
  partitions: PartitionState[];
  nodes: string[];
}

export async function readStatus(nc: NatsConnection): Promise<ClusterStatus> {
  const jsm = await jetstreamManager(nc);
  const kvm = new Kvm(nc);
  const meta = await kvm.open(META_BUCKET).catch(() => null);
  const n = Number((await meta?.get('partitions'))?.string() ?? 0);
  const leases = await kvm.open(LEASES_BUCKET).catch(() => null);
  const nodesKv = await kvm.open(NODES_BUCKET).catch(() => null);
  const now = Date.now();
  const partitions = await Promise.all(
    Array.from({ length: n }, async (_, p): Promise<PartitionState> => {
      const name = inStream(p);
      const info = await jsm.streams.info(name).catch(() => null);
      // The lease names the owner; its consumer (named after the lease epoch) has the progress.
      const lease = await leases?.get(`p${p}`).catch(() => null);
      const owner = lease?.operation === 'PUT' ? lease.json<{ node: string }>().node : null;
      // The newest epoch's newest consumer, by name: a listing leaves out one whose leader is slow
      // to answer, and would show an older one's progress instead. Unknown when it does not answer.
      const names = await consumerNames(jsm, name).catch(() => [] as string[]);
      const newest = newestEpochConsumers(names, p).names.pop();
      const ci: ConsumerInfo | null = newest
        ? await jsm.consumers.info(name, newest).catch(() => null)
        : null;
      const last = ci?.ack_floor?.last_active ? Date.parse(String(ci.ack_floor.last_active)) : null;
      return {
        partition: p,
        owner,
        lagMessages: ci ? ci.num_pending + ci.num_ack_pending : null,
        checkpointAgeSeconds: last ? Math.max(0, (now - last) / 1000) : null,
        ackedSeq: ci ? ci.ack_floor.stream_seq : null,
        stream: info
          ? {
              name,
              messages: info.state.messages,
              firstSeq: info.state.first_seq,
              lastSeq: info.state.last_seq,
            }
          : null,
      };
    }),
  );
  const nodes = new Set(partitions.map((p) => p.owner).filter((o): o is string => o !== null));
  // Not `nodesKv.keys()`, which leaves a consumer behind on every call (kv-keys.ts).
  if (nodesKv) for (const k of await kvKeys(nodesKv)) nodes.add(k);
  return { partitions, nodes: [...nodes].sort() };
}

export function formatStatus(s: ClusterStatus): string {
  const lines = [`nodes: ${s.nodes.join(', ') || '(none)'}`];
  lines.push('partition  owner                 lag  checkpoint-age  events');
  for (const p of s.partitions) {
    const age = p.checkpointAgeSeconds === null ? '-' : `${p.checkpointAgeSeconds.toFixed(1)}s`;
    lines.push(
      `${String(p.partition).padStart(9)}  ${(p.owner ?? '(none)').padEnd(18)} ${String(p.lagMessages ?? '-').padStart(6)}  ${age.padStart(14)}  ${p.stream?.messages ?? '-'}`,
    );
  }
  return lines.join('\n');
}
