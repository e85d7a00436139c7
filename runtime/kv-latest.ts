// Reads a KV entry from its stream's leader. Buckets allow direct gets, which any replica answers,
// and a follower still catching up (a NATS server that just restarted) answers with an old value:
// fine for a dashboard, wrong where a decision or a verdict depends on the latest value.
import type { JetStreamManager } from '@nats-io/jetstream';

export interface KvLatest {
  revision: number;
  json<T>(): T;
}

/** The latest value of `key` in `bucket`, or undefined if none (or deleted). */
export async function readKvLatest(
  jsm: JetStreamManager,
  bucket: string,
  key: string,
): Promise<KvLatest | undefined> {
  // nats.js answers null for "no message found"; anything else (a timeout, no leader) throws.
  const m = await jsm.streams.getMessage(`KV_${bucket}`, { last_by_subj: `$KV.${bucket}.${key}` });
  const op = m?.header?.get('KV-Operation');
  if (!m || op === 'DEL' || op === 'PURGE' || m.data.length === 0) return undefined;
  const found = m;
  return { revision: found.seq, json: <T>() => found.json<T>() };
}
