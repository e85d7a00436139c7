// Reads through the gateway come from the partition's owner (partita.query.<partition>), so they
// are never behind a committed change; the state bucket answers only the keys no owner answers.
// Against a real nats-server, a real node running the fixture `account` actor and a real gateway.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type KV, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { pino } from 'pino';
import { type RunningGateway, STATE_SOURCE_HEADER, startGateway } from '../gateway/index.js';
import { publicChange } from '../gateway/public-state.js';
import {
  MAX_QUERY_KEYS,
  type PartitaNode,
  partitionOf,
  queryStates,
  querySubject,
  STATE_BUCKET,
  scanStates,
  startNode,
  stateKvKey,
} from '../runtime/index.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { openSse } from './helpers/sse.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));
const PARTITIONS = 4;
/**
 * Keys with events, and how many events each gets (so each key's final state is known); one needs
 * escaping in the bucket, and is hashed to its partition from its UTF-8 bytes.
 */
const KEYS = [...Array.from({ length: 11 }, (_, i) => `acct-${i}`), 'zürich=1'];
const eventsOf = (i: number) => 3 + i;

/** A metric's value on a Prometheus text page (0 when absent). */
function metricValue(text: string, name: string, labels: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.split(' ').pop()) : 0;
}

describe('gateway: state reads from the partition owner', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let kv: KV;
  let node: PartitaNode;
  let gw: RunningGateway;
  /** The bucket's entries once every key is settled, as stored (JSON text). */
  const settled = new Map<string, string>();

  const gatewayReads = async () => {
    const text = await (await fetch(`${gw.url}/metrics`)).text();
    return {
      owner: metricValue(text, 'partita_gateway_state_reads_total', 'source="owner"'),
      export: metricValue(text, 'partita_gateway_state_reads_total', 'source="export"'),
    };
  };
  const features = (keys: string[], fields = ['count', 'total']) =>
    fetch(`${gw.url}/get-online-features`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ features: fields.map((f) => `account:${f}`), entities: { account_id: keys } }),
    });

  /** The node (the same data dir each time), once it owns every partition. */
  const startOwner = async () => {
    node = await startNode({
      natsUrl: nats.url,
      actorsDir: FIXTURE_ACTORS,
      dataDir: join(nats.dir, 'node'),
      threads: 1,
      logger: pino({ level: 'silent' }),
    });
    await check(() => node.owned().length === PARTITIONS, 20_000, 'the node to own every partition');
  };

  before(async () => {
    nats = await startTestNats({ partitions: PARTITIONS });
    nc = await nats.connect();
    kv = await new Kvm(nc).open(STATE_BUCKET);
    await startOwner();
    gw = await startGateway({ natsUrl: nats.url, port: 0 });
    let id = 0;
    KEYS.forEach((key, i) => {
      for (let n = 0; n < eventsOf(i); n++)
        nc.publish(`events.tx.${key}`, JSON.stringify({ id: id++, amount: i + 1 }));
    });
    await nc.flush();
    // Publishing settled: the bucket holds every key's last state.
    await check(
      async () => {
        for (const [i, key] of KEYS.entries()) {
          const e = await kv.get(stateKvKey('account', key));
          if (e?.operation !== 'PUT' || e.json<{ state: { count: number } }>().state.count !== eventsOf(i))
            return false;
          settled.set(key, e.string());
        }
        return true;
      },
      30_000,
      'every key stored in the bucket',
    );
  });
  after(async () => {
    await gw?.stop();
    await node?.stop();
    await nc?.close();
    await nats?.stop();
  });

  it("answers from the owner, equal to the bucket's entry of the same key", async () => {
    const before = await gatewayReads();
    for (const [i, key] of KEYS.entries()) {
      const res = await fetch(`${gw.url}/v1/actors/account/${encodeURIComponent(key)}`);
      assert.equal(res.status, 200, key);
      assert.equal(res.headers.get(STATE_SOURCE_HEADER), 'owner', key);
      // Byte for byte what the bucket's entry gives (the public form of it).
      assert.equal(await res.text(), publicChange(settled.get(key)!)!.json, key);
      assert.equal(JSON.parse(settled.get(key)!).state.count, eventsOf(i));
    }
    // The owner's own answer is the bucket's entry: the same fields in the same order. Only
    // `partitionKeys` may differ (the partition's count now, not after the key's last batch).
    for (const key of KEYS) {
      const [got] = await queryStates(nc, partitionOf(key, PARTITIONS), [['account', key]], 2000);
      const stored = JSON.parse(settled.get(key)!) as Record<string, unknown>;
      assert.ok(got);
      assert.deepEqual(Object.keys(got), Object.keys(stored), key);
      assert.equal(typeof got.partitionKeys, 'number');
      assert.deepEqual({ ...got, partitionKeys: 0 }, { ...stored, partitionKeys: 0 }, key);
    }
    // Feast: every key × two fields, and one key without state, in one request.
    const res = await features([...KEYS, 'nobody']);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get(STATE_SOURCE_HEADER), 'owner');
    const body = (await res.json()) as {
      results: { values: unknown[]; statuses: string[]; event_timestamps: string[] }[];
    };
    const [, count, total] = body.results;
    for (const [i, key] of KEYS.entries()) {
      const stored = JSON.parse(settled.get(key)!) as {
        state: { count: number; total: number };
        updatedAt: string;
      };
      assert.equal(count!.values[i], stored.state.count, key);
      assert.equal(total!.values[i], stored.state.total, key);
      assert.equal(Date.parse(count!.event_timestamps[i]!), Date.parse(stored.updatedAt), key);
      assert.equal(count!.statuses[i], 'PRESENT');
    }
    assert.equal(count!.statuses[KEYS.length], 'NOT_FOUND');
    const after = await gatewayReads();
    // 12 state reads, then 13 keys for one actor in the feature request.
    assert.equal(after.owner - before.owner, KEYS.length + KEYS.length + 1);
    assert.equal(after.export - before.export, 0);
  });

  it('serves a committed state the bucket does not hold', async () => {
    const key = KEYS[5]!;
    await kv.purge(stateKvKey('account', key));
    const e = await kv.get(stateKvKey('account', key));
    assert.notEqual(e?.operation, 'PUT', 'the bucket no longer holds the key');
    const res = await fetch(`${gw.url}/v1/actors/account/${encodeURIComponent(key)}`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get(STATE_SOURCE_HEADER), 'owner');
    assert.equal(await res.text(), publicChange(settled.get(key)!)!.json);
    const feast = await features([key]);
    assert.equal(feast.headers.get(STATE_SOURCE_HEADER), 'owner');
    const body = (await feast.json()) as { results: { values: unknown[]; statuses: string[] }[] };
    assert.deepEqual(body.results[1]!.values, [eventsOf(5)]);
    assert.deepEqual(body.results[1]!.statuses, ['PRESENT']);
  });

  it('refuses a query over the key limit with a clear error, and counts it', async () => {
    const p = 1;
    const keysOf = (n: number) => {
      const out: [string, string][] = [];
      for (let i = 0; out.length < n; i++)
        if (partitionOf(`k-${i}`, PARTITIONS) === p) out.push(['account', `k-${i}`]);
      return out;
    };
    const tooLarge = () =>
      node.metrics.registry
        .getSingleMetric('partita_state_queries_total')!
        .get()
        .then((m) => m.values.find((v) => v.labels.result === 'too_large')?.value ?? 0);
    const refusedBefore = await tooLarge();
    const msg = await nc.request(querySubject(p), JSON.stringify(keysOf(MAX_QUERY_KEYS + 1)), {
      timeout: 5000,
    });
    assert.equal(msg.headers?.get('Partita-Error-Code'), 'PARTITA_ERR_QUERY_TOO_LARGE');
    assert.match(msg.headers?.get('Partita-Error') ?? '', /1001 keys in one query, at most 1000/);
    assert.equal(msg.data.length, 0);
    assert.equal(await tooLarge(), refusedBefore + 1);
    await assert.rejects(
      queryStates(nc, p, keysOf(MAX_QUERY_KEYS + 1), 5000),
      (err: Error & { code?: string }) => err.code === 'PARTITA_ERR_QUERY_TOO_LARGE',
    );
    // At the limit, an answer per key (none of these has state).
    const answers = await queryStates(nc, p, keysOf(MAX_QUERY_KEYS), 5000);
    assert.equal(answers.length, MAX_QUERY_KEYS);
    assert.ok(answers.every((a) => a === null));
    // Not a query, and a key of another partition: bad requests.
    const bad = await nc.request(querySubject(p), '{"account":"k"}', { timeout: 5000 });
    assert.equal(bad.headers?.get('Partita-Error-Code'), 'PARTITA_ERR_BAD_REQUEST');
    const other = KEYS.find((k) => partitionOf(k, PARTITIONS) !== p)!;
    const wrong = await nc.request(querySubject(p), JSON.stringify([['account', other]]), { timeout: 5000 });
    assert.equal(wrong.headers?.get('Partita-Error-Code'), 'PARTITA_ERR_BAD_REQUEST');
    assert.match(wrong.headers?.get('Partita-Error') ?? '', /is not in partition 1/);
    // The gateway splits a feature request into queries within the limit: 5,000 entities, over
    // 1,000 of them in one partition, all answered by owners.
    const many = Array.from({ length: 5000 }, (_, i) => `k-${i}`);
    const share = many.filter((k) => partitionOf(k, PARTITIONS) === p).length;
    assert.ok(share > MAX_QUERY_KEYS, `${share} keys in partition ${p}`);
    const res = await features([...many, KEYS[0]!], ['count']);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get(STATE_SOURCE_HEADER), 'owner');
    const body = (await res.json()) as { results: { values: unknown[]; statuses: string[] }[] };
    assert.equal(body.results[1]!.statuses.filter((s) => s === 'NOT_FOUND').length, many.length);
    assert.equal(body.results[1]!.values[many.length], eventsOf(0));
  });

  it("scans an owner's states a page at a time, and refuses a malformed scan", async () => {
    const seen = new Map<string, Record<string, unknown>>();
    let pages = 0;
    for (let p = 0; p < PARTITIONS; p++) {
      let after: [string, string] | undefined;
      for (;;) {
        const page = await scanStates(
          nc,
          p,
          { actor: 'account', limit: 2, ...(after ? { after } : {}) },
          5000,
        );
        pages++;
        assert.ok(page.changes.length <= 2);
        for (const c of page.changes) {
          assert.equal(partitionOf(c.key as string, PARTITIONS), p, `${c.key} scanned in its partition`);
          assert.ok(!seen.has(c.key as string), `${c.key} once`);
          seen.set(c.key as string, c);
        }
        if (page.next === null) break;
        after = page.next;
      }
    }
    assert.deepEqual([...seen.keys()].sort(), [...KEYS].sort());
    assert.ok(pages > PARTITIONS, `${pages} pages of two`);
    for (const [i, key] of KEYS.entries()) {
      const c = seen.get(key) as { state: { count: number }; seq: number };
      assert.equal(c.state.count, eventsOf(i), key);
      assert.equal(c.seq, JSON.parse(settled.get(key)!).seq, key);
    }
    // Another actor's scan finds nothing of this one; a scan of every actor finds the same keys.
    const none = await scanStates(nc, 0, { actor: 'warehouse' }, 5000);
    assert.deepEqual(none, { changes: [], next: null });
    const accounts: string[] = [];
    for (let p = 0; p < PARTITIONS; p++)
      for (const c of (await scanStates(nc, p, {}, 5000)).changes) {
        assert.equal(partitionOf(c.key as string, PARTITIONS), p);
        if (c.actor === 'account') accounts.push(c.key as string);
      }
    assert.deepEqual(accounts.sort(), [...KEYS].sort());
    for (const scan of [
      { limit: 0 },
      { limit: MAX_QUERY_KEYS + 1 },
      { after: ['account'] },
      { actor: 7 },
      [],
    ]) {
      const msg = await nc.request(querySubject(0), JSON.stringify({ scan }), { timeout: 5000 });
      assert.equal(msg.headers?.get('Partita-Error-Code'), 'PARTITA_ERR_BAD_REQUEST', JSON.stringify(scan));
      assert.match(msg.headers?.get('Partita-Error') ?? '', /scan/);
    }
  });

  it("starts a push subscription from the owners' states, the bucket only where no owner answers", async () => {
    // KEYS[5] was purged from the bucket above: only its owner still has it.
    const snapshotKeys = async () => {
      const sse = await openSse(`${gw.url}/v1/subscribe?actor=account`);
      try {
        await check(() => sse.events.some((e) => e.event === 'ready'), 10_000, 'SSE ready');
        return sse.events
          .filter((e) => e.event === 'snapshot')
          .flatMap((e) => e.data.changes ?? [])
          .map((c) => c.key)
          .sort();
      } finally {
        await sse.close();
      }
    };
    assert.deepEqual(await snapshotKeys(), [...KEYS].sort(), 'every committed state, from the owner');
    await node.stop();
    try {
      assert.deepEqual(
        await snapshotKeys(),
        KEYS.filter((k) => k !== KEYS[5]).sort(),
        'without an owner, what the bucket holds',
      );
    } finally {
      await startOwner();
    }
  });

  it('falls back to the bucket when no node runs, and counts both sources', async () => {
    const before = await gatewayReads();
    await node.stop();
    const key = KEYS[3]!;
    const res = await fetch(`${gw.url}/v1/actors/account/${encodeURIComponent(key)}`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get(STATE_SOURCE_HEADER), 'export');
    assert.equal(await res.text(), publicChange(settled.get(key)!)!.json);
    // The key purged from the bucket above: without its owner, nobody has it.
    const gone = await fetch(`${gw.url}/v1/actors/account/${KEYS[5]}`);
    assert.equal(gone.status, 404);
    assert.equal(gone.headers.get(STATE_SOURCE_HEADER), 'export');
    const feast = await features(KEYS);
    assert.equal(feast.headers.get(STATE_SOURCE_HEADER), 'export');
    const body = (await feast.json()) as { results: { statuses: string[] }[] };
    assert.deepEqual(
      body.results[1]!.statuses,
      KEYS.map((_, i) => (i === 5 ? 'NOT_FOUND' : 'PRESENT')),
    );
    const after = await gatewayReads();
    assert.equal(after.export - before.export, 2 + KEYS.length);
    assert.equal(after.owner - before.owner, 0);
    assert.ok(after.owner > 0, 'owner reads counted by the earlier tests');
  });
});
