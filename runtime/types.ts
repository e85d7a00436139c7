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
}
