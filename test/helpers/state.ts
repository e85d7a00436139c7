// Writes states into the state bucket as a node's commit does, for gateway tests.
import type { KV } from '@nats-io/kv';
import { stateKvKey } from '../../runtime/index.js';

/** The record a commit puts (and the bucket republishes on partita.state.<actor>.<key>). */
export async function commitState(
  kv: KV,
  actor: string,
  key: string,
  state: unknown,
  seq: number,
  updatedAt = new Date(),
): Promise<void> {
  await kv.put(
    stateKvKey(actor, key),
    JSON.stringify({ actor, key, state, seq, updatedAt: updatedAt.toISOString(), partition: 0, epoch: 1 }),
  );
}
