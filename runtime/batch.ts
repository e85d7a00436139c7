// Applies one batch of a partition's events to its actors. Pure apart from `load`: the worker
// supplies LMDB reads, the property tests an in-memory map.
import { unpack } from 'msgpackr';
import type { LoadedActor } from './actor-loader.js';
import type { ErrorCode } from './errors.js';
import {
  BatchTime,
  type Clock,
  copyClock,
  feedWindows,
  fireDue,
  plainTimeFields,
  type Sys,
  TICK_TYPE,
  type TimeActor,
  type TimeCall,
  type TimeOptions,
  timeContext,
  timeFeaturesOf,
  wakesOf,
} from './event-time.js';
import type { Govern } from './governance.js';
import { nextLineage } from './lineage.js';
import type { Outbox, StateRecord } from './state-store.js';
import { keyTooLong, MAX_KEY_BYTES, partitionOf } from './subjects.js';
import type { ActorContext, ActorEvent } from './types.js';

/** An input event as the main thread hands it to a worker. */
export interface RawEvent {
  seq: number;
  type: string;
  key: string;
  data: Uint8Array;
  /** Payload is msgpack (`Content-Type: application/msgpack`). */
  msgpack: boolean;
  /** JetStream publish time, epoch ms. */
  publishMs: number;
  headers: Record<string, string> | null;
  /** Set when the stored subject is not `partita.in.<p>.<type>.<key>` (published there directly). */
  badSubject?: string;
}

export interface ApplyOptions {
  partition: number;
  partitions: number;
  /** Larger payloads are dead-lettered. */
  maxEventBytes: number;
  /** Attempts per event and actor before a throwing handler's event is dead-lettered. */
  maxAttempts: number;
  /** Commit time stamped on the records. */
  now: number;
  /** Schema validation and PII masking of decoded payloads (governance.ts); none: pass as is. */
  govern?: Govern;
  /** Event time (watermarks, windows, timers); without it, ticks are skipped and no actor is timed. */
  time?: TimeOptions;
  /**
   * Largest state change, in bytes (the JSON that goes out, `sys` and metadata included): a step
   * after which a key's change would be larger is dead-lettered (`PARTITA_ERR_STATE_TOO_LARGE`).
   * None: unchecked.
   */
  maxStateBytes?: number;
  /** Largest emitted payload, in bytes (`PARTITA_ERR_OUTPUT_REFUSED` above). None: unchecked. */
  maxEmitBytes?: number;
  /**
   * Called before every call into actor code (`initial`, `handle`, `onTimer`, `onWindow`), with
   * the event's sequence (a firing's stream position), the actor and key: the worker's watchdog
   * record (see handler-watchdog.ts).
   */
  onCall?: (seq: number, actor: string, key: string, fire: boolean) => void;
  /** Calls not to make again (they ran past the time limit, or their worker died): dead-lettered. */
  poisoned?: readonly Poison[];
}

/** One call into actor code: an event for an actor (`fire` false), or a key's firing at `seq`. */
export interface CallSite {
  seq: number;
  actor: string;
  key: string;
  fire: boolean;
}

/** A call the batch must not make again, and the dead letter it gets instead. */
export interface Poison extends CallSite {
  code: ErrorCode;
  /** Why, naming the key (the dead letter's message is `<actor>: <reason>`). */
  reason: string;
}

export interface DeadLetter {
  seq: number;
  code: ErrorCode;
  message: string;
  actor: string | null;
}

export interface ApplyOutput {
  /** The records to write, keyed by [actor, key]. */
  /** `json` is the state as JSON, as it goes out on `partita.state.*`. */
  writes: {
    actor: string;
    key: string;
    record: StateRecord;
    created: boolean;
    json: string;
    sysJson?: string;
  }[];
  emits: Outbox['emits'];
  dead: DeadLetter[];
  /** Events applied to at least one actor. */
  applied: number;
  lastSeq: number;
  /** Per actor, events late for its windows (sent to the side output). */
  late: Record<string, number>;
  /** Index changes for time-aware records: [actor, key, old wakes, new wakes]. */
  wakes: [string, string, Sys['k'], Sys['k']][];
  /** The partition clock after the batch (when `time` was given). */
  clock?: Clock;
}

export const EVENT_TIME_HEADER = 'Partita-Event-Time';

interface Entry {
  actor: LoadedActor;
  key: string;
  /** The committed record this batch started from, if any (its state object is mutated in place). */
  base: StateRecord | undefined;
  state: unknown;
  seq: number;
  /** Events applied in this batch, in order, for a rebuild after a throwing handler. */
  applied: Step[];
  changed: boolean;
  /** Event-time features of the actor, if it uses any. */
  time: TimeActor | undefined;
  /** Runtime-owned part of the record: windows, timers, wakes. */
  sys: Sys;
  /** The partition clock after this key's last step (a function of the stream, not of batch cuts). */
  clock?: Clock;
}

/** An event (with the clock it saw), or a firing of what was due at a stream position. */
type Step = { ev: ActorEvent; clock?: Clock } | { fire: number; clock: Clock; callbacks: boolean };

function decode(ev: RawEvent): unknown {
  if (ev.msgpack) return unpack(ev.data);
  return JSON.parse(Buffer.from(ev.data.buffer, ev.data.byteOffset, ev.data.byteLength).toString('utf8'));
}

function eventTime(ev: RawEvent, data: unknown): number {
  const h = ev.headers?.[EVENT_TIME_HEADER];
  if (h !== undefined) {
    const t = Number(h);
    if (Number.isFinite(t)) return t;
  }
  const ts = (data as { ts?: unknown } | null)?.ts;
  if (typeof ts === 'number' && Number.isFinite(ts)) return ts;
  return ev.publishMs;
}

const noEmit = () => {};

/** An output NATS would refuse for good: the step fails at once, without retries. */
class RefusedOutput extends Error {}

// A subject token: not empty, no separator, wildcard or white space.
const TOKEN = /^[^\s.*>]+$/u;

/** Whether `s` (UTF-16) is more than `max` bytes of UTF-8, measuring only when it may be. */
function overBytes(s: string, max: number): boolean {
  if (s.length * 3 <= max) return false;
  if (s.length > max) return true;
  return Buffer.byteLength(s, 'utf8') > max;
}

/** Why NATS would refuse an output of a handler call, or undefined. */
function refusalOf(
  subject: string,
  json: string | undefined,
  maxBytes: number | undefined,
): string | undefined {
  if (subject.startsWith('events.')) {
    const t = subject.split('.');
    if (t.length !== 3 || !TOKEN.test(t[1]!) || !TOKEN.test(t[2]!))
      return `emit to "${subject.slice(0, 200)}": type and key must each be one subject token (not empty, no ".", "*", ">" or white space)`;
    if (keyTooLong(t[2]!))
      return `emit to "${subject.slice(0, 80)}…": its key is longer than ${MAX_KEY_BYTES} bytes`;
  }
  if (typeof json !== 'string') return `emit to "${subject}": the payload is not JSON`;
  if (maxBytes !== undefined && overBytes(json, maxBytes))
    return `emit to "${subject}": payload of ${Buffer.byteLength(json, 'utf8')} bytes, over the ${maxBytes} NATS accepts`;
  return undefined;
}

/** Throws RefusedOutput for the first output NATS would refuse. */
function checkOutputs(outs: readonly [string, string, string | undefined][], maxBytes: number | undefined) {
  for (const [subject, , json] of outs) {
    const why = refusalOf(subject, json, maxBytes);
    if (why !== undefined) throw new RefusedOutput(why);
  }
}

/** The key as a dead letter's message quotes it: long keys are cut. */
export function quoteKey(key: string): string {
  return JSON.stringify(key.length > 80 ? `${key.slice(0, 80)}…` : key);
}

const poisonId = (fire: boolean, seq: number, actor: string, key: string) =>
  `${fire ? 't' : 'e'}\u0000${seq}\u0000${actor}\u0000${key}`;

/**
 * `load` must return a freshly decoded record on every call (LMDB's `get` does): handlers mutate
 * state in place, and a rebuild after a throw reloads the committed record.
 */
export function applyBatch(
  byType: ReadonlyMap<string, readonly LoadedActor[]>,
  events: readonly RawEvent[],
  load: (actor: string, key: string) => StateRecord | undefined,
  opts: ApplyOptions,
): ApplyOutput {
  const entries = new Map<string, Entry>();
  const emits: Outbox['emits'] = [];
  const dead: DeadLetter[] = [];
  let applied = 0;
  let lastSeq = 0;
  const late: Record<string, number> = {};
  const bt = opts.time ? new BatchTime(opts.time, byType) : undefined;
  const sysOf = (r: StateRecord | undefined): Sys => (r?.x as Sys | undefined) ?? {};
  const onCall = opts.onCall ?? noEmit;
  const poison = new Map<string, Poison>();
  for (const p of opts.poisoned ?? []) poison.set(poisonId(p.fire, p.seq, p.actor, p.key), p);
  const poisonOf = (fire: boolean, seq: number, actor: string, key: string) =>
    poison.size === 0 ? undefined : poison.get(poisonId(fire, seq, actor, key));

  const entryFor = (actor: LoadedActor, key: string): Entry => {
    const id = `${actor.name}\u0000${key}`;
    let e = entries.get(id);
    if (!e) {
      const base = load(actor.name, key);
      e = {
        actor,
        key,
        base,
        state: base ? base.s : actor.def.initial(key),
        seq: base ? base.q : 0,
        applied: [],
        changed: false,
        time: bt ? timeFeaturesOf(actor.def) : undefined,
        sys: sysOf(base),
      };
      entries.set(id, e);
    }
    return e;
  };

  // Whether the last `run` sent its event to the late side output (counted once it succeeds).
  let runLate = false;
  // Runs the handler; returns the emits it made. Throws what the handler throws, and RefusedOutput
  // for an output NATS would refuse.
  const run = (e: Entry, event: ActorEvent, collect: boolean, clock?: Clock): [string, string, string][] => {
    const out: [string, string, string][] = [];
    runLate = false;
    const emit = collect
      ? (type: string, key: string, data: unknown) => {
          out.push([
            `events.${type}.${key}`,
            // The source partition is part of the id: sequences restart in every partition's stream.
            `pt:${e.actor.name}:${opts.partition}:${event.seq}:${out.length}`,
            JSON.stringify(data),
          ]);
        }
      : noEmit;
    let ctx: ActorContext;
    if (e.time && clock) {
      // Windows first: the handler sees whether the event was late (ctx.late).
      const call = timeCall(e, clock, event.seq, collect);
      const t = { emits: out, late: false };
      const isLate = feedWindows(call, event, t, `pt:${e.actor.name}:${opts.partition}:${event.seq}:`);
      e.state = call.state;
      runLate = t.late;
      ctx = timeContext(call, event.time, isLate, emit);
    } else {
      ctx = { key: e.key, actor: e.actor.name, now: () => event.time, emit, ...plainTimeFields() };
    }
    const next = e.actor.def.handle(e.state, event, ctx);
    if (next !== undefined) e.state = next;
    // Checked after the call, not in emit: a handler cannot catch the refusal and go on.
    if (out.length > 0) checkOutputs(out, opts.maxEmitBytes);
    return out;
  };
  const timeCall = (e: Entry, clock: Clock, seq: number, collect: boolean): TimeCall => ({
    actor: e.actor,
    time: e.time!,
    key: e.key,
    clock,
    state: e.state,
    sys: e.sys,
    seq,
    collect,
  });
  // Fires a key's due windows and timers at a stream position; returns the emits.
  const runFire = (e: Entry, step: Extract<Step, { fire: number }>, collect: boolean) => {
    const call = timeCall(e, step.clock, step.fire, collect);
    const t = { emits: [] as [string, string, string][], late: false };
    onCall(step.fire, e.actor.name, e.key, true);
    try {
      fireDue(call, t, `pt:${e.actor.name}:${step.fire}:t:${e.key}:`, step.callbacks);
    } finally {
      e.state = call.state;
    }
    if (t.emits.length > 0) checkOutputs(t.emits, opts.maxEmitBytes);
    return t.emits;
  };
  const replay = (e: Entry, step: Step) => {
    if ('ev' in step) {
      onCall(step.ev.seq, e.actor.name, e.key, false);
      run(e, step.ev, false, step.clock);
    } else runFire(e, step, false);
  };

  // After a throw the state may be half-mutated: start again from the committed record (`load`
  // decodes a fresh copy) and re-apply this batch's earlier events, which handlers must allow.
  const rebuild = (e: Entry) => {
    const fresh = load(e.actor.name, e.key);
    e.state = fresh ? fresh.s : e.actor.def.initial(e.key);
    e.sys = sysOf(fresh);
    for (const step of e.applied) replay(e, step);
  };

  // Everything due at the clock after stream position `seq`: windows close, timers fire.
  const fire = (seq: number) => {
    if (!bt) return;
    for (const { actor, key } of bt.due()) {
      onCall(seq, actor, key, true);
      const e = entryFor(actorByName(actor), key);
      const step = { fire: seq, clock: copyClock(bt.clock), callbacks: true };
      const poisoned = poisonOf(true, seq, actor, key);
      let ok = false;
      let lastError: unknown;
      for (let attempt = 1; attempt <= opts.maxAttempts && !ok && !poisoned; attempt++) {
        try {
          for (const m of runFire(e, step, true)) emits.push(m);
          ok = true;
        } catch (err) {
          lastError = err;
          rebuild(e);
          if (err instanceof RefusedOutput) break;
        }
      }
      if (!ok) {
        // What was due still leaves (it fires once), without the callbacks that kept failing.
        step.callbacks = false;
        runFire(e, step, false);
        const msg = lastError instanceof Error ? lastError.message : String(lastError);
        dead.push(
          poisoned
            ? { seq, code: poisoned.code, message: `${actor}: ${poisoned.reason}`, actor }
            : lastError instanceof RefusedOutput
              ? {
                  seq,
                  code: 'PARTITA_ERR_OUTPUT_REFUSED',
                  message: `${actor}: onTimer/onWindow of key ${quoteKey(key)}: ${msg}`,
                  actor,
                }
              : {
                  seq,
                  code: 'PARTITA_ERR_HANDLER',
                  message: `${actor}: onTimer/onWindow of key ${quoteKey(key)}: ${msg} (after ${opts.maxAttempts} attempts)`,
                  actor,
                },
        );
      }
      e.applied.push(step);
      e.clock = step.clock;
      e.seq = Math.max(e.seq, seq);
      e.changed = true;
      bt.touch(e);
    }
  };
  const byName = new Map<string, LoadedActor>();
  for (const list of byType.values()) for (const a of list) byName.set(a.name, a);
  const actorByName = (name: string) => byName.get(name)!;

  for (const ev of events) {
    lastSeq = Math.max(lastSeq, ev.seq);
    if (ev.type === TICK_TYPE) {
      // Processing time for an idle partition (see event-time.ts); not an event for any actor.
      bt?.advance(undefined, undefined, ev.publishMs);
      fire(ev.seq);
      continue;
    }
    const deadLetter = (code: ErrorCode, message: string, actor: string | null = null) =>
      dead.push({ seq: ev.seq, code, message, actor });
    if (ev.badSubject !== undefined) {
      deadLetter(
        'PARTITA_ERR_UNROUTABLE',
        `subject "${ev.badSubject}" is not partita.in.<partition>.<type>.<key>`,
      );
      continue;
    }
    if (ev.data.byteLength > opts.maxEventBytes) {
      deadLetter('PARTITA_ERR_OVERSIZED', `${ev.data.byteLength} bytes > ${opts.maxEventBytes}`);
      continue;
    }
    // Before anything is written: LMDB and a state change's subject could not hold the key.
    if (keyTooLong(ev.key)) {
      deadLetter(
        'PARTITA_ERR_KEY_TOO_LONG',
        `key ${quoteKey(ev.key)} is ${Buffer.byteLength(ev.key, 'utf8')} bytes, over ${MAX_KEY_BYTES}`,
      );
      continue;
    }
    const actors = byType.get(ev.type);
    if (!actors) {
      deadLetter('PARTITA_ERR_UNKNOWN_TYPE', `no actor consumes events of type "${ev.type}"`);
      continue;
    }
    const expected = partitionOf(ev.key, opts.partitions);
    if (expected !== opts.partition) {
      deadLetter(
        'PARTITA_ERR_PARTITION_MISMATCH',
        `key "${ev.key}" is in partition ${expected} of ${opts.partitions}, arrived on ${opts.partition}`,
      );
      continue;
    }
    let data: unknown;
    try {
      data = decode(ev);
    } catch (err) {
      deadLetter('PARTITA_ERR_DECODE', `${ev.msgpack ? 'msgpack' : 'JSON'}: ${(err as Error).message}`);
      continue;
    }
    if (opts.govern) {
      const g = opts.govern(ev.type, data);
      if ('code' in g) {
        deadLetter(g.code, g.message);
        continue;
      }
      data = g.data;
    }
    const event: ActorEvent = {
      type: ev.type,
      key: ev.key,
      data,
      seq: ev.seq,
      time: eventTime(ev, data),
      headers: ev.headers ?? {},
    };
    let any = false;
    const clock = bt ? copyClock(bt.clock) : undefined;
    const timed: Entry[] = [];
    for (const actor of actors) {
      // Before the key's entry, whose `initial` is actor code too: a call that was poisoned ran in
      // an earlier run of this batch, so the event was not applied to the key yet.
      const poisoned = poisonOf(false, ev.seq, actor.name, ev.key);
      if (poisoned) {
        deadLetter(poisoned.code, `${actor.name}: ${poisoned.reason}`, actor.name);
        continue;
      }
      onCall(ev.seq, actor.name, ev.key, false);
      const e = entryFor(actor, ev.key);
      // Idempotence per key: an event at or below the record's sequence is already in the state.
      if (ev.seq <= e.seq) continue;
      let lastError: unknown;
      let ok = false;
      for (let attempt = 1; attempt <= opts.maxAttempts; attempt++) {
        // Recorded once per event; again after a rebuild, whose replays record their own steps.
        if (attempt > 1) onCall(ev.seq, actor.name, ev.key, false);
        try {
          const out = run(e, event, true, e.time ? clock : undefined);
          for (const m of out) emits.push(m);
          ok = true;
          break;
        } catch (err) {
          lastError = err;
          rebuild(e);
          // A refused output is refused again: treat it as a failing handler, without retries.
          if (err instanceof RefusedOutput) break;
        }
      }
      if (ok) {
        e.applied.push({ ev: event, clock: e.time ? clock : undefined });
        e.seq = ev.seq;
        e.changed = true;
        any = true;
        if (runLate) late[actor.name] = (late[actor.name] ?? 0) + 1;
        bt?.touch(e);
        if (e.time) timed.push(e);
      } else if (lastError instanceof RefusedOutput) {
        deadLetter('PARTITA_ERR_OUTPUT_REFUSED', `${actor.name}: ${lastError.message}`, actor.name);
      } else {
        const msg = lastError instanceof Error ? lastError.message : String(lastError);
        deadLetter(
          'PARTITA_ERR_HANDLER',
          `${actor.name}: ${msg} (after ${opts.maxAttempts} attempts)`,
          actor.name,
        );
      }
    }
    if (any) applied++;
    if (bt) {
      bt.advance(ev.type, event.time, ev.publishMs);
      if (timed.length > 0) {
        const after = copyClock(bt.clock);
        for (const e of timed) e.clock = after;
      }
      fire(ev.seq);
    }
  }

  const eventsOf = (steps: Step[]) => steps.flatMap((s) => ('ev' in s ? [s.ev] : []));
  const writes: ApplyOutput['writes'] = [];
  const wakes: ApplyOutput['wakes'] = [];
  let emitsOut = emits;
  const maxState = opts.maxStateBytes;
  // The runtime-owned part of a time-aware record, in a fixed field order: a replay must write
  // byte-identical records.
  const sysRecord = (e: Entry): Sys | undefined => {
    if (!e.time || !bt) return undefined;
    const x: Sys = {};
    if (e.sys.w && Object.keys(e.sys.w).length > 0) x.w = e.sys.w;
    if (e.sys.tm && Object.keys(e.sys.tm).length > 0) x.tm = e.sys.tm;
    x.k = wakesOf(e.time, e.sys);
    if (e.clock) x.c = e.clock;
    return x;
  };
  // What a key's state change carries besides its state and `sys` (names, sequences, lineage, a
  // message id): a bound (JSON escapes a UTF-16 unit into at most 6 bytes), so the check never
  // needs the change itself.
  const overheadOf = (e: Entry) => 1024 + 6 * (e.key.length + e.actor.name.length);
  const tooLarge = (e: Entry, json: string, sysJson: string | undefined) =>
    maxState !== undefined && overBytes(sysJson ? json + sysJson : json, maxState - overheadOf(e));
  // Why the key's current state cannot go out, if it cannot.
  const faultOf = (e: Entry): { code: ErrorCode; message: string } | undefined => {
    const json = toJson(e.state);
    if (json === undefined)
      return {
        code: 'PARTITA_ERR_HANDLER',
        message: `${e.actor.name}: state is not JSON-serialisable after this event`,
      };
    const x = sysRecord(e);
    const sysJson = x && JSON.stringify(x);
    if (!tooLarge(e, json, sysJson)) return undefined;
    const bytes = Buffer.byteLength(json, 'utf8') + (sysJson ? Buffer.byteLength(sysJson, 'utf8') : 0);
    return {
      code: 'PARTITA_ERR_STATE_TOO_LARGE',
      message: `${e.actor.name}: the state of key ${quoteKey(e.key)} would be ${bytes} bytes after this event, over the ${maxState! - overheadOf(e)} a state change can carry`,
    };
  };
  // Slow path: replays the key's steps from its committed record and drops (dead-letters) each step
  // after which the state could not go out, with the emits it made.
  const dropFaultySteps = (e: Entry) => {
    // Emits of the dropped steps: an event's (pt:<actor>:<partition>:<seq>:<n>) or one key's
    // firing (pt:<actor>:<seq>:t:<key>:<n>; the key already tells partitions apart).
    const bad: { prefix: string; firing: boolean }[] = [];
    const fresh = load(e.actor.name, e.key);
    e.state = fresh ? fresh.s : e.actor.def.initial(e.key);
    e.sys = sysOf(fresh);
    const kept: Step[] = [];
    for (const step of e.applied) {
      replay(e, step);
      const fault = faultOf(e);
      if (fault === undefined) {
        kept.push(step);
        continue;
      }
      const seq = 'ev' in step ? step.ev.seq : step.fire;
      bad.push(
        'ev' in step
          ? { prefix: `pt:${e.actor.name}:${opts.partition}:${seq}:`, firing: false }
          : { prefix: `pt:${e.actor.name}:${seq}:t:${e.key}:`, firing: true },
      );
      dead.push({ seq, code: fault.code, message: fault.message, actor: e.actor.name });
      const again = load(e.actor.name, e.key);
      e.state = again ? again.s : e.actor.def.initial(e.key);
      e.sys = sysOf(again);
      for (const k of kept) replay(e, k);
    }
    // An event's prefix must not also take the firings at its position (`...:<seq>:t:...`).
    e.applied = kept;
    emitsOut = emitsOut.filter(
      ([, id]) =>
        !bad.some((b) => id.startsWith(b.prefix) && (b.firing || !id.startsWith('t:', b.prefix.length))),
    );
  };
  for (const e of entries.values()) {
    if (!e.changed) continue;
    let json = toJson(e.state);
    let x = sysRecord(e);
    let sysJson = x && JSON.stringify(x);
    if (json === undefined || tooLarge(e, json, sysJson)) {
      dropFaultySteps(e);
      json = toJson(e.state);
      x = sysRecord(e);
      sysJson = x && JSON.stringify(x);
      if (json === undefined) continue;
    }
    const record: StateRecord = {
      s: e.state,
      q: e.seq,
      t: opts.now,
      ...nextLineage(e.base, eventsOf(e.applied)),
    };
    if (x) {
      record.x = x;
      const oldWakes = (e.base?.x as Sys | undefined)?.k;
      const k = x.k!;
      if (oldWakes?.[0] !== k[0] || oldWakes?.[1] !== k[1]) wakes.push([e.actor.name, e.key, oldWakes, k]);
    }
    writes.push({ actor: e.actor.name, key: e.key, record, created: !e.base, json, sysJson });
  }
  return { writes, emits: emitsOut, dead, applied, lastSeq, late, wakes, clock: bt?.clock };
}

function toJson(state: unknown): string | undefined {
  try {
    return JSON.stringify(state) ?? undefined;
  } catch {
    return undefined;
  }
}

export function actorsByType(actors: readonly LoadedActor[]): Map<string, LoadedActor[]> {
  const m = new Map<string, LoadedActor[]>();
  for (const a of actors) {
    for (const t of a.def.events) {
      const list = m.get(t) ?? [];
      list.push(a);
      m.set(t, list);
    }
  }
  return m;
}
