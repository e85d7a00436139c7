// Sets a partition stream's sourcing going again when the server left it stalled. A partition
// stream reads PARTITA_EVENTS through a source consumer that lives on the ingest stream's leader.
// When that leader dies, the partition stream's leader notices after its 10 s health check, asks
// for a new consumer, and waits up to 30 s for an answer that a stream without a leader never
// gives, then backs off 10 s more per failure: events reached their partitions 17 s after a server
// kill in a quiet run and more than 45 s in a loaded one (ARCHITECTURE.md, Known issues). Nothing in a
// stream's configuration resets that schedule, but a new leader sets its sources up at once: so a
// node that sees the source of a stream it owns silent (the server heartbeats it every second)
// while the ingest stream has a leader asks the partition stream's leader to step down.
//
// It checks only while something happened that can stall a source (a stream leader elected or a
// quorum lost, its own connection lost or regained, its start), for a minute after the last.
import type { JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Logger } from './logger.js';
import type { NodeMetrics } from './metrics.js';
import { IN_STREAM_PREFIX, INGEST_STREAM, inStream } from './subjects.js';

/** What the watchdog reads of a stream: its leader, and the source's silence. */
export interface SourcedStreamInfo {
  /** The stream's leader; undefined without one (or on a single server, where it is ''). */
  leader: string | undefined;
  replicas: number;
  /** Ms since the stream last heard from PARTITA_EVENTS; -1 before it first did; undefined without that source. */
  sourceSilentMs: number | undefined;
}

/** What it asks of NATS: our interface, so that its decisions are tested without a server. */
export interface SourceWatchdogNats {
  info(stream: string): Promise<SourcedStreamInfo | null>;
  stepDown(stream: string): Promise<void>;
}

export interface SourceWatchdogOptions {
  nats: SourceWatchdogNats;
  /** The partitions this node owns: each node watches only its own, so no two step one down. */
  owned: () => Iterable<number>;
  metrics: Pick<NodeMetrics, 'sourceRestarts'>;
  log: Logger;
  /** A source silent this long is stalled (healthy ones hear a heartbeat every second). @default 3000 */
  stallMs?: number;
  /** A stream stepped down is left alone this long, for its new leader to set the source up; it
   * doubles with every stepdown that did not bring the source back (up to a minute). @default 6000 */
  cooldownMs?: number;
  /** @default 1000 */
  everyMs?: number;
  /** How long one trigger keeps it checking. @default 60000 */
  armMs?: number;
  now?: () => number;
}

export class SourceWatchdog {
  private armedUntil = 0;
  private timer: NodeJS.Timeout | null = null;
  private checking: Promise<void> | null = null;
  private stopped = false;
  /** Per stream: since when this node has seen its source silent. */
  private readonly silentSince = new Map<string, number>();
  private readonly steppedAt = new Map<string, number>();
  /** Stepdowns since the stream's source was last heard from. */
  private readonly attempts = new Map<string, number>();
  private readonly o: Required<Omit<SourceWatchdogOptions, 'nats' | 'owned' | 'metrics' | 'log'>>;

  constructor(private readonly opts: SourceWatchdogOptions) {
    this.o = {
      stallMs: opts.stallMs ?? 3000,
      cooldownMs: opts.cooldownMs ?? 6000,
      everyMs: opts.everyMs ?? 1000,
      armMs: opts.armMs ?? 60_000,
      now: opts.now ?? Date.now,
    };
  }

  /** Checks every `everyMs` until `armMs` after the last call. */
  arm(): void {
    if (this.stopped) return;
    this.armedUntil = this.o.now() + this.o.armMs;
    if (this.timer) return;
    this.timer = setInterval(() => {
      if (this.o.now() > this.armedUntil) {
        clearInterval(this.timer!);
        this.timer = null;
        this.silentSince.clear();
        return;
      }
      if (!this.checking)
        this.checking = this.check()
          .then(() => undefined)
          .catch((err) => this.opts.log.debug({ err: (err as Error).message }, 'source check failed'))
          .finally(() => {
            this.checking = null;
          });
    }, this.o.everyMs);
    this.timer.unref();
  }

  /** One round: steps down each owned partition stream whose source has been silent `stallMs`. */
  async check(): Promise<string[]> {
    const { nats, owned, log, metrics } = this.opts;
    const ingest = await nats.info(INGEST_STREAM);
    // One server: a restart sets every source up. No leader for the ingest stream: a new leader
    // of a partition stream would fail to set its source up too, and back off; wait for one.
    if (!ingest || ingest.replicas < 2 || !ingest.leader) return [];
    const stepped: string[] = [];
    for (const p of owned()) {
      if (this.stopped) break;
      const stream = inStream(p);
      const info = await nats.info(stream).catch(() => null);
      const now = this.o.now();
      // Without a leader there is nobody to step down (and it sets its sources up once elected);
      // without the source the deployment partitions with the server's mapping.
      // A stream of one replica has no other server to lead it: a stepdown would do nothing.
      if (!info?.leader || info.sourceSilentMs === undefined || info.replicas < 2) {
        this.silentSince.delete(stream);
        continue;
      }
      const silent = info.sourceSilentMs;
      if (silent >= 0 && silent < this.o.stallMs) {
        this.silentSince.delete(stream);
        this.attempts.delete(stream);
        continue;
      }
      // -1 (never heard from it) counts from when this node first saw it so.
      const since = this.silentSince.get(stream) ?? now - Math.max(0, silent);
      this.silentSince.set(stream, since);
      if (now - since < this.o.stallMs) continue;
      if (this.coolingDown(stream, now) || this.stopped) continue;
      this.steppedAt.set(stream, now);
      this.attempts.set(stream, (this.attempts.get(stream) ?? 0) + 1);
      this.silentSince.delete(stream);
      try {
        await nats.stepDown(stream);
        metrics.sourceRestarts.inc({ partition: String(p) });
        stepped.push(stream);
        log.warn(
          { partition: p, stream, leader: info.leader, silentMs: silent < 0 ? now - since : silent },
          `${stream} stopped sourcing ${INGEST_STREAM}; stepped its leader down so that a new one sets the source up now, not on the server's backoff`,
        );
      } catch (err) {
        log.warn({ partition: p, stream, err: (err as Error).message }, `stepping ${stream} down failed`);
      }
    }
    return stepped;
  }

  /** Whether this node stepped `stream` down recently: its new leader is still setting up. */
  coolingDown(stream: string, now = this.o.now()): boolean {
    const at = this.steppedAt.get(stream);
    if (at === undefined) return false;
    const n = this.attempts.get(stream) ?? 1;
    return now - at < Math.min(60_000, this.o.cooldownMs * 2 ** Math.max(0, n - 1));
  }

  stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    return this.checking ?? Promise.resolve();
  }
}

/** The watchdog's NATS side, and what arms it: stream leader elections and quorum losses of
 * Partita's input streams (JetStream advisories), and the connection's own disconnects. */
export function startSourceWatchdog(
  nc: NatsConnection,
  jsm: JetStreamManager,
  opts: Omit<SourceWatchdogOptions, 'nats'>,
): { watchdog: SourceWatchdog; stop(): Promise<void> } {
  const watchdog = new SourceWatchdog({ ...opts, nats: natsSide(nc, jsm) });
  const subs: Subscription[] = ['LEADER_ELECTED', 'QUORUM_LOST'].map((what) =>
    nc.subscribe(`$JS.EVENT.ADVISORY.STREAM.${what}.*`, {
      callback: (err, m) => {
        if (err) return;
        const stream = m.subject.slice(m.subject.lastIndexOf('.') + 1);
        if (stream !== INGEST_STREAM && !stream.startsWith(IN_STREAM_PREFIX)) return;
        // The election a stepdown of ours caused is no news: arming on it would keep a source
        // that no stepdown cures checked, and stepped down, for ever.
        if (watchdog.coolingDown(stream)) return;
        watchdog.arm();
      },
    }),
  );
  void (async () => {
    for await (const s of nc.status()) if (s.type === 'disconnect' || s.type === 'reconnect') watchdog.arm();
  })().catch(() => undefined);
  watchdog.arm();
  return {
    watchdog,
    async stop() {
      for (const s of subs) s.unsubscribe();
      await watchdog.stop();
    },
  };
}

function natsSide(nc: NatsConnection, jsm: JetStreamManager): SourceWatchdogNats {
  return {
    async info(stream) {
      const i = await jsm.streams.info(stream).catch(() => null);
      if (!i) return null;
      const src = i.sources?.find((s) => s.name === INGEST_STREAM);
      return {
        leader: i.cluster?.leader,
        replicas: i.config.num_replicas,
        // `active` is in nanoseconds, -1 before the source was first heard from.
        sourceSilentMs: src ? (src.active < 0 ? -1 : src.active / 1e6) : undefined,
      };
    },
    async stepDown(stream) {
      const r = await nc.request(`$JS.API.STREAM.LEADER.STEPDOWN.${stream}`, '', { timeout: 5000 });
      const body = r.json<{ success?: boolean; error?: { code: number; description: string } }>();
      if (!body.success) throw new Error(body.error?.description ?? 'stepdown not acknowledged');
    },
  };
}
