// Event time in the runtime: the partition clock (watermarks), the runtime-owned part of an actor's
// record (open windows, timers, wake-up times), and what happens when a key's windows or timers
// are due. `applyBatch` calls in here at a few points; everything is a function of the stream, so
// a replay from a checkpoint fires the same windows and timers with the same message ids.
//
// Determinism: the clock advances only with what the partition's stream holds — events' event
// times and publish times, and tick messages (`partita.in.<p>._tick.p<p>`) that the partition's
// owner publishes while the partition is idle. A firing commits in the same LMDB transaction as
// the removal of what fired, so it happens once; its emits carry ids made of the stream position.
import type { LoadedActor } from './actor-loader.js';
import type {
  ActorContext,
  ActorDefinition,
  ActorEvent,
  RollupSpec,
  Timer,
  Timers,
  WindowResult,
} from './types.js';
import {
  advance,
  type CompiledWindow,
  compileWindow,
  emptyWindowState,
  type Firing,
  feed,
  isEmpty,
  nextFire,
  parseDuration,
  type WindowState,
} from './window.js';

/** The type token of tick messages, which carry processing time into an idle partition's stream. */
export const TICK_TYPE = '_tick';
/** Late events' side output: `partita.late.<actor>.<key>` (stream PARTITA_LATE). */
export const LATE_PREFIX = 'partita.late';
/** Every window result: `partita.agg.<actor>.<window>.<key>` (stream PARTITA_AGG, aggregate retention). */
export const AGG_PREFIX = 'partita.agg';
export const DEFAULT_ROLLUPS = ['1m', '5m', '1h'] as const;
/** @default idle timeout of the watermark */
export const DEFAULT_IDLE_MS = 5000;

/** An actor's compiled event-time features. */
export interface TimeActor {
  readonly name: string;
  readonly windows: readonly CompiledWindow[];
  /** Bounded out-of-orderness, ms. */
  readonly bound: number;
  /** Idle timeout, ms. */
  readonly idle: number;
}

/**
 * A partition's clock, kept in its checkpoint (and, for restores, in each time-aware record):
 * `pt`, the newest publish time of anything in the stream (ticks too), and per actor
 * [newest event time, newest publish time of its events, watermark] over the event types it
 * consumes (another type's odd timestamps cannot move its watermark).
 */
export interface Clock {
  pt: number;
  a: Record<string, [number, number, number]>;
}

/** The runtime-owned part of a record: windows, timers [kind 0 event | 1 processing, time, data], wakes. */
export interface Sys {
  w?: Record<string, WindowState>;
  tm?: Record<string, [0 | 1, number, unknown]>;
  /** [event-time wake, processing-time wake]: what the wake index holds for this key. */
  k?: [number | null, number | null];
  c?: Clock;
}

const compiled = new WeakMap<ActorDefinition, TimeActor | null>();

/** The actor's event-time features, compiled once; undefined for an actor that uses none. Throws on a bad spec. */
export function timeFeaturesOf(def: ActorDefinition): TimeActor | undefined {
  const known = compiled.get(def);
  if (known !== undefined) return known ?? undefined;
  const windows: CompiledWindow[] = [];
  for (const [name, spec] of Object.entries(def.windows ?? {})) windows.push(compileWindow(name, spec));
  for (const [name, spec] of Object.entries(def.rollups ?? {}) as [string, RollupSpec][]) {
    for (const every of spec.every ?? DEFAULT_ROLLUPS) {
      const label = typeof every === 'number' ? `${every}ms` : every;
      windows.push(
        compileWindow(`${name}@${label}`, { ...spec, kind: 'tumbling', size: every }, { name, every: label }),
      );
    }
  }
  const bound = parseDuration(def.watermark?.maxOutOfOrder ?? 0, 'watermark.maxOutOfOrder');
  const idle = parseDuration(def.watermark?.idleTimeout ?? DEFAULT_IDLE_MS, 'watermark.idleTimeout');
  const uses = windows.length > 0 || typeof def.onTimer === 'function';
  const out = uses ? { name: def.name, windows, bound, idle } : null;
  compiled.set(def, out);
  return out ?? undefined;
}

export function newClock(): Clock {
  return { pt: 0, a: {} };
}

export function copyClock(c: Clock): Clock {
  const a: Clock['a'] = {};
  for (const [k, v] of Object.entries(c.a)) a[k] = [v[0], v[1], v[2]];
  return { pt: c.pt, a };
}

/**
 * Moves the clock over one stream message: an event with its event time, consumed by the actors
 * in `consumers`, or a tick (time undefined). An actor's watermark is its newest event time −
 * bound; once none of its events has come for `idle` of processing time, the watermark moves on
 * with processing time from there, so windows close when traffic stops.
 */
export function advanceClock(
  c: Clock,
  actors: readonly TimeActor[],
  consumers: ReadonlySet<string> | undefined,
  time: number | undefined,
  publishMs: number,
) {
  c.pt = Math.max(c.pt, publishMs);
  for (const a of actors) {
    let r = c.a[a.name];
    if (time !== undefined && consumers?.has(a.name)) {
      r ??= c.a[a.name] = [0, 0, Number.MIN_SAFE_INTEGER];
      r[0] = Math.max(r[0], Math.floor(time));
      r[1] = Math.max(r[1], publishMs);
    }
    if (!r) continue;
    const wm = r[0] - a.bound + Math.max(0, c.pt - r[1] - a.idle);
    if (wm > r[2]) r[2] = wm;
  }
}

export function watermarkOf(c: Clock, actor: string): number {
  return c.a[actor]?.[2] ?? Number.NEGATIVE_INFINITY;
}

/** The largest of each field: the clock of a partition restored from several records. */
export function maxClock(x: Clock | undefined, y: Clock | undefined): Clock | undefined {
  if (!x) return y;
  if (!y) return x;
  const out = copyClock(x);
  out.pt = Math.max(x.pt, y.pt);
  for (const [k, v] of Object.entries(y.a)) {
    const r = out.a[k];
    out.a[k] = r ? [Math.max(r[0], v[0]), Math.max(r[1], v[1]), Math.max(r[2], v[2])] : [v[0], v[1], v[2]];
  }
  return out;
}

/** The wake-up times a record's sys implies (what the index must hold for it). */
export function wakesOf(t: TimeActor, sys: Sys): [number | null, number | null] {
  let ev: number | null = null;
  let pt: number | null = null;
  for (const w of t.windows) {
    const st = sys.w?.[w.name];
    const f = st && nextFire(st);
    if (f !== undefined && (ev === null || f < ev)) ev = f;
  }
  for (const [kind, time] of Object.values(sys.tm ?? {})) {
    if (kind === 0 && (ev === null || time < ev)) ev = time;
    if (kind === 1 && (pt === null || time < pt)) pt = time;
  }
  return [ev, pt];
}

/** What an event or a firing produced, before it is committed. */
export interface TimeOutputs {
  /** [subject, msgId, json], in order. */
  emits: [string, string, string][];
  /** The event was late for at least one window that wanted it. */
  late: boolean;
}

/** Everything a handler-like call needs from the batch. */
export interface TimeCall {
  readonly actor: LoadedActor;
  readonly time: TimeActor;
  readonly key: string;
  readonly clock: Clock;
  state: unknown;
  sys: Sys;
  /** Stream position the call belongs to (for message ids). */
  readonly seq: number;
  /** Collect emits (false while rebuilding a state after a failed attempt). */
  readonly collect: boolean;
}

function timersOf(call: TimeCall): Timers {
  const tm = () => {
    call.sys.tm ??= {};
    return call.sys.tm;
  };
  return {
    at(name, time, data) {
      if (!Number.isFinite(time)) throw new Error(`timer "${name}": time must be a number (epoch ms)`);
      tm()[name] = [0, Math.floor(time), data ?? null];
    },
    after(name, delay, data) {
      tm()[name] = [1, call.clock.pt + parseDuration(delay, `timer "${name}" delay`), data ?? null];
    },
    cancel(name) {
      if (call.sys.tm) delete call.sys.tm[name];
    },
    get(name) {
      const t = call.sys.tm?.[name];
      return t
        ? { name, time: t[1], kind: t[0] === 0 ? 'event' : 'processing', data: t[2] ?? undefined }
        : undefined;
    },
  };
}

/** The context of a handler, onTimer or onWindow call of a time-aware actor. */
export function timeContext(
  call: TimeCall,
  now: number,
  late: boolean,
  emit: (type: string, key: string, data: unknown) => void,
): ActorContext {
  return {
    key: call.key,
    actor: call.actor.name,
    now: () => now,
    emit,
    timers: timersOf(call),
    watermark: () => watermarkOf(call.clock, call.actor.name),
    processingTime: () => call.clock.pt,
    late,
  };
}

const noTimers: Timers = {
  at() {
    throw new Error('timers need an onTimer handler in the actor definition');
  },
  after() {
    throw new Error('timers need an onTimer handler in the actor definition');
  },
  cancel() {},
  get: () => undefined,
};

const PLAIN_TIME_FIELDS: Pick<ActorContext, 'timers' | 'watermark' | 'processingTime' | 'late'> =
  Object.freeze({
    timers: noTimers,
    watermark: () => Number.NEGATIVE_INFINITY,
    processingTime: () => Number.NEGATIVE_INFINITY,
    late: false,
  });

/** The extra context fields of an actor that uses no event-time feature (one shared object). */
export function plainTimeFields(): Pick<ActorContext, 'timers' | 'watermark' | 'processingTime' | 'late'> {
  return PLAIN_TIME_FIELDS;
}

function resultOf(w: CompiledWindow, key: string, f: Firing): WindowResult {
  return {
    window: w.name,
    kind: w.kind,
    key,
    start: f.start,
    end: f.end,
    count: f.count,
    value: f.value,
    update: f.update,
  };
}

/** Hands window results to onWindow, or keeps them in the state; emits them. */
function deliver(call: TimeCall, w: CompiledWindow, firings: Firing[], out: TimeOutputs, idPrefix: string) {
  const def = call.actor.def;
  const wm = watermarkOf(call.clock, call.actor.name);
  for (const f of firings) {
    const result = resultOf(w, call.key, f);
    const emit = (type: string, key: string, data: unknown) => {
      if (call.collect)
        out.emits.push([`events.${type}.${key}`, `${idPrefix}${out.emits.length}`, JSON.stringify(data)]);
    };
    if (call.collect) {
      const json = JSON.stringify(result);
      out.emits.push([
        `${AGG_PREFIX}.${call.actor.name}.${w.name}.${call.key}`,
        `${idPrefix}${out.emits.length}`,
        json,
      ]);
      if (w.emit) out.emits.push([`events.${w.emit}.${call.key}`, `${idPrefix}${out.emits.length}`, json]);
    }
    keepResult(call.state, w, result, wm);
    if (typeof def.onWindow === 'function') {
      const next = def.onWindow(call.state, result, timeContext(call, f.end - 1, false, emit));
      if (next !== undefined) call.state = next;
    }
  }
}

/** A result as kept in the state: where it is kept already says its window, kind and key. */
export type KeptResult = Pick<WindowResult, 'start' | 'end' | 'count' | 'value' | 'update'>;

/** Default home of results: `state.windows[name]` or `state.rollups[name][every]`, newest last. */
function keepResult(state: unknown, w: CompiledWindow, full: WindowResult, wm: number) {
  if (!state || typeof state !== 'object' || Array.isArray(state) || w.keep <= 0) return;
  const r: KeptResult = {
    start: full.start,
    end: full.end,
    count: full.count,
    value: full.value,
    update: full.update,
  };
  const s = state as Record<string, Record<string, unknown>>;
  let list: KeptResult[];
  if (w.rollup) {
    s.rollups ??= {};
    s.rollups[w.rollup.name] ??= {};
    const byEvery = s.rollups[w.rollup.name] as Record<string, KeptResult[]>;
    byEvery[w.rollup.every] ??= [];
    list = byEvery[w.rollup.every]!;
  } else {
    s.windows ??= {};
    s.windows[w.name] ??= [];
    list = s.windows[w.name] as KeptResult[];
  }
  const same = list.findIndex((x) => x.start === r.start && x.end === r.end);
  if (same >= 0) list.splice(same, 1);
  // A session that grew replaces the shorter session it absorbed.
  if (w.kind === 'session') {
    for (let i = list.length - 1; i >= 0; i--)
      if (list[i]!.start < r.end && r.start < list[i]!.end) list.splice(i, 1);
  }
  let i = list.length;
  while (i > 0 && list[i - 1]!.end > r.end) i--;
  list.splice(i, 0, r);
  while (list.length > w.keep) list.shift();
  // Retention: results whose end is further behind the watermark than `retention` leave.
  while (list.length > 0 && list[0]!.end + w.retention < wm) list.shift();
}

/**
 * Before the handler runs on an event: feeds the actor's windows. Returns whether the event was
 * late; late events go to the side output (when collecting).
 */
export function feedWindows(call: TimeCall, event: ActorEvent, out: TimeOutputs, idPrefix: string): boolean {
  const wm = watermarkOf(call.clock, call.actor.name);
  let late = false;
  for (const w of call.time.windows) {
    const v = w.value(event);
    if (v === undefined) continue;
    call.sys.w ??= {};
    call.sys.w[w.name] ??= emptyWindowState(w);
    const st = call.sys.w[w.name]!;
    const fired = feed(w, st, event.time, v, wm);
    if (fired === null) late = true;
    else if (fired.length > 0) deliver(call, w, fired, out, idPrefix);
    if (isEmpty(st)) delete call.sys.w[w.name];
  }
  if (late && call.collect) {
    out.late = true;
    out.emits.push([
      `${LATE_PREFIX}.${call.actor.name}.${call.key}`,
      `late:${call.actor.name}:${event.seq}`,
      JSON.stringify({
        type: event.type,
        key: event.key,
        seq: event.seq,
        time: event.time,
        watermark: wm,
        data: event.data,
      }),
    ]);
  }
  return late;
}

/** Fires what is due for one key at the clock's watermark and processing time. */
export function fireDue(call: TimeCall, out: TimeOutputs, idPrefix: string, callbacks: boolean): void {
  const wm = watermarkOf(call.clock, call.actor.name);
  for (const w of call.time.windows) {
    const st = call.sys.w?.[w.name];
    if (!st) continue;
    const fired = advance(w, st, wm);
    if (fired.length > 0 && callbacks) deliver(call, w, fired, out, idPrefix);
    if (isEmpty(st)) delete call.sys.w![w.name];
  }
  const due = Object.entries(call.sys.tm ?? {})
    .filter(([, [kind, time]]) => (kind === 0 ? time <= wm : time <= call.clock.pt))
    .sort((a, b) => a[1][1] - b[1][1] || (a[0] < b[0] ? -1 : 1));
  for (const [name, [kind, time, data]] of due) {
    // Removed before the call: the handler may set the same name again.
    delete call.sys.tm![name];
    if (!callbacks || typeof call.actor.def.onTimer !== 'function') continue;
    const timer: Timer = { name, time, kind: kind === 0 ? 'event' : 'processing', data: data ?? undefined };
    const emit = (type: string, key: string, d: unknown) => {
      if (call.collect)
        out.emits.push([`events.${type}.${key}`, `${idPrefix}${out.emits.length}`, JSON.stringify(d)]);
    };
    const next = call.actor.def.onTimer(call.state, timer, timeContext(call, time, false, emit));
    if (next !== undefined) call.state = next;
  }
  if (call.sys.tm && Object.keys(call.sys.tm).length === 0) delete call.sys.tm;
}

/** The wake index as the batch sees it: (actor, kind, from, to] → [time, key], ascending. */
export type WakeReader = (
  actor: string,
  kind: 0 | 1,
  after: number,
  upTo: number,
  limit?: number,
) => Iterable<[number, string]>;

/** Options of applyBatch for event time. */
export interface TimeOptions {
  /** The partition clock at the checkpoint; mutated as the batch runs. */
  clock: Clock;
  wakes: WakeReader;
}

/** The LMDB key of a wake index entry. */
export function wakeKey(
  partition: number,
  actor: string,
  kind: 0 | 1,
  time: number,
  key: string,
): (string | number)[] {
  return [kind === 0 ? 'wk' : 'wp', partition, actor, time, key];
}

/** An actor instance of the batch, as the event-time code sees it. */
export interface TimedEntry {
  readonly actor: LoadedActor;
  readonly key: string;
  readonly time: TimeActor | undefined;
  sys: Sys;
}

/**
 * The event-time side of one batch: the clock, and which keys are due when it moves. Keys the
 * batch has touched are judged by their in-memory state; the others by the wake index in LMDB.
 */
export class BatchTime {
  readonly clock: Clock;
  readonly actors: TimeActor[];
  /** Per event type, the time-aware actors that consume it. */
  private readonly consumers = new Map<string, Set<string>>();
  private readonly touched = new Map<string, Map<string, TimedEntry>>();
  /** Per actor: index read up to (event time, processing time), and lower bounds of the next due. */
  private readonly marks = new Map<string, { e: number; p: number; nextE: number; nextP: number }>();

  constructor(
    private readonly opts: TimeOptions,
    byType: ReadonlyMap<string, readonly LoadedActor[]>,
  ) {
    this.clock = opts.clock;
    const seen = new Map<string, TimeActor>();
    for (const [type, list] of byType) {
      for (const a of list) {
        const t = timeFeaturesOf(a.def);
        if (!t) continue;
        seen.set(a.name, t);
        let set = this.consumers.get(type);
        if (!set) {
          set = new Set();
          this.consumers.set(type, set);
        }
        set.add(a.name);
      }
    }
    this.actors = [...seen.values()];
    for (const a of this.actors) {
      this.marks.set(a.name, {
        e: Number.NEGATIVE_INFINITY,
        p: Number.NEGATIVE_INFINITY,
        nextE: this.peek(a.name, 0, Number.NEGATIVE_INFINITY),
        nextP: this.peek(a.name, 1, Number.NEGATIVE_INFINITY),
      });
    }
  }

  private peek(actor: string, kind: 0 | 1, after: number): number {
    const [first] = this.opts.wakes(actor, kind, after, Number.POSITIVE_INFINITY, 1);
    return first ? first[0] : Number.POSITIVE_INFINITY;
  }

  advance(type: string | undefined, time: number | undefined, publishMs: number): void {
    advanceClock(
      this.clock,
      this.actors,
      type === undefined ? undefined : this.consumers.get(type),
      time,
      publishMs,
    );
  }

  /** After a call changed an entry's sys: it is now judged from memory. */
  touch(e: TimedEntry): void {
    if (!e.time) return;
    let m = this.touched.get(e.actor.name);
    if (!m) {
      m = new Map();
      this.touched.set(e.actor.name, m);
    }
    m.set(e.key, e);
    const [ev, pt] = wakesOf(e.time, e.sys);
    const mark = this.marks.get(e.actor.name)!;
    if (ev !== null && ev < mark.nextE) mark.nextE = ev;
    if (pt !== null && pt < mark.nextP) mark.nextP = pt;
  }

  /** The keys due at the clock now, per actor, ordered by wake time then key. */
  due(): { actor: string; key: string }[] {
    const out: { actor: string; key: string }[] = [];
    for (const a of this.actors) {
      const mark = this.marks.get(a.name)!;
      const wm = watermarkOf(this.clock, a.name);
      const pt = this.clock.pt;
      if (wm < mark.nextE && pt < mark.nextP) continue;
      const touched = this.touched.get(a.name);
      const due = new Map<string, number>();
      const add = (key: string, t: number) => due.set(key, Math.min(due.get(key) ?? t, t));
      for (const [kind, upTo] of [
        [0, wm],
        [1, pt],
      ] as const) {
        const from = kind === 0 ? mark.e : mark.p;
        if (upTo <= from) continue;
        for (const [t, key] of this.opts.wakes(a.name, kind, from, upTo)) if (!touched?.has(key)) add(key, t);
        if (kind === 0) mark.e = upTo;
        else mark.p = upTo;
      }
      let nextE = this.peek(a.name, 0, mark.e);
      let nextP = this.peek(a.name, 1, mark.p);
      for (const e of touched?.values() ?? []) {
        const [ev, p] = wakesOf(a, e.sys);
        if (ev !== null && ev <= wm) add(e.key, ev);
        else if (ev !== null && ev < nextE) nextE = ev;
        if (p !== null && p <= pt) add(e.key, p);
        else if (p !== null && p < nextP) nextP = p;
      }
      mark.nextE = nextE;
      mark.nextP = nextP;
      const keys = [...due.entries()].sort((x, y) => x[1] - y[1] || (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
      for (const [key] of keys) out.push({ actor: a.name, key });
    }
    return out;
  }
}
