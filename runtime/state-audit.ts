// The state audit: a node compares the state bucket with the states it owns, and stores again what
// the bucket lost or serves stale. The bucket is a replicated stream, and nats-server 2.9 can lose
// entries, or bring a removed one back, when a server is killed (see ARCHITECTURE.md, Known
// issues); its replicas then disagree, and whichever leads is what every reader sees. A node
// audits when the bucket's leader changes (a killed server's replica may lead now) and on a timer.
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { readKvLatest } from './kv-latest.js';
import type { Logger } from './logger.js';
import type { NodeMetrics } from './metrics.js';
import { scanStateBucket } from './state-scan.js';
import type { StateStore } from './state-store.js';
import { partitionOf, STATE_BUCKET, stateKvKey } from './subjects.js';

/** What the audit needs of a partition this node runs (a PartitionRunner). */
export interface AuditedPartition {
  readonly partition: number;
  /** Every state committed at or below this sequence is stored in the bucket. */
  readonly publishedSeq: number;
  repairStates(keys: readonly [string, string][], staleSeqs: readonly number[]): Promise<number>;
}

export interface AuditReport {
  /** Bucket entries read. */
  entries: number;
  /** States of owned partitions that the bucket should hold. */
  checked: number;
  missing: number;
  stale: number;
  /** States stored again. */
  repaired: number;
  /** Repaired states the leader still did not show afterwards (it was asked to step down). */
  unfixed: number;
}

export interface StateAuditorOptions {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  store: StateStore;
  partitions: number;
  log: Logger;
  metrics: NodeMetrics;
  owned: () => Iterable<AuditedPartition>;
  /** How often the bucket's leader is checked. @default 5000 */
  pollMs?: number;
  /** An audit this long after the leader changed (the replicas settle first). @default 5000 */
  settleMs?: number;
  /** An audit at least this often (0: only on leader changes). @default 600000 */
  everyMs?: number;
  /** Entries read per second at most. @default 100000 */
  ratePerSecond?: number;
}

/** Audits after the one that follows a leader change, this long after it. */
const FOLLOW_UP_MS = [30_000, 120_000] as const;

export class StateAuditor {
  private timer: NodeJS.Timeout | null = null;
  private leader: string | undefined;
  /** When audits are due (epoch ms, ascending). */
  private due: number[] = [];
  private running: Promise<unknown> | null = null;
  private lastAudit = Date.now();
  private stopped = false;

  constructor(private readonly opts: StateAuditorOptions) {}

  start(): void {
    this.timer = setInterval(() => void this.tick(), this.opts.pollMs ?? 5000);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.running?.catch(() => undefined);
  }

  private async tick(): Promise<void> {
    if (this.running || this.stopped) return;
    const now = Date.now();
    try {
      const info = await this.opts.jsm.streams.info(`KV_${STATE_BUCKET}`);
      const leader = info.cluster?.leader;
      if (leader && this.leader && leader !== this.leader) {
        this.opts.log.info({ from: this.leader, to: leader }, 'state bucket leader changed: auditing');
        // Soon, and twice more: a replica that came back from a kill may go wrong a while later.
        const settle = this.opts.settleMs ?? 5000;
        this.due = [now + settle, now + settle + FOLLOW_UP_MS[0], now + settle + FOLLOW_UP_MS[1]];
      }
      if (leader) this.leader = leader;
    } catch {
      return; // no leader right now: try again on the next tick
    }
    const every = this.opts.everyMs ?? 600_000;
    const periodic = every > 0 && now - this.lastAudit >= every;
    if ((this.due.length > 0 && now >= this.due[0]!) || periodic) {
      while (this.due.length > 0 && now >= this.due[0]!) this.due.shift();
      this.lastAudit = now;
      this.running = this.audit()
        .catch((err) => {
          // Try again soon: the bucket may be between leaders.
          this.due.unshift(Date.now() + (this.opts.settleMs ?? 5000));
          this.opts.log.warn({ err: (err as Error).message }, 'state audit failed; retrying');
        })
        .finally(() => {
          this.running = null;
        });
    }
  }

  /**
   * Reads the whole bucket on its leader and compares it with the states of the partitions this
   * node runs. A state is judged only if its partition had stored it before the audit began
   * (`publishedSeq`); then the bucket must hold it: no entry is missing, an older one is stale.
   * Both are stored again by the partition's runner.
   */
  async audit(): Promise<AuditReport> {
    const { js, jsm, store, partitions, log, metrics } = this.opts;
    const started = performance.now();
    const runners = new Map<number, AuditedPartition>();
    const published = new Map<number, number>();
    for (const r of this.opts.owned()) {
      runners.set(r.partition, r);
      published.set(r.partition, r.publishedSeq);
    }
    const report: AuditReport = { entries: 0, checked: 0, missing: 0, stale: 0, repaired: 0, unfixed: 0 };
    if (runners.size === 0) return report;
    // Bucket entries of owned partitions: `actor\0key` → [state seq, bucket seq].
    const seen = new Map<string, [number, number]>();
    const { read } = await scanStateBucket(
      js,
      jsm,
      log,
      this.opts.ratePerSecond ?? 100_000,
      (v, bucketSeq) => {
        if (published.has(partitionOf(v.key, partitions)))
          seen.set(`${v.actor}\u0000${v.key}`, [v.seq, bucketSeq]);
        return undefined;
      },
    );
    report.entries = read;
    // Per partition: the keys to store again, the state seq each must show, stale bucket entries.
    const wrong = new Map<number, { keys: [string, string][]; qs: number[]; staleSeqs: number[] }>();
    for (const { key, value } of store.states.getRange()) {
      const p = partitionOf(key[1], partitions);
      const upTo = published.get(p);
      if (upTo === undefined || value.q > upTo) continue;
      report.checked++;
      const entry = seen.get(`${key[0]}\u0000${key[1]}`);
      if (entry && entry[0] >= value.q) continue;
      const w = wrong.get(p) ?? { keys: [], qs: [], staleSeqs: [] };
      w.keys.push(key);
      w.qs.push(value.q);
      if (entry) {
        report.stale++;
        w.staleSeqs.push(entry[1]);
      } else report.missing++;
      wrong.set(p, w);
    }
    // A repair the leader does not show (it keeps a removed entry over later puts) means its replica
    // is bad: hand the leadership to another replica, whose copy the next audit checks. Only whole
    // repairs are checked: a partition that stored fewer lost its lease or changed those keys since.
    for (const [p, w] of wrong) {
      const stored = await runners.get(p)!.repairStates(w.keys, w.staleSeqs);
      report.repaired += stored;
      if (stored < w.keys.length) continue;
      for (const [i, [actor, key]] of w.keys.entries()) {
        const got = await readKvLatest(jsm, STATE_BUCKET, stateKvKey(actor, key)).catch(() => undefined);
        if ((got?.json<{ seq: number }>().seq ?? 0) < w.qs[i]!) report.unfixed++;
      }
    }
    if (report.unfixed > 0) {
      log.error(
        { unfixed: report.unfixed, leader: this.leader },
        "the state bucket's leader does not keep repaired states: asking it to step down",
      );
      await this.opts.nc
        .request(`$JS.API.STREAM.LEADER.STEPDOWN.KV_${STATE_BUCKET}`, undefined, { timeout: 5000 })
        .catch((err) => log.warn({ err: (err as Error).message }, 'state bucket leader stepdown failed'));
    }
    metrics.stateAudits.inc();
    if (report.missing > 0) metrics.stateRepairs.inc({ kind: 'missing' }, report.missing);
    if (report.stale > 0) metrics.stateRepairs.inc({ kind: 'stale' }, report.stale);
    const level = report.missing + report.stale > 0 ? 'error' : 'info';
    log[level](
      { ...report, ms: Math.round(performance.now() - started) },
      report.missing + report.stale > 0
        ? 'state audit: the state bucket lost or served stale states; stored them again'
        : 'state audit: the state bucket holds every owned state',
    );
    return report;
  }
}
