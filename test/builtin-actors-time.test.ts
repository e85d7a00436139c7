// The built-in seed actors on event time: the campaign's rollups and anomaly flag, the order's SLA.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import campaign from '../actors/campaign.js';
import order from '../actors/order.js';
import { actorsByType, applyBatch, type RawEvent } from '../runtime/batch.js';
import { newClock } from '../runtime/event-time.js';
import type { ActorDefinition } from '../runtime/types.js';

const enc = (v: unknown) => new Uint8Array(Buffer.from(JSON.stringify(v)));

function run(def: ActorDefinition, events: { type: string; key: string; data: Record<string, unknown> }[]) {
  const byType = actorsByType([{ def, name: def.name, guarantee: 'at-least-once', file: def.name }]);
  const raw: RawEvent[] = events.map((e, i) => ({
    seq: i + 1,
    type: e.type,
    key: e.key,
    data: enc(e.data),
    msgpack: false,
    publishMs: Number(e.data.ts),
    headers: null,
  }));
  return applyBatch(byType, raw, () => undefined, {
    partition: 0,
    partitions: 1,
    maxEventBytes: 10_000,
    maxAttempts: 1,
    now: 1,
    time: { clock: newClock(), wakes: () => [] },
  });
}

it('campaign: CTR per minute at 1m/5m/1h, and a click spike is flagged', () => {
  const t0 = Date.UTC(2026, 0, 1, 12, 0, 0);
  const events: { type: string; key: string; data: Record<string, unknown> }[] = [];
  for (let minute = 0; minute < 9; minute++) {
    const clicks = minute === 7 ? 40 : 5;
    for (let i = 0; i < 100; i++) {
      const ts = t0 + minute * 60_000 + i * 500;
      events.push({ type: 'impressions', key: 'c1', data: { ts, cost: 0.001 } });
      if (i < clicks) events.push({ type: 'clicks', key: 'c1', data: { ts: ts + 1 } });
    }
  }
  const out = run(campaign, events);
  const s = out.writes[0]!.record.s as {
    anomaly: { reason: string; at: number } | null;
    anomalies: number;
    rollups: { traffic: Record<string, { start: number; value: { traffic: { ctr: number } } }[]> };
  };
  const minutes = s.rollups.traffic['1m']!;
  assert.ok(minutes.length >= 7, 'closed minutes kept');
  const spike = minutes.find((m) => m.start === t0 + 7 * 60_000)!;
  assert.equal(spike.value.traffic.ctr, 0.4);
  assert.ok(s.rollups.traffic['5m']!.length >= 1, '5-minute rollup closed');
  assert.equal(s.anomalies, 1, 'one anomalous minute');
  // Every closed minute also went to PARTITA_AGG.
  const agg = out.emits.filter(([subject]) => subject === 'partita.agg.campaign.traffic@1m.c1');
  assert.ok(agg.length >= 7);
});

it('order: an order that does not ship within its SLA is flagged once and reported', () => {
  const t0 = Date.UTC(2026, 0, 1, 12, 0, 0);
  const out = run(order, [
    { type: 'orders', key: 'o1', data: { status: 'created', warehouse: 'w1', ts: t0, slaMs: 10_000 } },
    { type: 'orders', key: 'o2', data: { status: 'created', warehouse: 'w1', ts: t0 + 1000, slaMs: 10_000 } },
    { type: 'orders', key: 'o2', data: { status: 'shipped', ts: t0 + 5000 } },
    // Time passes in the partition: o1's SLA is due, o2 shipped in time.
    { type: 'orders', key: 'o3', data: { status: 'created', warehouse: 'w2', ts: t0 + 30_000 } },
  ]);
  const state = (key: string) => out.writes.find((w) => w.key === key)!.record.s as { slaBreached: boolean };
  assert.equal(state('o1').slaBreached, true);
  assert.equal(state('o2').slaBreached, false);
  assert.equal(state('o3').slaBreached, false);
  const breaches = out.emits.filter(
    ([subject, , json]) => subject === 'events.exceptions.w1' && json.includes('sla-breach'),
  );
  assert.equal(breaches.length, 1);
});
