// The keys of a KV bucket without a consumer. nats.js `kv.keys()` creates an ordered push consumer
// per call and never deletes it: the server removes it after its inactive threshold (5 min). Called
// every assignment round, that piled up thousands of consumers on `KV_partita_nodes`, and from
// nats-server 2.15, which limits every stream to 1000 consumers by default, each new consumer on
// the bucket (a restarted node's watch) was refused with 10026. Here the stream's leader lists the
// subjects that hold a message, and the last message of each says whether the key was deleted or
// expired.
import { Bucket, type KV } from '@nats-io/kv';

/**
 * The keys of `kv` matching `filter` (a key pattern, `*` and `>` as in `kv.keys()`) whose latest
 * entry is a value, not a delete or purge marker; sorted. Read on the stream's leader.
 */
export async function kvKeys(kv: KV, filter = '>'): Promise<string[]> {
  // Kvm.open and Kvm.create answer a Bucket; its manager is on the bucket's own connection.
  if (!(kv instanceof Bucket)) throw new TypeError('kvKeys needs a bucket opened with Kvm');
  const stream = kv.bucketName();
  const info = await kv.jsm.streams.info(stream, { subjects_filter: kv.subjectForKey(filter) });
  const subjects = Object.keys(info.state.subjects ?? {});
  const live = await Promise.all(
    subjects.map(async (subject) => {
      // Null when the entry expired since the listing.
      const m = await kv.jsm.streams.getMessage(stream, { last_by_subj: subject });
      const op = m?.header?.get('KV-Operation');
      // An expiry's delete marker (nats-server 2.11+, topology.ts) carries a reason, no operation.
      const gone = op === 'DEL' || op === 'PURGE' || m?.header?.has('Nats-Marker-Reason');
      return m && !gone ? kv.decodeKey(subject.slice(kv.prefixLen)) : undefined;
    }),
  );
  return live.filter((k): k is string => k !== undefined).sort();
}
