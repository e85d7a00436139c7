// Property: with windows and timers, a run crashed after any batch and resumed from its
// checkpoint ends with the same states, wake index, clock and outputs (by message id) as one
// uninterrupted run, whatever the batch boundaries; and every window and timer fires once.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import fc from 'fast-check';
import type { LoadedActor } from '../runtime/actor-loader.js';
import { type ApplyOptions, actorsByType, applyBatch, type RawEvent } from '../runtime/batch.js';
import { type Clock, newClock, TICK_TYPE, wakeKey } from '../runtime/event-time.js';
import type { StateRecord } from '../runtime/state-store.js';
import clicks from './fixtures/time-actors/clicks.js';

const actors: LoadedActor[] = [{ def: clicks, name: 'clicks', guarantee: 'exactly-once', file: 'clicks' }];
const byType = actorsByType(actors);

interface World {
  store: Map<string, string>;
  index: Set<string>;
  clock: Clock;
  emits: Map<string, string>;
}

const empty = (): World => ({ store: new Map(), index: new Set(), clock: newClock(), emits: new Map() });

function run(world: World, events: RawEvent[], cuts: number[], stopAfter = Number.POSITIVE_INFINITY): number {
  let cp = 0;
  const bounds = [...new Set([0, ...cuts.filter((c) => c > 0 && c < events.length), events.length])].sort(
    (a, b) => a - b,
  );
  for (let b = 0; b + 1 < bounds.length; b++) {
    const batch = events.slice(bounds[b], bounds[b + 1]);
    const load = (actor: string, key: string) => {
      const s = world.store.get(`${actor}/${key}`);
      return s === undefined ? undefined : (JSON.parse(s) as StateRecord);
    };
    const opts: ApplyOptions = {
      partition: 0,
      partitions: 1,
      maxEventBytes: 1000,
      maxAttempts: 2,
      now: 1,
      time: {
        clock: JSON.parse(JSON.stringify(world.clock)) as Clock,
        *wakes(actor, kind, after, upTo) {
          const hits = [...world.index]
            .map((k) => JSON.parse(k) as [string, number, string, number, string])
            .filter(
              (k) => k[0] === (kind === 0 ? 'wk' : 'wp') && k[2] === actor && k[3] > after && k[3] <= upTo,
            )
            .sort((x, y) => x[3] - y[3] || (x[4] < y[4] ? -1 : 1));
          for (const k of hits) yield [k[3], k[4]];
        },
      },
    };
    const out = applyBatch(byType, batch, load, opts);
    if (b >= stopAfter) break;
    for (const w of out.writes) world.store.set(`${w.actor}/${w.key}`, JSON.stringify(w.record));
    for (const [actor, key, old, now] of out.wakes) {
      for (const kind of [0, 1] as const) {
        const o = old?.[kind] ?? null;
        const n = now?.[kind] ?? null;
        if (o === n) continue;
        if (o !== null) world.index.delete(JSON.stringify(wakeKey(0, actor, kind, o, key)));
        if (n !== null) world.index.add(JSON.stringify(wakeKey(0, actor, kind, n, key)));
      }
    }
    for (const [subject, id, json] of out.emits) {
      const prev = world.emits.get(id);
      if (prev !== undefined)
        assert.equal(prev, `${subject} ${json}`, `message id ${id} reused for other content`);
      world.emits.set(id, `${subject} ${json}`);
    }
    world.clock = out.clock!;
    cp = out.lastSeq;
  }
  return cp;
}

const enc = (v: unknown) => new Uint8Array(Buffer.from(JSON.stringify(v)));

const specArb = fc.array(
  fc.oneof(
    {
      weight: 6,
      arbitrary: fc.record({
        tick: fc.constant(false),
        key: fc.integer({ min: 0, max: 3 }),
        dt: fc.integer({ min: -12, max: 8 }),
        v: fc.integer({ min: 0, max: 9 }),
        timer: fc.boolean(),
        ptimer: fc.boolean(),
      }),
    },
    { weight: 1, arbitrary: fc.record({ tick: fc.constant(true), gap: fc.integer({ min: 0, max: 3000 }) }) },
  ),
  { minLength: 1, maxLength: 60 },
);

function toRaw(
  specs: ReadonlyArray<{
    tick: boolean;
    key?: number;
    dt?: number;
    v?: number;
    timer?: boolean;
    ptimer?: boolean;
    gap?: number;
  }>,
): RawEvent[] {
  let t = 10_000;
  let pub = 1_000_000;
  return specs.map((s, i) => {
    const seq = i + 1;
    if (s.tick) {
      pub += s.gap!;
      return {
        seq,
        type: TICK_TYPE,
        key: 'p0',
        data: new Uint8Array(),
        msgpack: false,
        publishMs: pub,
        headers: null,
      };
    }
    t += 3;
    pub += 3;
    const data = { ts: t + s.dt!, v: s.v, timer: s.timer, ptimer: s.ptimer };
    return {
      seq,
      type: 'clk',
      key: `c${s.key}`,
      data: enc(data),
      msgpack: false,
      publishMs: pub,
      headers: null,
    };
  });
}

it('windows and timers: replay from any checkpoint equals one uninterrupted run', () => {
  const seed = Number(process.env.PARTITA_TEST_SEED ?? Date.now() % 2 ** 31);
  console.log(`event-time replay property seed=${seed}`);
  fc.assert(
    fc.property(
      specArb,
      fc.array(fc.nat(60), { maxLength: 10 }),
      fc.nat(12),
      fc.array(fc.nat(60), { maxLength: 10 }),
      (specs, cuts1, crashAfter, cuts2) => {
        const events = toRaw(specs);
        const straight = empty();
        run(straight, events, cuts1);
        const crashed = empty();
        const cp = run(crashed, events, cuts1, crashAfter);
        run(
          crashed,
          events.slice(cp),
          cuts2.map((c) => c - cp),
        );
        assert.deepEqual([...crashed.store.entries()].sort(), [...straight.store.entries()].sort());
        assert.deepEqual([...crashed.index].sort(), [...straight.index].sort());
        assert.deepEqual(crashed.clock, straight.clock);
        assert.deepEqual([...crashed.emits.entries()].sort(), [...straight.emits.entries()].sort());
        // Each timer setting fired once.
        for (const [k, v] of straight.store) {
          const fired = (JSON.parse(v) as StateRecord & { s: { fired: string[] } }).s.fired;
          assert.equal(new Set(fired).size, fired.length, `${k}: a timer fired twice`);
        }
        // The index holds exactly the wakes the records announce.
        const announced = new Set<string>();
        for (const [k, v] of straight.store) {
          const rec = JSON.parse(v) as StateRecord & { x?: { k?: [number | null, number | null] } };
          const [actor, key] = k.split('/') as [string, string];
          rec.x?.k?.forEach((t, kind) => {
            if (t !== null) announced.add(JSON.stringify(wakeKey(0, actor, kind as 0 | 1, t, key)));
          });
        }
        assert.deepEqual([...announced].sort(), [...straight.index].sort());
      },
    ),
    { numRuns: 300, seed },
  );
});
