// The keys of a KV bucket without a consumer. nats.js `kv.keys()` creates an ordered push consumer
// per call and never deletes it: the server removes it after its inactive threshold (5 min). Called
// every assignment round, that piled up thousands of consumers on `KV_partita_nodes`, and from
// nats-server 2.15, which limits every stream to 1000 consumers by default, each new consumer on
// the bucket (a restarted node's watch) was refused with 10026. Here the stream's leader lists the
// subjects that hold a message, and the last message of each says whether the key was deleted.
import type { JetStreamManager } from '@nats-io/jetstream';

/** The keys of `bucket` whose latest entry is a value (not a delete or purge marker), sorted. */
export async function kvKeys(jsm: JetStreamManager, bucket: string): Promise<string[]> {
  const prefix = `$KV.${bucket}.`;
  const info = await jsm.streams.info(`KV_${bucket}`, { subjects_filter: `${prefix}>` });
  const subjects = Object.keys(info.state.subjects ?? {});
  const live = await Promise.all(
    subjects.map(async (subject) => {
      // Null when the entry expired since the listing.
      const m = await jsm.streams.getMessage(`KV_${bucket}`, { last_by_subj: subject });
      const op = m?.header?.get('KV-Operation');
      return m && op !== 'DEL' && op !== 'PURGE' ? subject.slice(prefix.length) : undefined;
    }),
  );
  return live.filter((k): k is string => k !== undefined).sort();
}
