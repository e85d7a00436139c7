// Applies one batch of a partition's events to its actors. Pure apart from `load`: the worker
// supplies LMDB reads, the property tests an in-memory map.
import { unpack } from 'msgpackr';
import type { LoadedActor } from './actor-loader.js';
import type { ErrorCode } from './errors.js';
import type { Govern } from './governance.js';
import { nextLineage } from './lineage.js';
import type { Outbox, StateRecord } from './state-store.js';
import { partitionOf } from './subjects.js';
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
  writes: { actor: string; key: string; record: StateRecord; created: boolean; json: string }[];
  emits: Outbox['emits'];
  dead: DeadLetter[];
  /** Events applied to at least one actor. */
  applied: number;
  lastSeq: number;
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
  applied: ActorEvent[];
  changed: boolean;
}

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
      };
      entries.set(id, e);
    }
    return e;
  };

  // Runs the handler; returns the emits it made. Throws what the handler throws.
  const run = (e: Entry, event: ActorEvent, collect: boolean): [string, string, string][] => {
    const out: [string, string, string][] = [];
    const ctx: ActorContext = {
      key: e.key,
      actor: e.actor.name,
      now: () => event.time,
      emit: collect
        ? (type, key, data) => {
            out.push([
              `events.${type}.${key}`,
              // The source partition is part of the id: sequences restart in every partition's stream.
              `pt:${e.actor.name}:${opts.partition}:${event.seq}:${out.length}`,
              JSON.stringify(data),
            ]);
          }
        : noEmit,
    };
    const next = e.actor.def.handle(e.state, event, ctx);
    if (next !== undefined) e.state = next;
    return out;
  };

  // After a throw the state may be half-mutated: start again from the committed record (`load`
  // decodes a fresh copy) and re-apply this batch's earlier events, which handlers must allow.
  const rebuild = (e: Entry) => {
    const fresh = load(e.actor.name, e.key);
    e.state = fresh ? fresh.s : e.actor.def.initial(e.key);
    for (const ev of e.applied) run(e, ev, false);
  };

  for (const ev of events) {
    lastSeq = Math.max(lastSeq, ev.seq);
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
    for (const actor of actors) {
      const e = entryFor(actor, ev.key);
      // Idempotence per key: an event at or below the record's sequence is already in the state.
      if (ev.seq <= e.seq) continue;
      let lastError: unknown;
      let ok = false;
      for (let attempt = 1; attempt <= opts.maxAttempts; attempt++) {
        try {
          const out = run(e, event, true);
          for (const m of out) emits.push(m);
          ok = true;
          break;
        } catch (err) {
          lastError = err;
          rebuild(e);
        }
      }
      if (ok) {
        e.applied.push(event);
        e.seq = ev.seq;
        e.changed = true;
        any = true;
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
  }

  const writes: ApplyOutput['writes'] = [];
  let emitsOut = emits;
  for (const e of entries.values()) {
    if (!e.changed) continue;
    let json = toJson(e.state);
    if (json === undefined) {
      // Slow path: find the events that made the state unserialisable and dead-letter them.
      const bad = new Set<number>();
      const fresh = load(e.actor.name, e.key);
      e.state = fresh ? fresh.s : e.actor.def.initial(e.key);
      const kept: ActorEvent[] = [];
      for (const ev of e.applied) {
        run(e, ev, false);
        if (toJson(e.state) !== undefined) {
          kept.push(ev);
          continue;
        }
        bad.add(ev.seq);
        dead.push({
          seq: ev.seq,
          code: 'PARTITA_ERR_HANDLER',
          message: `${e.actor.name}: state is not JSON-serialisable after this event`,
          actor: e.actor.name,
        });
        const again = load(e.actor.name, e.key);
        e.state = again ? again.s : e.actor.def.initial(e.key);
        for (const k of kept) run(e, k, false);
      }
      e.applied = kept;
      const prefix = `pt:${e.actor.name}:${opts.partition}:`;
      emitsOut = emitsOut.filter(
        ([, id]) => !(id.startsWith(prefix) && bad.has(Number(id.slice(prefix.length).split(':')[0]))),
      );
      json = toJson(e.state);
      if (json === undefined) continue;
    }
    writes.push({
      actor: e.actor.name,
      key: e.key,
      record: { s: e.state, q: e.seq, t: opts.now, ...nextLineage(e.base, e.applied) },
      created: !e.base,
      json,
    });
  }
  return { writes, emits: emitsOut, dead, applied, lastSeq };
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
