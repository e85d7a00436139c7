// Window state machines over event time: tumbling, hopping, sliding and session windows. Pure
// functions over JSON state (it lives in the actor's record); the runtime feeds events and
// watermarks in stream order, so the same stream always yields the same results.
//
// Conventions (integer epoch ms): a window is [start, end). The watermark W says events before W
// have arrived; an event at t is late when t < W − allowedLateness, and then feeds nothing. A
// window fires when W ≥ end, and again (update n) for each on-time event that reaches it after
// that; it is dropped once W ≥ end + allowedLateness, when no on-time event can reach it any more.
import { type Aggregation, compileAggregation } from './aggregations.js';
import type { ActorEvent, AggregationSpec, Duration, WindowKind, WindowSpec } from './types.js';

export interface CompiledWindow {
  readonly name: string;
  readonly kind: WindowKind;
  readonly size: number;
  readonly hop: number;
  readonly gap: number;
  readonly lateness: number;
  readonly aggs: readonly Aggregation[];
  readonly value: (event: ActorEvent) => unknown;
  readonly emit: string | undefined;
  readonly keep: number;
  readonly retention: number;
  /** Set for the windows a rollup compiles to: the rollup's name and granularity label. */
  readonly rollup?: { readonly name: string; readonly every: string };
}

/** A fired or open window's figures, before the runtime names it. */
export interface Firing {
  start: number;
  end: number;
  count: number;
  value: Record<string, unknown>;
  update: number;
}

/**
 * A pane: one window of a tumbling/hopping/session state. `f` counts its firings so far; `w` is 1
 * while its content waits for the watermark (new, or a session that a merge made longer).
 */
interface Pane {
  s: number;
  e: number;
  n: number;
  a: unknown[];
  f: number;
  w: 0 | 1;
}

/** Tumbling, hopping, session: panes sorted by start. Sliding: a buffer and its window ends. */
export type WindowState =
  | { p: Pane[] }
  | {
      /** [time, value] of on-time events, by time. */
      b: [number, unknown][];
      /** Event times whose window has not fired, ascending. */
      o: number[];
      /** Fired window ends (event times) → firings so far. */
      f: Record<string, number>;
    };

const UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 7 * 86_400_000,
  y: 365 * 86_400_000,
};

/** Milliseconds of a Duration (`250`, `'500ms'`, `'30s'`, `'5m'`, `'1h'`, `'2d'`, `'1w'`, `'1y'`). */
export function parseDuration(d: Duration, what = 'duration'): number {
  if (typeof d === 'number') {
    if (Number.isFinite(d) && d >= 0) return Math.floor(d);
  } else {
    const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w|y)$/.exec(d.trim());
    if (m) return Math.floor(Number(m[1]) * UNITS[m[2]!]!);
  }
  throw new Error(`${what}: "${String(d)}" is not a duration (a number of ms, or like '30s', '5m', '1h')`);
}

const one = () => 1;
const TOKEN = /^[^.*>\s]+$/;

export function compileWindow(
  name: string,
  spec: WindowSpec,
  rollup?: CompiledWindow['rollup'],
): CompiledWindow {
  // The name and `emit` become subject tokens (partita.agg.<actor>.<window>.<key>, events.<emit>.<key>).
  if (!TOKEN.test(name)) throw new Error(`window "${name}": the name must be a single subject token`);
  if (spec.emit !== undefined && !TOKEN.test(spec.emit))
    throw new Error(`window "${name}": \`emit\` must be a single subject token`);
  const kinds: WindowKind[] = ['tumbling', 'hopping', 'sliding', 'session'];
  if (!kinds.includes(spec.kind))
    throw new Error(`window "${name}": kind must be one of ${kinds.join(', ')}`);
  const need = (v: Duration | undefined, what: string) => {
    if (v === undefined) throw new Error(`window "${name}": a ${spec.kind} window needs \`${what}\``);
    const ms = parseDuration(v, `window "${name}" ${what}`);
    if (ms <= 0) throw new Error(`window "${name}": \`${what}\` must be positive`);
    return ms;
  };
  const size = spec.kind === 'session' ? 0 : need(spec.size, 'size');
  const hop = spec.kind === 'hopping' ? need(spec.hop, 'hop') : size;
  const gap = spec.kind === 'session' ? need(spec.gap, 'gap') : 0;
  const aggregate: Record<string, AggregationSpec> = spec.aggregate ?? { count: 'count' };
  const aggs = Object.entries(aggregate).map(([n, a]) => compileAggregation(n, a));
  if (aggs.length === 0) throw new Error(`window "${name}": \`aggregate\` names no aggregation`);
  if (spec.kind === 'session') for (const a of aggs) probeMerge(a, name);
  if (spec.value !== undefined && typeof spec.value !== 'function')
    throw new Error(`window "${name}": \`value\` must be a function of the event`);
  return {
    name,
    kind: spec.kind,
    size,
    hop,
    gap,
    lateness: parseDuration(spec.allowedLateness ?? 0, `window "${name}" allowedLateness`),
    aggs,
    value: (spec.value as CompiledWindow['value'] | undefined) ?? one,
    emit: spec.emit,
    keep: spec.keep ?? 10,
    retention: spec.retention === undefined ? Number.POSITIVE_INFINITY : parseDuration(spec.retention),
    rollup,
  };
}

function probeMerge(a: Aggregation, window: string) {
  try {
    a.merge(a.init(), a.init());
  } catch (err) {
    throw new Error(`window "${window}": ${(err as Error).message}`);
  }
}

export function emptyWindowState(w: CompiledWindow): WindowState {
  return w.kind === 'sliding' ? { b: [], o: [], f: {} } : { p: [] };
}

type Sliding = Extract<WindowState, { b: unknown }>;
type Panes = Extract<WindowState, { p: unknown }>;

function results(w: CompiledWindow, accs: unknown[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  w.aggs.forEach((a, i) => {
    out[a.name] = a.result(accs[i]);
  });
  return out;
}

function fire(w: CompiledWindow, p: Pane): Firing {
  p.w = 0;
  return { start: p.s, end: p.e, count: p.n, value: results(w, p.a), update: p.f++ };
}

/** The windows [start, end) that an event at `t` belongs to (tumbling, hopping). */
function assign(w: CompiledWindow, t: number): [number, number][] {
  if (w.kind === 'tumbling') {
    const s = Math.floor(t / w.size) * w.size;
    return [[s, s + w.size]];
  }
  const out: [number, number][] = [];
  for (let k = Math.floor((t - w.size) / w.hop) + 1; k * w.hop <= t; k++)
    out.push([k * w.hop, k * w.hop + w.size]);
  return out;
}

/** Is an event at `t` late for this window under watermark `wm`? */
export function isLate(w: CompiledWindow, t: number, wm: number): boolean {
  return Math.floor(t) < wm - w.lateness;
}

/**
 * Feeds one on-time-or-late event. Returns null when the event is late (it feeds nothing), else
 * the updates it causes to windows that already fired (or that are complete already).
 */
export function feed(
  w: CompiledWindow,
  st: WindowState,
  time: number,
  value: unknown,
  wm: number,
): Firing[] | null {
  const t = Math.floor(time);
  if (isLate(w, t, wm)) return null;
  if ('b' in st) return feedSliding(w, st, t, value, wm);
  const out: Firing[] = [];
  if (w.kind === 'session') {
    let merged: Pane = { s: t, e: t + w.gap, n: 1, a: w.aggs.map((a) => a.add(a.init(), value)), f: 0, w: 1 };
    const keep: Pane[] = [];
    for (const p of st.p) {
      if (p.s < merged.e && merged.s < p.e) {
        merged = {
          s: Math.min(p.s, merged.s),
          e: Math.max(p.e, merged.e),
          n: p.n + merged.n,
          a: w.aggs.map((a, i) => a.merge(p.a[i], merged.a[i])),
          f: Math.max(p.f, merged.f),
          w: 1,
        };
      } else keep.push(p);
    }
    insertPane(keep, merged);
    st.p = keep;
    if (merged.e <= wm) out.push(fire(w, merged));
    return out;
  }
  for (const [s, e] of assign(w, t)) {
    let p = st.p.find((x) => x.s === s);
    if (!p) {
      p = { s, e, n: 0, a: w.aggs.map((a) => a.init()), f: 0, w: 1 };
      insertPane(st.p, p);
    }
    p.n++;
    // In place: this runs for every event and window.
    for (let i = 0; i < w.aggs.length; i++) p.a[i] = w.aggs[i]!.add(p.a[i], value);
    if (e <= wm) out.push(fire(w, p));
  }
  return out;
}

function insertPane(ps: Pane[], p: Pane) {
  let i = ps.length;
  while (i > 0 && ps[i - 1]!.s > p.s) i--;
  ps.splice(i, 0, p);
}

function slidingAt(w: CompiledWindow, st: Sliding, te: number, update: number): Firing {
  const accs = w.aggs.map((a) => a.init());
  let n = 0;
  for (const [t, v] of st.b) {
    if (t <= te - w.size) continue;
    if (t > te) break;
    n++;
    for (let i = 0; i < w.aggs.length; i++) accs[i] = w.aggs[i]!.add(accs[i], v);
  }
  return { start: te - w.size + 1, end: te + 1, count: n, value: results(w, accs), update };
}

function feedSliding(w: CompiledWindow, st: Sliding, t: number, value: unknown, wm: number): Firing[] {
  let i = st.b.length;
  while (i > 0 && st.b[i - 1]![0] > t) i--;
  st.b.splice(i, 0, [t, value]);
  const out: Firing[] = [];
  const key = String(t);
  if (st.f[key] === undefined && !st.o.includes(t)) {
    if (t + 1 <= wm) st.f[key] = 0;
    else {
      let j = st.o.length;
      while (j > 0 && st.o[j - 1]! > t) j--;
      st.o.splice(j, 0, t);
    }
  }
  // Every fired window that now holds the event gets an update: ends in [t, t + size).
  const ends = Object.keys(st.f)
    .map(Number)
    .filter((te) => te >= t && te < t + w.size)
    .sort((a, b) => a - b);
  for (const te of ends) {
    const f = st.f[String(te)]!;
    out.push(slidingAt(w, st, te, f));
    st.f[String(te)] = f + 1;
  }
  return out;
}

/** Fires the windows the watermark completed and drops those no on-time event can reach. */
export function advance(w: CompiledWindow, st: WindowState, wm: number): Firing[] {
  const out: Firing[] = [];
  if ('b' in st) {
    while (st.o.length > 0 && st.o[0]! + 1 <= wm) {
      const te = st.o.shift()!;
      out.push(slidingAt(w, st, te, 0));
      st.f[String(te)] = 1;
    }
    for (const k of Object.keys(st.f)) if (Number(k) + 1 + w.lateness <= wm) delete st.f[k];
    let drop = 0;
    while (drop < st.b.length && st.b[drop]![0] + w.size + w.lateness <= wm) drop++;
    if (drop > 0) st.b.splice(0, drop);
    return out;
  }
  const due = st.p.filter((p) => p.w === 1 && p.e <= wm).sort((a, b) => a.e - b.e || a.s - b.s);
  for (const p of due) out.push(fire(w, p));
  st.p = st.p.filter((p) => p.e + w.lateness > wm);
  return out;
}

/** The watermark at which `advance` fires something next; undefined when nothing is open. */
export function nextFire(st: WindowState): number | undefined {
  if ('b' in st) return st.o.length > 0 ? st.o[0]! + 1 : undefined;
  let min: number | undefined;
  for (const p of (st as Panes).p) if (p.w === 1 && (min === undefined || p.e < min)) min = p.e;
  return min;
}

/** Whether the state holds anything (an empty state is dropped from the record). */
export function isEmpty(st: WindowState): boolean {
  return 'b' in st
    ? st.b.length === 0 && st.o.length === 0 && Object.keys(st.f).length === 0
    : st.p.length === 0;
}
