// Public answers carry the actor's state and the documented metadata only: no `sys` (open window
// accumulators, timers), no `partitionKeys`, no lineage ring, over GET, SSE, WebSocket and Feast,
// while the state bucket keeps them for the runtime. Against a real node running the built-in
// `warehouse` actor, whose hourly rollup keeps windows open.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { jetstream } from '@nats-io/jetstream';
import { type KV, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { pino } from 'pino';
import { WebSocket } from 'ws';
import { type RunningGateway, startGateway } from '../gateway/index.js';
import { PUBLIC_FIELDS } from '../gateway/public-state.js';
import { type PartitaNode, STATE_BUCKET, startNode } from '../runtime/index.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { openSse } from './helpers/sse.js';

const INTERNAL = ['sys', 'partitionKeys', 'lineage'];

/** Fails if a change has a field that is not public, or any nested key named as an internal one. */
function assertPublic(where: string, change: Record<string, unknown>): void {
  for (const k of Object.keys(change)) {
    assert.ok((PUBLIC_FIELDS as readonly string[]).includes(k), `${where}: field "${k}" is not public`);
  }
  assert.ok(change.state && typeof change.state === 'object', `${where}: a state`);
  assertNoInternalKeys(where, change);
}

function assertNoInternalKeys(path: string, v: unknown): void {
  if (v === null || typeof v !== 'object') return;
  for (const [k, x] of Object.entries(v)) {
    assert.ok(!INTERNAL.includes(k), `${path}.${k}`);
    assertNoInternalKeys(`${path}.${k}`, x);
  }
}

describe('gateway: public state carries no internals', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let kv: KV;
  let node: PartitaNode;
  let gw: RunningGateway;
  let seq = 0;
  const publish = async (n: number) => {
    const js = jetstream(nc);
    for (let i = 0; i < n; i++) {
      seq++;
      await js.publish(
        'events.exceptions.ams-1',
        JSON.stringify({ order: `ord-${seq}`, reason: seq % 2 ? 'late' : 'damaged', ts: Date.now() }),
      );
    }
  };
  /** The bucket entry once it holds `count` exceptions. */
  const stored = (count: number) =>
    check(
      async () => {
        const v = (await kv.get('warehouse.ams-1'))?.json<Record<string, unknown>>();
        return v && (v.state as { exceptions: number }).exceptions >= count ? v : undefined;
      },
      20_000,
      `ams-1 at ${count} exceptions`,
    );

  before(async () => {
    nats = await startTestNats({ partitions: 2 });
    nc = await nats.connect();
    kv = await new Kvm(nc).open(STATE_BUCKET);
    node = await startNode({
      natsUrl: nats.url,
      dataDir: join(nats.dir, 'node'),
      threads: 1,
      logger: pino({ level: 'silent' }),
    });
    gw = await startGateway({ natsUrl: nats.url, port: 0 });
    await publish(5);
    const entry = await stored(5);
    // The premise: the bucket carries what the runtime needs (open windows), the gateway must not.
    assert.ok(entry.sys, 'the bucket entry carries sys');
    assert.ok(entry.partitionKeys !== undefined, 'the bucket entry carries partitionKeys');
  });
  after(async () => {
    await gw?.stop();
    await node?.stop();
    await nc?.close();
    await nats?.stop();
  });

  it('GET /v1/actors/:actor/:key', async () => {
    const res = await fetch(`${gw.url}/v1/actors/warehouse/ams-1`);
    assert.equal(res.status, 200);
    const body = (await res.json()) as Record<string, unknown>;
    assertPublic('GET', body);
    assert.deepEqual(
      Object.keys(body).filter((k) => k !== 'cause'),
      ['actor', 'key', 'state', 'seq', 'updatedAt', 'partition', 'epoch'],
    );
    assert.equal((body.state as { exceptions: number }).exceptions >= 5, true);
  });

  it('SSE snapshot and changes', async () => {
    const sse = await openSse(`${gw.url}/v1/subscribe?actor=warehouse`);
    try {
      assert.equal(sse.status, 200);
      await check(() => sse.events.some((e) => e.event === 'ready'), 10_000, 'SSE ready');
      await publish(1);
      await check(() => sse.events.some((e) => e.event === 'changes'), 20_000, 'an SSE change');
      assert.ok(sse.events.some((e) => e.event === 'snapshot' && e.data.changes?.length));
      for (const e of sse.events)
        for (const c of e.data.changes ?? [])
          assertPublic(`SSE ${e.event}`, c as unknown as Record<string, unknown>);
    } finally {
      await sse.close();
    }
  });

  it('WebSocket snapshot and changes', async () => {
    const frames: { type: string; changes?: Record<string, unknown>[] }[] = [];
    const ws = new WebSocket(`${gw.url.replace('http', 'ws')}/v1/ws?actor=warehouse`);
    ws.on('message', (d) => frames.push(JSON.parse(String(d))));
    try {
      await check(() => frames.some((f) => f.type === 'ready'), 10_000, 'WebSocket ready');
      await publish(1);
      await check(() => frames.some((f) => f.type === 'changes'), 20_000, 'a WebSocket change');
      const types = new Set(frames.filter((f) => f.changes).map((f) => f.type));
      assert.deepEqual([...types].sort(), ['changes', 'snapshot']);
      for (const f of frames) for (const c of f.changes ?? []) assertPublic(`WebSocket ${f.type}`, c);
    } finally {
      ws.terminate();
    }
  });

  it('Feast answers', async () => {
    const res = await fetch(`${gw.url}/get-online-features`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        features: ['warehouse:exceptions', 'warehouse:byReason.late', 'warehouse:sys'],
        entities: { warehouse_id: ['ams-1'] },
      }),
    });
    assert.equal(res.status, 200);
    const body = (await res.json()) as { results: { values: unknown[]; statuses: string[] }[] };
    const [, exceptions, byReason, sys] = body.results;
    assert.equal(exceptions!.statuses[0], 'PRESENT');
    assert.equal(byReason!.statuses[0], 'PRESENT');
    // The key exists; sys is no field of its state.
    assert.deepEqual([sys!.values, sys!.statuses], [[null], ['NULL_VALUE']]);
    assertNoInternalKeys('Feast', body.results);
  });
});
