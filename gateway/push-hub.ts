// Push fan-out. One NATS subscription to `partita.state.>` per gateway; every message is decoded
// once, reduced to its public form (public-state.ts) and handed to the clients whose filter matches. Nothing here ever waits for a client: a
// client whose transport is full stops receiving frames and keeps only the latest change per key
// (coalescing) until its transport drains, so a slow client costs memory bounded by the keys it
// watches, never time of the runtime or of other clients. A client whose transport stays full for
// longer than `maxBlockedMs` is dropped, so a client that never reads holds nothing for long.
//
// Snapshots ask each partition's owner for its states a page at a time as the client takes them
// (runtime/state-query.ts scans), so a new client never starts behind a committed change. The
// partitions no owner answers for now are read from the state bucket (the export) with one pull
// consumer, deleted when the snapshot ends or the client goes. At most `maxSnapshots` are read at
// once, so a crowd of new clients cannot swamp the owners or JetStream's API.
import { type Consumer, DeliverPolicy, type JetStreamClient } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { kvToken, partitionOf, STATE_BUCKET, STATE_PREFIX, stateKvKey } from '../runtime/index.js';
import { publicChange, publicChangeOf } from './public-state.js';
import type { StateReader } from './state-reader.js';

/** What a client watches; all given parts must match. */
export interface PushFilter {
  /** One actor type; every actor when absent. */
  actor?: string;
  /** One key (exact). */
  key?: string;
  /** Keys starting with this. */
  prefix?: string;
  /** Also send a `status` frame (partitions, owners, lag, throughput) every status interval. */
  status?: boolean;
}

/** The frame types a client receives (the `type` field of each JSON frame). */
export type FrameType = 'snapshot' | 'ready' | 'changes' | 'heartbeat' | 'status' | 'overflow';

/** A transport: WebSocket or SSE. */
export interface PushSink {
  /** Names the wire form `encode` produces: sinks with the same one share encoded frames. */
  readonly encoding: string;
  /** One frame as this transport sends it (a WebSocket frame, an SSE event). */
  encode(type: FrameType, json: string): Buffer | string;
  /** Sends an encoded frame; false when the transport's buffer is full. */
  send(frame: Buffer | string): boolean;
  /** Called once when the transport can take more after `write` returned false. */
  onDrain(cb: () => void): void;
  /**
   * Ends the transport: `overflow` after a last overflow frame; `stalled` at once (the client
   * has not read for `maxBlockedMs`, nothing more can reach it); `shutdown` when the gateway stops.
   */
  close(reason: CloseReason): void;
}

export type CloseReason = 'overflow' | 'stalled' | 'shutdown';

export interface PushHubOptions {
  /** Distinct keys a blocked client may hold before it is disconnected. @default 10000 */
  maxPendingKeys?: number;
  /** @default 5000 */
  heartbeatMs?: number;
  /** @default 2000 */
  statusMs?: number;
  /** Changes per snapshot frame. @default 500 */
  snapshotChunk?: number;
  /** How long a client's transport may stay full before the client is dropped. @default 30000 */
  maxBlockedMs?: number;
  /** Snapshots read from the state bucket at once (one consumer each); others wait. @default 32 */
  maxSnapshots?: number;
  /** Reads the cluster status for `status` frames (partitions, owners, lag). */
  readStatus?: () => Promise<unknown>;
  /** Snapshots from the partitions' owners (the bucket only where none answers); else the bucket. */
  reader?: StateReader;
  registry?: Registry;
}

/** One state change as received, decoded once for every client. */
class StateMsg {
  constructor(
    /** Arrival order on the live subscription; 0 for snapshot entries. */
    readonly id: number,
    /** `<actor>.<key>` as in the subject (KV-escaped). */
    readonly tail: string,
    readonly actorTok: string,
    readonly keyTok: string,
    /** The change's public JSON (public-state.ts): what every client is sent. */
    readonly raw: string,
    readonly seq: number,
  ) {}
}

/** A snapshot entry from a stored state change (an owner's answer or a bucket entry). */
function snapshotMsg(change: Readonly<Record<string, unknown>>): StateMsg | null {
  if (typeof change.actor !== 'string' || typeof change.key !== 'string') return null;
  const actorTok = kvToken(change.actor);
  const keyTok = kvToken(change.key);
  const p = publicChangeOf(change);
  return new StateMsg(0, `${actorTok}.${keyTok}`, actorTok, keyTok, p.json, p.seq);
}

function parsedChange(raw: string): Record<string, unknown> | null {
  try {
    const v = JSON.parse(raw) as unknown;
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

function changesFrame(batch: readonly StateMsg[]): string {
  let out = '{"type":"changes","changes":[';
  for (let i = 0; i < batch.length; i++) out += i === 0 ? batch[i]!.raw : `,${batch[i]!.raw}`;
  return `${out}]}`;
}

const ALL = '\u0000all';
/** A snapshot's sequences guard against an in-flight older change for this long after it. */
const SNAPSHOT_GUARD_MS = 5000;

export class PushClient {
  private phase: 'snapshot' | 'live' | 'closed' = 'snapshot';
  private blocked = false;
  private batch: StateMsg[] = [];
  /** The batch is a run of consecutive live messages, so clients with the same run share a frame. */
  private contiguous = true;
  private pending = new Map<string, StateMsg>();
  private snapSeq: Map<string, number> | null = null;
  readonly actorTok: string | null;
  private readonly keyTok: string | null;
  private readonly prefixTok: string | null;
  /** Changes replaced by a newer one of the same key before they were sent. */
  coalesced = 0;
  sent = 0;
  private stallTimer: NodeJS.Timeout | null = null;
  private readonly ended: Promise<void>;
  private end!: () => void;

  constructor(
    private readonly hub: PushHub,
    readonly sink: PushSink,
    readonly filter: PushFilter,
  ) {
    this.actorTok = filter.actor !== undefined ? kvToken(filter.actor) : null;
    this.keyTok = filter.key !== undefined ? kvToken(filter.key) : null;
    this.prefixTok = filter.prefix !== undefined && filter.prefix !== '' ? kvToken(filter.prefix) : null;
    this.ended = new Promise((r) => {
      this.end = r;
    });
  }

  get closed(): boolean {
    return this.phase === 'closed';
  }

  matches(keyTok: string): boolean {
    if (this.keyTok !== null && keyTok !== this.keyTok) return false;
    if (this.prefixTok !== null && !keyTok.startsWith(this.prefixTok)) return false;
    return true;
  }

  offer(m: StateMsg): void {
    if (this.phase === 'closed' || !this.matches(m.keyTok)) return;
    if (this.phase === 'snapshot' || this.blocked) {
      this.hold(m);
      return;
    }
    if (this.snapSeq) {
      const s = this.snapSeq.get(m.tail);
      if (s !== undefined) {
        if (m.seq < s) return; // older than what the snapshot already sent
        this.snapSeq.delete(m.tail);
      }
    }
    this.append(m);
  }

  private append(m: StateMsg): void {
    const last = this.batch.at(-1);
    if (last === undefined) {
      this.contiguous = m.id > 0;
      this.hub.markDirty(this);
    } else if (m.id !== last.id + 1) this.contiguous = false;
    this.batch.push(m);
  }

  private hold(m: StateMsg): void {
    const prev = this.pending.get(m.tail);
    if (prev) {
      this.coalesced++;
      this.hub.metrics.coalesced.inc();
      if (prev.seq > m.seq) return;
      this.pending.delete(m.tail);
    }
    this.pending.set(m.tail, m);
    if (this.pending.size > this.hub.maxPendingKeys) this.close('overflow');
  }

  /** Sends the batch as one frame; called by the hub once per event-loop turn. */
  flush(): void {
    if (this.phase !== 'live' || this.blocked || this.batch.length === 0) return;
    const batch = this.batch;
    this.batch = [];
    this.sent += batch.length;
    this.hub.sentInRound += batch.length;
    const frame = this.contiguous
      ? this.hub.sharedFrame(batch, this.sink)
      : this.sink.encode('changes', changesFrame(batch));
    if (!this.sink.send(frame)) this.block();
  }

  private block(): void {
    this.blocked = true;
    this.watchStall();
    this.sink.onDrain(() => {
      this.blocked = false;
      this.clearStall();
      // During a snapshot the held changes wait for it to finish (it releases them).
      if (this.phase !== 'live') return;
      this.releasePending();
      if (this.batch.length > 0) this.hub.markDirty(this);
    });
  }

  /** Drops the client once its transport has been full for `maxBlockedMs`. */
  private watchStall(): void {
    this.stallTimer ??= setTimeout(() => this.close('stalled'), this.hub.maxBlockedMs);
    this.stallTimer.unref();
  }

  private clearStall(): void {
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = null;
  }

  /** Resolves when the transport drains or the client ends, whichever comes first. */
  private drained(): Promise<void> {
    this.watchStall();
    return Promise.race([
      new Promise<void>((r) =>
        this.sink.onDrain(() => {
          this.clearStall();
          r();
        }),
      ),
      this.ended,
    ]);
  }

  private releasePending(): void {
    if (this.pending.size === 0) return;
    for (const m of this.pending.values()) this.append(m);
    this.pending.clear();
  }

  /**
   * Sends the current state of every matching key, then lets live changes through. Called again
   * after the gateway reconnects to NATS (changes may have been missed): a second snapshot and
   * `ready` then bring the client up to date.
   */
  async start(read: (c: PushClient) => AsyncIterable<StateMsg>): Promise<void> {
    if (this.closed) return;
    this.phase = 'snapshot';
    this.snapSeq = null;
    // Unsent changes wait with the held ones, so the snapshot's sequences decide between them.
    const unsent = this.batch;
    this.batch = [];
    for (const m of unsent) this.hold(m);
    const snap = new Map<string, number>();
    let chunk: string[] = [];
    let count = 0;
    const send = async (type: FrameType, json: string) => {
      if (this.sink.send(this.sink.encode(type, json))) return;
      await this.drained();
    };
    for await (const m of read(this)) {
      if (this.closed) return;
      const live = this.pending.get(m.tail);
      if (live && live.seq >= m.seq) continue; // a newer change arrived meanwhile: it goes out next
      if (live) this.pending.delete(m.tail);
      snap.set(m.tail, m.seq);
      chunk.push(m.raw);
      count++;
      if (chunk.length >= this.hub.snapshotChunk) {
        const c = chunk;
        chunk = [];
        await send('snapshot', `{"type":"snapshot","changes":[${c.join(',')}]}`);
        if (this.closed) return; // leaving the loop ends the read (its consumer is deleted)
      }
    }
    if (this.closed) return;
    if (chunk.length > 0) await send('snapshot', `{"type":"snapshot","changes":[${chunk.join(',')}]}`);
    await send('ready', `{"type":"ready","snapshot":${count}}`);
    if (this.closed) return;
    this.snapSeq = snap;
    setTimeout(() => {
      this.snapSeq = null;
    }, SNAPSHOT_GUARD_MS).unref();
    this.phase = 'live';
    this.releasePending();
    if (this.batch.length > 0) this.hub.markDirty(this);
  }

  /** Frames outside the change stream (heartbeat, status): skipped while the transport is full. */
  control(type: FrameType, json: string): void {
    if (this.phase === 'closed' || this.blocked) return;
    if (!this.sink.send(this.sink.encode(type, json))) this.block();
  }

  close(reason: CloseReason): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    this.clearStall();
    this.end();
    this.pending.clear();
    this.batch = [];
    if (reason !== 'shutdown') this.hub.metrics.overflows.inc();
    this.sink.close(reason);
    this.hub.remove(this);
  }

  /** The transport went away. */
  gone(): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    this.clearStall();
    this.end();
    this.pending.clear();
    this.batch = [];
    this.hub.remove(this);
  }
}

export interface PushMetrics {
  clients: Gauge;
  received: Counter;
  sent: Counter;
  coalesced: Counter;
  overflows: Counter;
  commitToGateway: Histogram;
  round: Histogram;
}

function pushMetrics(registry: Registry | undefined): PushMetrics {
  const registers = registry ? [registry] : [];
  return {
    clients: new Gauge({
      name: 'partita_gateway_push_clients',
      help: 'Open WebSocket and SSE subscriptions',
      registers,
    }),
    received: new Counter({
      name: 'partita_gateway_state_changes_total',
      help: 'State changes received on partita.state.>',
      registers,
    }),
    sent: new Counter({
      name: 'partita_gateway_push_changes_sent_total',
      help: 'State changes sent to push clients (one per client)',
      registers,
    }),
    coalesced: new Counter({
      name: 'partita_gateway_push_coalesced_total',
      help: 'Changes replaced by a newer change of the same key before a slow client could take them',
      registers,
    }),
    overflows: new Counter({
      name: 'partita_gateway_push_overflows_total',
      help: 'Clients disconnected because they fell behind by more than the pending-key bound or stayed blocked longer than the time bound',
      registers,
    }),
    commitToGateway: new Histogram({
      name: 'partita_gateway_commit_to_push_seconds',
      help: "From a change's commit (its updatedAt) to its receipt by the gateway",
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    }),
    round: new Histogram({
      name: 'partita_gateway_push_round_seconds',
      help: 'One fan-out round: the frames of one event-loop turn written to every client',
      buckets: [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    }),
  };
}

/** A ring of recent latencies for the dashboard's percentiles. */
class LatencyRing {
  private readonly xs = new Float64Array(4096);
  private n = 0;
  add(v: number) {
    this.xs[this.n++ % this.xs.length] = v;
  }
  percentiles(): { p50: number; p95: number; p99: number; samples: number } | null {
    const len = Math.min(this.n, this.xs.length);
    if (len === 0) return null;
    const s = Array.from(this.xs.subarray(0, len)).sort((a, b) => a - b);
    const at = (q: number) => s[Math.min(len - 1, Math.floor(q * len))]!;
    return { p50: at(0.5), p95: at(0.95), p99: at(0.99), samples: len };
  }
  reset() {
    this.n = 0;
  }
}

export class PushHub {
  private readonly byActor = new Map<string, Set<PushClient>>();
  private readonly dirty = new Set<PushClient>();
  private flushScheduled = false;
  private sub: Subscription | null = null;
  private timers: NodeJS.Timeout[] = [];
  private readonly latency = new LatencyRing();
  private readonly decoder = new TextDecoder();
  private statusClients = 0;
  private nextId = 1;
  /** Frames built in this flush round, by their run of messages: one encoding for many clients. */
  private readonly frames = new Map<string, Buffer | string>();
  /** Changes handed to clients in this flush round (counted once per round). */
  sentInRound = 0;
  readonly metrics: PushMetrics;
  readonly maxPendingKeys: number;
  readonly snapshotChunk: number;
  readonly maxBlockedMs: number;
  private readonly snapshotSlots: Slots;
  /** State changes received since start. */
  received = 0;
  /** False while the NATS connection is down (between disconnect and reconnect). */
  natsUp = true;

  constructor(
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly kv: KV,
    private readonly opts: PushHubOptions = {},
  ) {
    this.metrics = pushMetrics(opts.registry);
    this.maxPendingKeys = opts.maxPendingKeys ?? 10_000;
    this.snapshotChunk = opts.snapshotChunk ?? 500;
    this.maxBlockedMs = opts.maxBlockedMs ?? 30_000;
    this.snapshotSlots = new Slots(opts.maxSnapshots ?? 32);
  }

  get clientCount(): number {
    let n = 0;
    for (const s of this.byActor.values()) n += s.size;
    return n;
  }

  start(): void {
    if (this.sub) return;
    const prefixLen = STATE_PREFIX.length + 1;
    this.sub = this.nc.subscribe(`${STATE_PREFIX}.>`, {
      callback: (err, m) => {
        if (err) return;
        const tail = m.subject.slice(prefixLen);
        const dot = tail.indexOf('.');
        if (dot < 0) return;
        // Parsed once here for every client: what goes out is the public form, without `sys`.
        const change = publicChange(this.decoder.decode(m.data));
        if (!change) return;
        this.received++;
        this.metrics.received.inc();
        const lat = Date.now() - change.updatedAt;
        if (Number.isFinite(lat)) {
          this.latency.add(lat);
          this.metrics.commitToGateway.observe(Math.max(0, lat) / 1000);
        }
        const msg = new StateMsg(
          this.nextId++,
          tail,
          tail.slice(0, dot),
          tail.slice(dot + 1),
          change.json,
          change.seq,
        );
        const forActor = this.byActor.get(msg.actorTok);
        if (forActor) for (const c of forActor) c.offer(msg);
        const forAll = this.byActor.get(ALL);
        if (forAll) for (const c of forAll) c.offer(msg);
      },
    });
    void this.watchConnection();
    const hb = setInterval(() => {
      const frame = `{"type":"heartbeat","at":${Date.now()},"nats":${this.natsUp && !this.nc.isClosed()}}`;
      for (const set of this.byActor.values()) for (const c of set) c.control('heartbeat', frame);
    }, this.opts.heartbeatMs ?? 5000);
    hb.unref();
    this.timers.push(hb);
    let lastReceived = 0;
    let lastAt = Date.now();
    const st = setInterval(async () => {
      if (this.statusClients === 0) return;
      const now = Date.now();
      const rate = ((this.received - lastReceived) * 1000) / Math.max(1, now - lastAt);
      lastReceived = this.received;
      lastAt = now;
      const cluster = this.opts.readStatus ? await this.opts.readStatus().catch(() => null) : null;
      const frame = JSON.stringify({
        type: 'status',
        at: now,
        gateway: {
          changesPerSecond: rate,
          changesTotal: this.received,
          clients: this.clientCount,
          commitToGatewayMs: this.latency.percentiles(),
          nats: this.natsUp && !this.nc.isClosed(),
        },
        cluster,
      });
      this.latency.reset();
      for (const set of this.byActor.values())
        for (const c of set) if (c.filter.status) c.control('status', frame);
    }, this.opts.statusMs ?? 2000);
    st.unref();
    this.timers.push(st);
  }

  /** Changes published while the connection was down never reach the subscription: resync. */
  private async watchConnection(): Promise<void> {
    for await (const s of this.nc.status()) {
      if (s.type === 'disconnect') this.natsUp = false;
      else if (s.type === 'reconnect') {
        this.natsUp = true;
        for (const set of this.byActor.values()) {
          for (const c of set)
            c.start((client) => this.readSnapshot(client)).catch(() => c.close('shutdown'));
        }
      }
    }
  }

  /** Adds a client: its snapshot is read and sent, then its live changes. */
  add(sink: PushSink, filter: PushFilter): PushClient {
    const c = new PushClient(this, sink, filter);
    const k = c.actorTok ?? ALL;
    const set = this.byActor.get(k) ?? new Set<PushClient>();
    this.byActor.set(k, set);
    set.add(c);
    if (filter.status) this.statusClients++;
    this.metrics.clients.inc();
    c.start((client) => this.readSnapshot(client)).catch(() => c.close('shutdown'));
    return c;
  }

  remove(c: PushClient): void {
    const set = this.byActor.get(c.actorTok ?? ALL);
    if (set?.delete(c)) {
      this.metrics.clients.dec();
      if (c.filter.status) this.statusClients--;
    }
    this.dirty.delete(c);
  }

  markDirty(c: PushClient): void {
    this.dirty.add(c);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // One frame per client per event-loop turn: the changes of one socket read travel together.
    setImmediate(() => {
      const t0 = performance.now();
      this.flushScheduled = false;
      const cs = [...this.dirty];
      this.dirty.clear();
      for (const x of cs) x.flush();
      this.frames.clear();
      this.metrics.sent.inc(this.sentInRound);
      this.sentInRound = 0;
      this.metrics.round.observe((performance.now() - t0) / 1000);
    });
  }

  /** The frame of a run of consecutive messages, encoded once per flush round and transport. */
  sharedFrame(batch: readonly StateMsg[], sink: PushSink): Buffer | string {
    const id = `${sink.encoding}:${batch[0]!.id}:${batch.length}`;
    let f = this.frames.get(id);
    if (f === undefined) {
      f = sink.encode('changes', changesFrame(batch));
      this.frames.set(id, f);
    }
    return f;
  }

  /**
   * The latest state of every key the client's filter matches: from the partitions' owners (never
   * behind a committed change) when a state reader is given, and from the state bucket for the
   * partitions whose owner cannot answer now (or all, without a reader).
   */
  private async *readSnapshot(c: PushClient): AsyncIterable<StateMsg> {
    const { actor, key } = c.filter;
    if (actor !== undefined && key !== undefined) {
      const change = this.opts.reader
        ? (await this.opts.reader.read([[actor, key]])).changes[0]
        : await this.kv
            .get(stateKvKey(actor, key))
            .then((e) => (e?.operation === 'PUT' && e.length > 0 ? parsedChange(e.string()) : null));
      const msg = change ? snapshotMsg(change) : null;
      if (msg) yield msg;
      return;
    }
    await this.snapshotSlots.take();
    try {
      if (c.closed) return;
      const reader = this.opts.reader;
      if (reader) {
        let missed: ReadonlySet<number> | undefined;
        // Keys sent from an owner: a partition lost part way is read again from the bucket.
        const sent = new Set<string>();
        for await (const change of reader.scan(actor, (m) => {
          missed = m;
        })) {
          if (c.closed) return;
          const msg = snapshotMsg(change);
          if (!msg || !c.matches(msg.keyTok)) continue;
          sent.add(msg.tail);
          yield msg;
        }
        const lost = missed as ReadonlySet<number> | undefined;
        if (lost?.size === 0) return;
        const partitions = await reader.knownPartitions();
        if (lost && partitions !== undefined) {
          yield* this.readBucket(c, (tail, k) => lost.has(partitionOf(k, partitions)) && !sent.has(tail));
          return;
        }
      }
      yield* this.readBucket(c, () => true);
    } finally {
      this.snapshotSlots.give();
    }
  }

  /** The bucket's latest state of each key the client matches and `keep` takes (tail, raw key). */
  private async *readBucket(
    c: PushClient,
    keep: (tail: string, key: string) => boolean,
  ): AsyncIterable<StateMsg> {
    // Deleted below; the threshold only covers a gateway that dies mid-snapshot.
    const consumer = await this.js.consumers.get(`KV_${STATE_BUCKET}`, {
      filter_subjects: `$KV.${STATE_BUCKET}.${c.actorTok ?? '*'}.>`,
      // The bucket keeps one entry per key, so All is the latest per key (and quick to set up on 2.9).
      deliver_policy: DeliverPolicy.All,
      inactive_threshold: this.maxBlockedMs + 30_000,
    });
    try {
      yield* this.readChunks(c, consumer, keep);
    } finally {
      await consumer.delete().catch(() => undefined);
    }
  }

  /**
   * The consumer's messages, one fetch of a chunk at a time: the next only once these are taken.
   * Only the entries there at the start: later ones reach the client as live changes, and a busy
   * bucket would otherwise keep a snapshot going for ever.
   */
  private async *readChunks(
    c: PushClient,
    consumer: Consumer,
    keep: (tail: string, key: string) => boolean,
  ): AsyncIterable<StateMsg> {
    const prefixLen = `$KV.${STATE_BUCKET}.`.length;
    let left = (await consumer.info(true)).num_pending;
    while (left > 0 && !c.closed) {
      const msgs = await consumer.fetch({ max_messages: Math.min(this.snapshotChunk, left), expires: 5000 });
      const got: StateMsg[] = [];
      let n = 0;
      for await (const m of msgs) {
        n++;
        left = m.info.pending === 0 ? 0 : left - 1;
        const op = m.headers?.get('KV-Operation');
        if (op === 'DEL' || op === 'PURGE' || m.data.length === 0) continue;
        const tail = m.subject.slice(prefixLen);
        const keyTok = tail.slice(tail.indexOf('.') + 1);
        if (!c.matches(keyTok)) continue;
        const change = parsedChange(m.string());
        if (!change || typeof change.key !== 'string' || !keep(tail, change.key)) continue;
        const msg = snapshotMsg(change);
        if (msg) got.push(msg);
      }
      if (n === 0) return; // the entries went meanwhile
      yield* got;
    }
  }

  stop(): void {
    this.sub?.unsubscribe();
    this.sub = null;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    for (const set of [...this.byActor.values()]) for (const c of [...set]) c.close('shutdown');
  }
}

/** A counting semaphore: at most n holders, the others wait in order. */
class Slots {
  private readonly waiting: (() => void)[] = [];
  constructor(private free: number) {}

  async take(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((r) => this.waiting.push(r));
  }

  give(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }
}
