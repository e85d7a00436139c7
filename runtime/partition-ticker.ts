// Keeps event time moving in an idle partition: while windows or timers wait and no message has
// come for `intervalMs`, the owner publishes a tick into the partition's own stream
// (`partita.in.<p>._tick.p<p>`). A tick carries nothing but its JetStream publish time, which is
// the processing time the partition's clock advances to; being in the stream, it is replayed
// like any event, so what it fires is fired again identically after a crash (and committed once).
import type { NatsConnection } from '@nats-io/transport-node';
import { AGG_PREFIX, TICK_TYPE } from './event-time.js';
import { IN_PREFIX } from './subjects.js';

export class PartitionTicker {
  private lastMessage = Date.now();
  /** Unknown until the first batch result: assume something waits, so one tick finds out. */
  private pending = true;
  /** The lowest watermark of the partition's time-aware actors, for the lag gauge. */
  watermark: number | null = null;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly partition: number,
    private readonly intervalMs: number,
    /** Only the provable owner ticks. */
    private readonly mayTick: () => boolean,
  ) {}

  start(): void {
    this.timer ??= setInterval(() => this.maybeTick(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  onMessage(): void {
    this.lastMessage = Date.now();
  }

  onResult(r: { timersPending: boolean; watermark: number | null }): void {
    this.pending = r.timersPending;
    if (r.watermark !== null) this.watermark = r.watermark;
  }

  private maybeTick(): void {
    if (!this.pending || Date.now() - this.lastMessage < this.intervalMs || !this.mayTick()) return;
    this.lastMessage = Date.now();
    this.nc.publish(`${IN_PREFIX}.${this.partition}.${TICK_TYPE}.p${this.partition}`, '');
  }
}

/** Emits on `partita.agg.>` (window results) are published without a per-message acknowledgement. */
export function isWindowResult(subject: string): boolean {
  return subject.startsWith(`${AGG_PREFIX}.`);
}
