// Per-partition gauges that must move even when a partition does not: consumer lag and checkpoint
// age. A runner updates lag after each batch it publishes, but a stuck partition publishes nothing,
// so its last value would freeze (often at 0) and no alert would fire. The monitor samples every
// owned partition from JetStream on a timer and before every scrape, and drops the series of
// partitions the node no longer owns, so `max by (partition)` over the fleet sees only the owner.
import type { JetStreamManager } from '@nats-io/jetstream';
import { Gauge } from 'prom-client';
import type { Logger } from './logger.js';
import type { NodeMetrics } from './metrics.js';

export interface LagSource {
  readonly partition: number;
  readonly stream: string;
  /** Highest sequence committed in LMDB. */
  readonly committedSeq: number;
  /** Epoch ms of the last commit; 0 before the first. */
  readonly lastCommitAt: number;
}

export class LagMonitor {
  private timer: NodeJS.Timeout | null = null;
  private sampling: Promise<void> | null = null;
  /** Owned partitions with series, and when this node first saw each run (for checkpoint age). */
  private readonly labelled = new Map<number, number>();

  constructor(
    private readonly jsm: JetStreamManager,
    private readonly metrics: NodeMetrics,
    private readonly sources: () => Iterable<LagSource>,
    private readonly log: Logger,
    /** @default 5000 */
    private readonly everyMs = 5000,
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.sample(), this.everyMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.sampling;
  }

  /**
   * Checkpoint age needs no I/O: set it synchronously (before a scrape). A partition that never
   * committed counts from when this node started running it, so it has a series from the start and
   * a first batch that never commits still ages (and pages).
   */
  refreshAges(now = Date.now()): void {
    const owned = new Set<number>();
    for (const s of this.sources()) {
      owned.add(s.partition);
      if (!this.labelled.has(s.partition)) this.labelled.set(s.partition, now);
      const since = s.lastCommitAt > 0 ? s.lastCommitAt : this.labelled.get(s.partition)!;
      this.metrics.checkpointAgeSeconds.set(
        { partition: String(s.partition) },
        Math.max(0, (now - since) / 1000),
      );
    }
    for (const p of this.labelled.keys()) {
      if (owned.has(p)) continue;
      // Every gauge labelled by partition alone (lag, checkpoint age, watermark lag, ...). Counters
      // stay: they are cumulative, and removing them would reset their rates.
      const label = { partition: String(p) };
      for (const m of this.metrics.registry.getMetricsAsArray()) {
        const names = (m as { labelNames?: readonly string[] }).labelNames;
        if (m instanceof Gauge && names?.length === 1 && names[0] === 'partition') m.remove(label);
      }
      this.labelled.delete(p);
    }
  }

  /** One sample of every owned partition; concurrent calls share it. */
  sample(): Promise<void> {
    this.sampling ??= this.sampleNow().finally(() => {
      this.sampling = null;
    });
    return this.sampling;
  }

  private async sampleNow(): Promise<void> {
    const now = Date.now();
    this.refreshAges(now);
    await Promise.all(
      [...this.sources()].map(async (s) => {
        const label = { partition: String(s.partition) };
        try {
          const info = await this.jsm.streams.info(s.stream);
          const behind = Math.max(0, info.state.last_seq - s.committedSeq);
          this.metrics.consumerLagMessages.set(label, behind);
          if (behind === 0) {
            this.metrics.consumerLagSeconds.set(label, 0);
            return;
          }
          // Lag in time: the age of the oldest event not yet committed.
          const next = Math.max(s.committedSeq + 1, info.state.first_seq);
          const m = await this.jsm.streams.getMessage(s.stream, { seq: next });
          if (m) this.metrics.consumerLagSeconds.set(label, Math.max(0, (now - m.time.getTime()) / 1000));
        } catch (err) {
          this.log.debug({ partition: s.partition, err: (err as Error).message }, 'lag sample failed');
        }
      }),
    );
  }
}
