// A partition's lease in the `partita_leases` bucket: acquired with create (fails if held),
// renewed with a compare-and-set update on the revision, released with a delete on that revision.
// The revision at acquisition is the lease's epoch: it grows with every new owner, and it is
// written into checkpoints and published state so that older epochs can be told apart.
import type { KV } from '@nats-io/kv';
import { passingRefusal } from './nats-refusal.js';

export interface LeaseHolder {
  node: string;
  /** Tells apart two runs of the same node id (a restart on the same data dir). */
  instance: string;
}

export class PartitionLease {
  /** Revision at acquisition. */
  epoch = 0;
  private revision = 0;
  /** Local time until which the lease is provably ours: last renewal sent + TTL − margin. */
  private deadline = 0;
  private lost = false;
  /** Renewals and the release run one after another: a delete racing an update would carry a stale revision. */
  private pending: Promise<unknown> = Promise.resolve();
  readonly key: string;

  constructor(
    private readonly kv: KV,
    readonly partition: number,
    private readonly holder: LeaseHolder,
    private readonly ttlMs: number,
    /** Safety margin against clock rate drift and the server's expiry timer. */
    private readonly marginMs = Math.min(500, ttlMs / 4),
    /** A renewal or release the server refused for a while and that was sent again, by code. */
    private readonly onRefusal?: (code: string) => void,
  ) {
    this.key = `p${partition}`;
  }

  /** True while no other node can have acquired the partition. Checked before every commit and publish. */
  valid(): boolean {
    return !this.lost && performance.now() < this.deadline;
  }

  /** Takes the lease if it is free, or held by an earlier run of this very node. */
  async acquire(): Promise<boolean> {
    const sent = performance.now();
    const value = JSON.stringify({ ...this.holder, at: Date.now() });
    try {
      this.revision = await this.kv.create(this.key, value);
    } catch {
      // Held. If by a previous run of this node (killed, restarted on the same data dir), take it
      // over at once rather than wait for it to expire.
      const cur = await this.kv.get(this.key).catch(() => null);
      if (cur?.operation !== 'PUT') return false;
      const h = cur.json<LeaseHolder>();
      if (h.node !== this.holder.node || h.instance === this.holder.instance) return false;
      try {
        this.revision = await this.kv.update(this.key, value, cur.revision);
      } catch {
        return false;
      }
    }
    this.epoch = this.revision;
    this.deadline = sent + this.ttlMs - this.marginMs;
    this.lost = false;
    return true;
  }

  /** Renews; false means the lease is gone (expired and maybe taken): stop at once. */
  renew(): Promise<boolean> {
    const run = this.pending.then(() => this.renewNow());
    this.pending = run.catch(() => undefined);
    return run;
  }

  private async renewNow(): Promise<boolean> {
    if (this.lost) return false;
    for (let wait = 25; ; wait = Math.min(wait * 2, 200)) {
      const sent = performance.now();
      try {
        this.revision = await this.kv.update(
          this.key,
          JSON.stringify({ ...this.holder, at: Date.now() }),
          this.revision,
        );
        this.deadline = sent + this.ttlMs - this.marginMs;
        return true;
      } catch (err) {
        // A timeout is not proof of loss, but neither is it proof of ownership: only the deadline
        // keeps the lease valid until the next attempt.
        if (!this.valid()) this.lost = true;
        // A refusal that passes stored nothing: send the same update again at once rather than at
        // the next renewal, which can come after the deadline. On 2.11+ a new leader of the
        // bucket refuses compare-and-set writes (10163) until it has applied its log.
        const code = passingRefusal(err);
        if (code === undefined || !this.valid()) return this.valid();
        this.onRefusal?.(code);
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  /** Gives the partition up so the next owner starts at once. */
  release(): Promise<void> {
    const run = this.pending.then(() => this.releaseNow());
    this.pending = run.catch(() => undefined);
    return run;
  }

  private async releaseNow(): Promise<void> {
    this.lost = true;
    // The delete is conditional on our revision, so it can never remove another owner's lease.
    // Retried: a release that does not reach the server leaves the partition idle for a whole TTL.
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await this.kv.delete(this.key, { previousSeq: this.revision });
        return;
      } catch (err) {
        // Another revision means another owner already (or an expiry): nothing of ours to delete.
        if (/wrong last sequence/i.test((err as Error).message)) return;
        const code = passingRefusal(err);
        if (code !== undefined) {
          this.onRefusal?.(code);
          await new Promise((r) => setTimeout(r, 100 * (attempt + 1)));
        }
      }
    }
  }

  /** Marks the lease lost without touching the bucket (another node owns it now). */
  abandon(): void {
    this.lost = true;
  }
}
