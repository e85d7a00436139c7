// The consumers of a stream by name, for the decisions that must see every one of them.
import type { JetStreamManager } from '@nats-io/jetstream';
import { consumerPrefix } from './subjects.js';

/**
 * The names of every consumer of `stream`, from the JetStream meta layer's assignments
 * (`CONSUMER.NAMES`): complete even while a consumer has no leader. (`CONSUMER.LIST` answers with
 * the consumers whose leaders replied within 4 s, and nats.js drops the server's list of the
 * missing ones.)
 */
export async function consumerNames(jsm: JetStreamManager, stream: string): Promise<string[]> {
  // nats.js has no call for it; its manager's request helper checks the API response.
  const api = jsm as unknown as {
    prefix: string;
    _request(subject: string, data?: unknown): Promise<unknown>;
  };
  const names: string[] = [];
  for (;;) {
    const page = (await api._request(`${api.prefix}.CONSUMER.NAMES.${stream}`, { offset: names.length })) as {
      consumers: string[] | null;
      total: number;
    };
    const got = page.consumers ?? [];
    names.push(...got);
    if (got.length === 0 || names.length >= page.total) return names;
  }
}

/**
 * A partition's consumers of the newest lease epoch among `names`, oldest serial first, and that
 * epoch (-1 when there is none). Partition consumers are named `<prefix><epoch>[-r<serial>]`
 * (consumerName in partition-runner.ts).
 */
export function newestEpochConsumers(
  names: readonly string[],
  partition: number,
): { epoch: number; names: string[] } {
  const prefix = consumerPrefix(partition);
  let epoch = -1;
  let newest: { name: string; serial: number }[] = [];
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const [e, serial] = name.slice(prefix.length).split('-r');
    const n = Number.parseInt(e ?? '', 10) || 0;
    if (n > epoch) {
      epoch = n;
      newest = [];
    }
    if (n === epoch) newest.push({ name, serial: Number(serial ?? 0) || 0 });
  }
  return { epoch, names: newest.sort((a, b) => a.serial - b.serial).map((c) => c.name) };
}
