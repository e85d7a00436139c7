// Property: every window kind, fed out-of-order events under a bounded-out-of-orderness watermark
// with allowed lateness, ends with the same windows and figures as a brute-force computation over
// the events that were on time; late events are exactly those behind watermark − lateness; and
// nothing fires before the watermark reaches its end.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import fc from 'fast-check';
import { PERCENTILE_ALPHA } from '../runtime/aggregations.js';
import type { ActorEvent, WindowKind } from '../runtime/types.js';
import { advance, compileWindow, emptyWindowState, type Firing, feed, nextFire } from '../runtime/window.js';

interface Ev {
  t: number;
  v: number;
}

const AGGS = {
  count: 'count',
  sum: 'sum',
  min: 'min',
  max: 'max',
  mean: 'mean',
  distinct: 'distinct',
  p50: 'p50',
  p90: { percentile: 0.9 },
} as const;

function exact(vals: number[]) {
  const sorted = [...vals].sort((a, b) => a - b);
  const q = (p: number) => sorted[Math.floor(p * (sorted.length - 1))]!;
  return {
    count: vals.length,
    sum: vals.reduce((a, b) => a + b, 0),
    min: Math.min(...vals),
    max: Math.max(...vals),
    mean: vals.reduce((a, b) => a + b, 0) / vals.length,
    distinct: new Set(vals).size,
    p50: q(0.5),
    p90: q(0.9),
  };
}

function sameFigures(got: Firing, vals: number[], what: string) {
  const want = exact(vals);
  const v = got.value as Record<string, number>;
  assert.equal(got.count, want.count, `${what} count`);
  assert.equal(v.count, want.count, `${what} count agg`);
  assert.equal(v.sum, want.sum, `${what} sum`);
  assert.equal(v.min, want.min, `${what} min`);
  assert.equal(v.max, want.max, `${what} max`);
  assert.ok(Math.abs(v.mean! - want.mean) < 1e-9, `${what} mean`);
  assert.ok(Math.abs(v.distinct! - want.distinct) <= Math.max(1, want.distinct * 0.05), `${what} distinct`);
  for (const p of ['p50', 'p90'] as const) {
    const err = Math.abs(v[p]! - want[p]);
    assert.ok(err <= Math.abs(want[p]) * PERCENTILE_ALPHA + 1e-9, `${what} ${p}: ${v[p]} vs ${want[p]}`);
  }
}

/** Brute force: the windows of a kind over on-time events, as [start, end) → values. */
function reference(
  kind: WindowKind,
  size: number,
  hop: number,
  gap: number,
  events: Ev[],
): Map<string, number[]> {
  const out = new Map<string, number[]>();
  const put = (s: number, e: number, v: number) => {
    const k = `${s},${e}`;
    out.set(k, [...(out.get(k) ?? []), v]);
  };
  if (kind === 'session') {
    const sorted = [...events].sort((a, b) => a.t - b.t);
    let cur: Ev[] = [];
    const flush = () => {
      if (cur.length === 0) return;
      const s = cur[0]!.t;
      const e = cur[cur.length - 1]!.t + gap;
      for (const x of cur) put(s, e, x.v);
      cur = [];
    };
    for (const ev of sorted) {
      if (cur.length > 0 && ev.t >= cur[cur.length - 1]!.t + gap) flush();
      cur.push(ev);
    }
    flush();
    return out;
  }
  if (kind === 'sliding') {
    for (const te of new Set(events.map((e) => e.t))) {
      for (const ev of events) if (ev.t > te - size && ev.t <= te) put(te - size + 1, te + 1, ev.v);
    }
    return out;
  }
  // Tumbling and hopping, by scanning every window start that could hold an event.
  const step = kind === 'tumbling' ? size : hop;
  const ts = events.map((e) => e.t);
  if (ts.length === 0) return out;
  const lo = Math.floor((Math.min(...ts) - size) / step) * step;
  for (let s = lo; s <= Math.max(...ts); s += step) {
    for (const ev of events) if (ev.t >= s && ev.t < s + size) put(s, s + size, ev.v);
  }
  return out;
}

const scenario = fc.record({
  kind: fc.constantFrom<WindowKind>('tumbling', 'hopping', 'sliding', 'session'),
  size: fc.integer({ min: 1, max: 40 }),
  hopDiv: fc.integer({ min: 1, max: 4 }),
  gap: fc.integer({ min: 1, max: 25 }),
  lateness: fc.constantFrom(0, 0, 5, 20),
  bound: fc.constantFrom(0, 3, 10),
  events: fc.array(
    fc.record({ dt: fc.integer({ min: -30, max: 12 }), v: fc.integer({ min: -20, max: 100 }) }),
    { minLength: 1, maxLength: 80 },
  ),
});

it('windows equal a brute-force reference, with out-of-order and late events', () => {
  const seed = Number(process.env.PARTITA_TEST_SEED ?? Date.now() % 2 ** 31);
  console.log(`window property seed=${seed}`);
  fc.assert(
    fc.property(scenario, (sc) => {
      const hop = Math.max(1, Math.floor(sc.size / sc.hopDiv));
      const w = compileWindow('w', {
        kind: sc.kind,
        size: sc.size,
        hop,
        gap: sc.gap,
        allowedLateness: sc.lateness,
        aggregate: AGGS,
        value: (e: ActorEvent) => (e.data as Ev).v,
      });
      const st = emptyWindowState(w);
      // Event times drift forward with jitter, so some arrive out of order and some late.
      let clock = 1000;
      let maxT = Number.NEGATIVE_INFINITY;
      let wm = Number.NEGATIVE_INFINITY;
      const onTime: Ev[] = [];
      const late: Ev[] = [];
      const firings: { f: Firing; wm: number; arrival: number }[] = [];
      const arrivals: { ev: Ev; wm: number }[] = [];
      const step = (to: number, arrival: number) => {
        if (to <= wm) return;
        wm = to;
        const due = nextFire(st);
        const fired = advance(w, st, wm);
        if (fired.length > 0) assert.ok(due !== undefined && due <= wm, 'nextFire announced the firing');
        for (const f of fired) firings.push({ f, wm, arrival });
      };
      sc.events.forEach(({ dt, v }, i) => {
        clock += Math.max(0, dt + 8);
        const ev = { t: clock + Math.min(0, dt), v };
        const out = feed(w, st, ev.t, ev.v, wm);
        const shouldBeLate = ev.t < wm - sc.lateness;
        assert.equal(out === null, shouldBeLate, `event ${i} at ${ev.t}, watermark ${wm}: late?`);
        if (out === null) late.push(ev);
        else {
          onTime.push(ev);
          arrivals.push({ ev, wm });
          for (const f of out) firings.push({ f, wm, arrival: i });
        }
        maxT = Math.max(maxT, ev.t);
        step(maxT - sc.bound, i);
      });
      // Idle: the watermark passes everything, so every window fires and is dropped.
      step(maxT + 10_000, sc.events.length);
      assert.deepEqual(st, emptyWindowState(w), 'all window state dropped after the watermark passed');
      for (const { f, wm: at } of firings)
        assert.ok(f.end <= at, `window [${f.start},${f.end}) fired at ${at}`);

      const ref = reference(sc.kind, sc.size, hop, sc.gap, onTime);
      if (sc.kind === 'session') {
        for (const [k, vals] of ref) {
          const [s, e] = k.split(',').map(Number) as [number, number];
          const over = firings.filter(({ f }) => f.start < e && s < f.end);
          const last = over[over.length - 1];
          assert.ok(last, `session ${k} fired`);
          assert.deepEqual([last.f.start, last.f.end], [s, e], `session ${k} bounds`);
          sameFigures(last.f, vals, `session ${k}`);
        }
        return;
      }
      const byWindow = new Map<string, Firing[]>();
      for (const { f } of firings) {
        const k = `${f.start},${f.end}`;
        byWindow.set(k, [...(byWindow.get(k) ?? []), f]);
      }
      assert.deepEqual([...byWindow.keys()].sort(), [...ref.keys()].sort(), 'the windows that fired');
      for (const [k, vals] of ref) {
        const fs = byWindow.get(k)!;
        for (const [i, f] of fs.entries()) assert.equal(f.update, i, `window ${k} firing ${i} numbered`);
        sameFigures(fs[fs.length - 1]!, vals, `window ${k}`);
        if (sc.kind !== 'sliding') {
          const [s, e] = k.split(',').map(Number) as [number, number];
          const mine = arrivals.filter((a) => a.ev.t >= s && a.ev.t < e);
          const afterClose = mine.filter((a) => a.wm >= e).length;
          const byWatermark = mine.some((a) => a.wm < e) ? 1 : 0;
          assert.equal(
            fs.length,
            byWatermark + afterClose,
            `window ${k}: one firing per close and per update`,
          );
        }
      }
    }),
    { numRuns: 400, seed },
  );
});
