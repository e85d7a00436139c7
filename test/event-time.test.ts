// Event time in applyBatch: specs checked at load, the late side output, timers without onTimer,
// and ticks that close an idle partition's windows.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { validateActor } from '../runtime/actor-loader.js';
import { actorsByType, applyBatch, type RawEvent } from '../runtime/batch.js';
import { LATE_PREFIX, newClock, TICK_TYPE } from '../runtime/event-time.js';
import { defineActor, PartitaError } from '../runtime/index.js';

const base = { name: 'w', events: ['e'], initial: () => ({}), handle() {} };

it('rejects bad window, rollup and watermark specs at load', () => {
  const bad = [
    { windows: { x: { kind: 'tumbling' } } },
    { windows: { x: { kind: 'hopping', size: '1m' } } },
    { windows: { x: { kind: 'weekly', size: '1m' } } },
    { windows: { 'a.b': { kind: 'tumbling', size: '1m' } } },
    { windows: { x: { kind: 'tumbling', size: '1m', aggregate: { q: 'median' } } } },
    {
      windows: {
        x: { kind: 'session', gap: '1m', aggregate: { r: { init: () => 0, add: (a: number) => a + 1 } } },
      },
    },
    { rollups: { r: { every: ['5 minutes'] } } },
    { watermark: { maxOutOfOrder: 'soon' } },
  ];
  for (const extra of bad) {
    assert.throws(
      () => validateActor({ ...base, ...extra }, 'w.ts'),
      (e: unknown) => e instanceof PartitaError && e.code === 'PARTITA_ERR_ACTOR_INVALID',
      JSON.stringify(extra),
    );
  }
  validateActor({ ...base, windows: { x: { kind: 'sliding', size: 5000 } }, rollups: { r: {} } }, 'w.ts');
});

const enc = (v: unknown) => new Uint8Array(Buffer.from(JSON.stringify(v)));
const ev = (seq: number, ts: number, type = 'e', key = 'k'): RawEvent => ({
  seq,
  type,
  key,
  data: enc({ ts }),
  msgpack: false,
  publishMs: 1_000_000 + seq,
  headers: null,
});

function apply(def: ReturnType<typeof defineActor>, events: RawEvent[], maxAttempts = 1) {
  const byType = actorsByType([{ def, name: def.name, guarantee: 'exactly-once', file: def.name }]);
  return applyBatch(byType, events, () => undefined, {
    partition: 0,
    partitions: 1,
    maxEventBytes: 1000,
    maxAttempts,
    now: 1,
    time: { clock: newClock(), wakes: () => [] },
  });
}

it('sends late events to the side output, counts them, and still runs the handler', () => {
  const seen: boolean[] = [];
  const def = defineActor<{ n: number }>({
    name: 'lat',
    events: ['e'],
    windows: { t: { kind: 'tumbling', size: 10, allowedLateness: 5 } },
    initial: () => ({ n: 0 }),
    handle(state, _event, ctx) {
      state.n++;
      seen.push(ctx.late);
    },
  });
  // Watermark 100 after the first event: 96 and 97 are within the lateness, 94 is not.
  const out = apply(def, [ev(1, 100), ev(2, 96), ev(3, 94), ev(4, 97)]);
  assert.deepEqual(seen, [false, false, true, false]);
  assert.deepEqual(out.late, { lat: 1 });
  const late = out.emits.filter(([subject]) => subject.startsWith(`${LATE_PREFIX}.`));
  assert.equal(late.length, 1);
  assert.equal(late[0]![0], 'partita.late.lat.k');
  assert.equal(late[0]![1], 'late:lat:3');
  assert.deepEqual(JSON.parse(late[0]![2]), {
    type: 'e',
    key: 'k',
    seq: 3,
    time: 94,
    watermark: 100,
    data: { ts: 94 },
  });
  // 96 reaches the already complete window [90, 100), which fires at once; 97 updates it.
  const updates = out.emits.filter(([s]) => s === 'partita.agg.lat.t.k').map(([, , j]) => JSON.parse(j));
  assert.deepEqual(
    updates.map((r) => [r.start, r.count, r.update]),
    [
      [90, 1, 0],
      [90, 2, 1],
    ],
  );
  assert.equal((out.writes[0]!.record.s as { n: number }).n, 4);
});

it('a timer without onTimer is a handler error (dead letter), not a silent no-op', () => {
  const def = defineActor({
    name: 'nt',
    events: ['e'],
    initial: () => ({}),
    handle(_s, _e, ctx) {
      ctx.timers.at('x', 1);
    },
  });
  const out = apply(def, [ev(1, 100)]);
  assert.equal(out.dead.length, 1);
  assert.equal(out.dead[0]!.code, 'PARTITA_ERR_HANDLER');
  assert.match(out.dead[0]!.message, /onTimer/);
});

it('ticks move an idle partition past its windows (idle timeout)', () => {
  const def = defineActor({
    name: 'idle',
    events: ['e'],
    watermark: { idleTimeout: 1000 },
    windows: { t: { kind: 'tumbling', size: 60_000 } },
    initial: () => ({}),
    handle() {},
  });
  const tick = (seq: number, publishMs: number): RawEvent => ({
    seq,
    type: TICK_TYPE,
    key: 'p0',
    data: new Uint8Array(),
    msgpack: false,
    publishMs,
    headers: null,
  });
  // One event at t = 10 s (published at 1,000,001 ms); then only ticks. The window [0, 60 s) closes
  // once processing time is 1 s (idle) + 50 s past the event's publish time.
  const results = (events: RawEvent[]) =>
    apply(def, events).emits.filter(([s]) => s.startsWith('partita.agg.'));
  assert.equal(results([ev(1, 10_000), tick(2, 1_000_001 + 50_999)]).length, 0);
  const closed = results([ev(1, 10_000), tick(2, 1_000_001 + 51_000)]);
  assert.equal(closed.length, 1);
  assert.equal(closed[0]![1], 'pt:idle:2:t:k:0', 'the firing is named by the tick that caused it');
});

it('a late event whose handler needs a retry is counted and sent once', () => {
  let throws = 1;
  const def = defineActor({
    name: 'retry',
    events: ['e'],
    windows: { t: { kind: 'tumbling', size: 10 } },
    initial: () => ({}),
    handle(_s, _e, ctx) {
      if (ctx.late && throws-- > 0) throw new Error('once');
    },
  });
  const out = apply(def, [ev(1, 100), ev(2, 50)], 2);
  assert.deepEqual(out.late, { retry: 1 });
  assert.equal(out.emits.filter(([s]) => s.startsWith(`${LATE_PREFIX}.`)).length, 1);
  assert.equal(out.dead.length, 0);
});
