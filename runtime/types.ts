// The contracts analytics engineers write against. Implementations live elsewhere.

/** How an actor's effects survive crashes. */
export type Guarantee = 'exactly-once' | 'at-least-once';

/** An event as an actor sees it. */
export interface ActorEvent<D = unknown> {
  /** The `<type>` token of `events.<type>.<key>`. */
  readonly type: string;
  /** The `<key>` token: the actor instance this event goes to. */
  readonly key: string;
  /** The decoded payload (JSON, or msgpack with `Content-Type: application/msgpack`). */
  readonly data: D;
  /** The JetStream sequence of the event in the input stream: unique and increasing per partition. */
  readonly seq: number;
  /** Event time in epoch ms: `Partita-Event-Time` header, else a numeric `ts` field, else publish time. */
  readonly time: number;
  /** The message headers (first value of each). */
  readonly headers: Readonly<Record<string, string>>;
}

export interface ActorContext {
  /** The key of the actor instance being run. */
  readonly key: string;
  /** The actor type. */
  readonly actor: string;
  /** Event time of the event being handled (epoch ms). */
  now(): number;
  /**
   * Publishes `data` as a new event on `events.<type>.<key>` once the state that produced it has
   * committed. Emitted events carry a deterministic `Nats-Msg-Id`, so a replay's copies are dropped
   * by JetStream's duplicate window.
   */
  emit(type: string, key: string, data: unknown): void;
  /** Event-time and processing-time timers of this actor instance (see `onTimer`). */
  readonly timers: Timers;
  /** The partition's watermark for this actor (epoch ms): events before it are late. */
  watermark(): number;
  /** The partition's processing time: the newest JetStream publish time it has read (epoch ms). */
  processingTime(): number;
  /** The event is late for a window that wanted it (behind watermark − allowed lateness): it fed none of those and went to the side output. */
  readonly late: boolean;
}

// biome-ignore lint/suspicious/noExplicitAny: a loaded actor's state and payload types are unknown to the runtime
export interface ActorDefinition<S = any, D = any> {
  /** The actor type: a single subject token. */
  readonly name: string;
  /** The event types this actor consumes (`events.<type>.<key>`). */
  readonly events: readonly string[];
  /** @default 'exactly-once' */
  readonly guarantee?: Guarantee;
  /** The state of a key that has seen no event yet. Must be JSON-serialisable. */
  initial(key: string): S;
  /** Applies one event. Returning a state replaces it; returning undefined keeps the (mutated) state. */
  // biome-ignore lint/suspicious/noConfusingVoidType: a handler that only mutates returns nothing
  handle(state: S, event: ActorEvent<D>, ctx: ActorContext): S | undefined | void;
  /** Windows over event time, fed by each window's `value`; results go to `onWindow` or `state.windows`. */
  readonly windows?: Readonly<Record<string, WindowSpec<D>>>;
  /** Tumbling windows of one metric at several granularities (1m, 5m, 1h by default). */
  readonly rollups?: Readonly<Record<string, RollupSpec<D>>>;
  /** How the partition's watermark follows event time for this actor. */
  readonly watermark?: WatermarkSpec;
  /** A timer set with `ctx.timers` is due. Fires exactly once; what it changes commits with its removal. */
  // biome-ignore lint/suspicious/noConfusingVoidType: as handle
  onTimer?(state: S, timer: Timer, ctx: ActorContext): S | undefined | void;
  /**
   * A window closed (or a late event updated a closed one: `update` > 0). Called after the result
   * is kept in `state.windows[name]` (windows) or `state.rollups[name][granularity]` (rollups) as
   * `{start, end, count, value, update}`, when the state is an object and `keep` is not 0.
   */
  // biome-ignore lint/suspicious/noConfusingVoidType: as handle
  onWindow?(state: S, result: WindowResult, ctx: ActorContext): S | undefined | void;
}

// --- Event time: windows, watermarks, timers --------------------------------------------------

/** Milliseconds, or a string such as `'500ms'`, `'30s'`, `'5m'`, `'1h'`, `'2d'`, `'1y'`. */
export type Duration = number | string;

/** A custom aggregation. The accumulator must be JSON data: it is part of the actor's state. */
// biome-ignore lint/suspicious/noExplicitAny: accumulators are the reducer's own business
export interface Reducer<A = any, R = unknown> {
  init(): A;
  add(acc: A, value: unknown): A;
  /** Needed by session windows, which merge when an event bridges two sessions. */
  merge?(a: A, b: A): A;
  result?(acc: A): R;
}

/**
 * `count`, `sum`, `min`, `max`, `mean`; `distinct` (HyperLogLog, ≈3% error); `p50`, `p95`, `p99`
 * or `{ percentile: 0.999 }` (log histogram, within 1% of the value at that rank); or a reducer.
 */
export type AggregationSpec =
  | 'count'
  | 'sum'
  | 'min'
  | 'max'
  | 'mean'
  | 'distinct'
  | string
  | { percentile: number }
  | Reducer;

export type WindowKind = 'tumbling' | 'hopping' | 'sliding' | 'session';

// biome-ignore lint/suspicious/noExplicitAny: payloads default to untyped, as in ActorDefinition
export interface WindowSpec<D = any> {
  /**
   * - `tumbling`: `[k·size, (k+1)·size)`.
   * - `hopping`: windows of `size` starting every `hop`.
   * - `sliding`: for each event time t, the window `(t − size, t]` (as Kafka Streams).
   * - `session`: events less than `gap` apart, `[first, last + gap)`.
   */
  readonly kind: WindowKind;
  readonly size?: Duration;
  readonly hop?: Duration;
  readonly gap?: Duration;
  /** The value an event feeds in; `undefined` feeds nothing. @default 1 for every event */
  readonly value?: (event: ActorEvent<D>) => unknown;
  /** Named aggregations of the values. @default { count: 'count' } */
  readonly aggregate?: Readonly<Record<string, AggregationSpec>>;
  /** Events up to this far behind the watermark still update their (closed) windows. @default 0 */
  readonly allowedLateness?: Duration;
  /** Also emit every result as an event `events.<emit>.<key>`. */
  readonly emit?: string;
  /** Newest results kept in the state (`state.windows[name]`); 0 keeps none. @default 10 */
  readonly keep?: number;
  /** Results whose end is older than this (behind the watermark) leave the state. @default no limit but `keep` */
  readonly retention?: Duration;
}

// biome-ignore lint/suspicious/noExplicitAny: as WindowSpec
export interface RollupSpec<D = any> extends Omit<WindowSpec<D>, 'kind' | 'size' | 'hop' | 'gap'> {
  /** Granularities. @default ['1m', '5m', '1h'] */
  readonly every?: readonly Duration[];
}

export interface WatermarkSpec {
  /** How far behind the newest event time an event may arrive and still be on time. @default 0 */
  readonly maxOutOfOrder?: Duration;
  /**
   * After this long without events (processing time), the watermark advances with the clock, so
   * the windows of an idle partition still close. @default '5s'
   */
  readonly idleTimeout?: Duration;
}

export interface WindowResult {
  /** The window's name (`<rollup>@<granularity>` for rollups). */
  readonly window: string;
  readonly kind: WindowKind;
  readonly key: string;
  /** Epoch ms, inclusive. */
  readonly start: number;
  /** Epoch ms, exclusive. */
  readonly end: number;
  /** Events fed into the window. */
  readonly count: number;
  /** One entry per aggregation. */
  readonly value: Readonly<Record<string, unknown>>;
  /** 0 when the watermark closes the window; n for the n-th update by a late event. */
  readonly update: number;
}

export interface Timer {
  readonly name: string;
  /** Epoch ms: event time for `event` timers, processing time for `processing` timers. */
  readonly time: number;
  readonly kind: 'event' | 'processing';
  readonly data?: unknown;
}

export interface Timers {
  /** Fires when the watermark reaches `time`. Setting a name again replaces its timer. */
  at(name: string, time: number, data?: unknown): void;
  /** Fires when processing time reaches now + `delay`. */
  after(name: string, delay: Duration, data?: unknown): void;
  cancel(name: string): void;
  get(name: string): Timer | undefined;
}

/** The identity function that gives an actor module its types. Also installed as a global. */
// biome-ignore lint/suspicious/noExplicitAny: payloads default to untyped, as JSON.parse does
export function defineActor<S, D = any>(def: ActorDefinition<S, D>): ActorDefinition<S, D> {
  return def;
}

/** A committed state change, as published on `partita.state.<actor>.<key>` and stored in the KV bucket. */
export interface StateChange<S = unknown> {
  readonly actor: string;
  readonly key: string;
  readonly state: S;
  /** The input-stream sequence of the last event applied to this state. */
  readonly seq: number;
  /** When the change was committed (ISO 8601). */
  readonly updatedAt: string;
  /** The partition that owns the key. */
  readonly partition: number;
  /** Runtime-owned part (open windows, pending timers, the partition clock): restored on failover. */
  readonly sys?: unknown;
}
