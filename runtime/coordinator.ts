// Membership and ownership on JetStream KV, with no consensus of our own. Every node heartbeats
// its key in `partita_nodes`, computes the same assignment from the live set (assignment.ts),
// takes the leases of the partitions assigned to it when they are free, and hands over the ones it
// should no longer run: checkpoint, publish, then delete the lease, so the next owner starts at once.
// A crashed node's keys expire after the lease TTL, and its partitions are taken then (at once
// on a delete marker where the server leaves one, else in the next periodic round).
import { type KV, KvWatchInclude } from '@nats-io/kv';
import { partitionsOf } from './assignment.js';
import { PartitaError } from './errors.js';
import { kvKeys } from './kv-keys.js';
import type { Logger } from './logger.js';
import { retryRefusals } from './nats-refusal.js';
import { type LeaseHolder, PartitionLease } from './partition-lease.js';
import { LEASES_BUCKET, NODES_BUCKET } from './subjects.js';

export interface CoordinatorOptions {
  /** The buckets NODES_BUCKET and LEASES_BUCKET, opened with Kvm. */
  nodes: KV;
  leases: KV;
  holder: LeaseHolder;
  partitions: number;
  leaseTtlMs: number;
  log: Logger;
  /** Extra facts published with the node's heartbeat (its metrics URL, say). */
  info?: Record<string, unknown>;
  /**
   * Starts the given partitions, whose leases were just taken. Called with several at once so a
   * restore reads the state bucket once; at most `maxConcurrentStarts` partitions per call.
   */
  start(leases: PartitionLease[]): Promise<void>;
  /** Stops a partition: `graceful` publishes what is committed; otherwise the lease is gone. */
  stop(partition: number, graceful: boolean): Promise<void>;
  /**
   * Most partitions started per round. Rounds run one at a time, and each restores its partitions in
   * one pass over the state bucket, so a node never runs two restores at once. @default all
   */
  maxConcurrentStarts?: number;
  /** A lease lost without release. */
  onLeaseLost?(partition: number): void;
  /** A refusal of the server that the coordinator waits out (nats-refusal.ts), by its code. */
  onRefusal?(code: string): void;
  /**
   * The connection of the buckets: while it is up, a start request that times out or finds no
   * responders (a leader election) is retried like a refusal. Without it, a timeout fails the start.
   */
  connection?: { isClosed(): boolean };
  /**
   * Expired entries of both buckets leave delete markers (`Topology.expiryMarkers`, 2.11+): the
   * watches see every change a round acts on, so the periodic round, a safety net then, runs every
   * TTL/2 instead of every 250 ms. @default false
   */
  expiryMarkers?: boolean;
}

export class Coordinator {
  private readonly held = new Map<number, PartitionLease>();
  private readonly busy = new Set<number>();
  private live: string[] = [];
  private running = false;
  private renewTimer: NodeJS.Timeout | null = null;
  private assignTimer: NodeJS.Timeout | null = null;
  private assigning: Promise<void> | null = null;
  private again = false;
  private stopWatch: (() => void) | null = null;
  private readonly renewing = new Set<Promise<void>>();
  private leaving = false;

  constructor(private readonly o: CoordinatorOptions) {}

  get owned(): number[] {
    return [...this.held.keys()].sort((a, b) => a - b);
  }

  get liveNodes(): string[] {
    return this.live;
  }

  async start(): Promise<void> {
    this.running = true;
    // A watch is a consumer, which the server can refuse for a while (a stream at its consumer
    // limit, no leader yet), and a request may go unanswered during an election: wait that out
    // rather than fail the node's start. A heartbeat and a watch are safe to send again.
    const retry = {
      log: this.o.log,
      count: this.o.onRefusal,
      going: () => this.running,
      nc: this.o.connection,
    };
    await retryRefusals(`announcing the node (stream KV_${NODES_BUCKET})`, () => this.heartbeat(), retry);
    const every = Math.max(100, Math.floor(this.o.leaseTtlMs / 4));
    this.renewTimer = setInterval(() => void this.renewAll(), every);
    this.assignTimer = setInterval(
      () => this.kick(),
      this.o.expiryMarkers ? Math.max(250, this.o.leaseTtlMs / 2) : Math.min(250, every),
    );
    // A released lease or a new node shows at once in the watch, and so does an expiry on
    // nats-server 2.11+, as a delete marker (topology.ts); 2.10 removes expired entries without
    // one, which the periodic round covers.
    const w = await retryRefusals(
      `watching the leases (stream KV_${LEASES_BUCKET})`,
      () => this.o.leases.watch({ include: KvWatchInclude.UpdatesOnly }),
      retry,
    );
    const n = await retryRefusals(
      `watching the nodes (stream KV_${NODES_BUCKET})`,
      () => this.o.nodes.watch({ include: KvWatchInclude.UpdatesOnly }),
      retry,
    ).catch((err) => {
      w.stop();
      throw err;
    });
    this.stopWatch = () => {
      w.stop();
      n.stop();
    };
    // Only changes of membership or ownership start a round: a lease taken, renewed or a node's
    // heartbeat changes nothing a round would act on, and each node renews every lease it holds
    // and heartbeats every TTL/4, which kept every node's rounds (a listing each) running back to
    // back. Deletes and expiry markers do start one, and so does a node not seen before.
    void (async () => {
      for await (const e of w) if (e.operation !== 'PUT') this.kick();
    })();
    void (async () => {
      for await (const e of n) if (e.operation !== 'PUT' || !this.live.includes(e.key)) this.kick();
    })();
    this.kick();
    await this.assigning;
  }

  /** Hands every partition over and leaves the cluster. */
  async stop(): Promise<void> {
    this.running = false;
    if (this.renewTimer) clearInterval(this.renewTimer);
    if (this.assignTimer) clearInterval(this.assignTimer);
    this.stopWatch?.();
    await this.assigning;
    // Renewals go on while partitions drain, so none lapses mid-handoff.
    const keepAlive = setInterval(
      () => void this.renewAll(),
      Math.max(100, Math.floor(this.o.leaseTtlMs / 4)),
    );
    try {
      await Promise.all(
        [...this.held.keys()].map(async (p) => {
          this.busy.add(p); // renewals go on, but a released lease is not a lost one
          await this.o.stop(p, true);
          await this.held.get(p)?.release();
          this.held.delete(p);
        }),
      );
    } finally {
      clearInterval(keepAlive);
    }
    // A heartbeat still in flight would write the entry back after the delete, and the others
    // would wait a whole TTL for a node that has gone.
    this.leaving = true;
    await Promise.allSettled([...this.renewing]);
    await this.o.nodes.delete(this.o.holder.node).catch(() => undefined);
  }

  /**
   * Runs `fn` on a held partition with no handoff or restart of it meanwhile (a replay); renewals go
   * on. If the lease is lost by the end, the partition is released and taken again as when fenced.
   */
  async exclusive<T>(p: number, fn: (lease: PartitionLease) => Promise<T>): Promise<T> {
    const lease = this.held.get(p);
    if (!this.running || !lease || this.busy.has(p) || !lease.valid()) {
      throw new PartitaError(
        'PARTITA_ERR_NOT_OWNER',
        `partition ${p} is not running on ${this.o.holder.node}`,
      );
    }
    this.busy.add(p);
    try {
      return await fn(lease);
    } finally {
      this.busy.delete(p);
      if (!lease.valid() && this.held.get(p) === lease) this.fenced(p);
      else this.kick();
    }
  }

  /** A partition stopped itself (its lease was not provably held): release and take it again. */
  fenced(p: number): void {
    const lease = this.held.get(p);
    if (!lease) return;
    if (this.busy.has(p)) {
      // Being started (or replayed): a runner that fenced itself during its start would otherwise
      // stay stopped for good while its lease goes on being renewed. Try again once that is over.
      const t = setTimeout(() => {
        if (this.running && this.held.get(p) === lease) this.fenced(p);
      }, 100);
      t.unref();
      return;
    }
    // Its local deadline passed without a renewal: for this node the lease expired.
    this.o.onLeaseLost?.(p);
    this.held.delete(p);
    this.busy.add(p);
    void (async () => {
      try {
        await this.o.stop(p, false);
        await lease.release();
      } catch (err) {
        this.o.log.warn({ partition: p, err: (err as Error).message }, 'releasing a fenced partition failed');
      } finally {
        this.busy.delete(p);
        this.kick();
      }
    })();
  }

  private kick(): void {
    if (!this.running) return;
    if (this.assigning) {
      this.again = true;
      return;
    }
    this.assigning = this.assign()
      .catch((err) => this.o.log.warn({ err: (err as Error).message }, 'assignment round failed'))
      .finally(() => {
        this.assigning = null;
        if (this.again) {
          this.again = false;
          this.kick();
        }
      });
  }

  private async heartbeat(): Promise<void> {
    if (this.leaving) return;
    await this.o.nodes.put(
      this.o.holder.node,
      JSON.stringify({ ...this.o.holder, ...this.o.info, at: Date.now(), partitions: this.owned }),
    );
  }

  private renewAll(): Promise<void> {
    const run = this.renewAllNow();
    this.renewing.add(run);
    const done = () => {
      this.renewing.delete(run);
    };
    run.then(done, done);
    return run;
  }

  private async renewAllNow(): Promise<void> {
    await this.heartbeat().catch((err) =>
      this.o.log.warn({ err: (err as Error).message }, 'heartbeat failed'),
    );
    await Promise.all(
      [...this.held].map(async ([p, lease]) => {
        if (await lease.renew()) return;
        if (this.busy.has(p)) return; // a handoff in progress deals with it
        this.o.log.warn({ partition: p }, 'lease lost: stopping the partition without publishing');
        this.held.delete(p);
        this.o.onLeaseLost?.(p);
        this.busy.add(p);
        try {
          await this.o.stop(p, false);
        } finally {
          this.busy.delete(p);
        }
        this.kick();
      }),
    );
  }

  private async listNodes(): Promise<string[]> {
    // Not `nodes.keys()`: that leaves a consumer behind on every call (kv-keys.ts).
    const listing = kvKeys(this.o.nodes);
    listing.catch(() => undefined); // a listing given up on below may fail later
    // After a stall (SIGSTOP, a lost connection) the requests can hang until their timeout, and a
    // hung round would hold up every later one: give up sooner, keeping the last view.
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error('listing the nodes took too long')),
        Math.max(1000, this.o.leaseTtlMs),
      );
    });
    try {
      const nodes = new Set<string>([this.o.holder.node, ...(await Promise.race([listing, late]))]);
      return [...nodes].sort();
    } finally {
      clearTimeout(timer);
    }
  }

  private async assign(): Promise<void> {
    this.live = await this.listNodes();
    const mine = partitionsOf(this.o.holder.node, this.live, this.o.partitions);
    // Hand over what is no longer ours.
    const handoffs = [...this.held.keys()].filter((p) => !mine.has(p) && !this.busy.has(p));
    await Promise.all(
      handoffs.map(async (p) => {
        this.busy.add(p);
        try {
          await this.o.stop(p, true);
          await this.held.get(p)?.release();
          this.held.delete(p);
          this.o.log.info({ partition: p }, 'partition handed over');
        } finally {
          this.busy.delete(p);
        }
      }),
    );
    // Take what is ours and free, a few at a time.
    const want = [...mine].filter((p) => !this.held.has(p) && !this.busy.has(p));
    const max = this.o.maxConcurrentStarts ?? Number.POSITIVE_INFINITY;
    const taken: PartitionLease[] = [];
    for (const p of want) {
      if (taken.length >= max || !this.running) break;
      const lease = new PartitionLease(
        this.o.leases,
        p,
        this.o.holder,
        this.o.leaseTtlMs,
        undefined,
        this.o.onRefusal,
      );
      if (await lease.acquire()) taken.push(lease);
    }
    if (taken.length === 0) return;
    for (const l of taken) {
      this.held.set(l.partition, l);
      this.busy.add(l.partition);
    }
    try {
      await this.o.start(taken);
      this.o.log.info({ partitions: taken.map((l) => l.partition) }, 'partitions taken');
    } catch (err) {
      this.o.log.error({ err: (err as Error).message }, 'starting partitions failed; releasing them');
      for (const l of taken) {
        await this.o.stop(l.partition, false).catch(() => undefined);
        await l.release();
        this.held.delete(l.partition);
      }
    } finally {
      for (const l of taken) this.busy.delete(l.partition);
    }
    // More may be waiting (the cap above): go round again.
    if (want.length > taken.length) this.again = true;
  }
}
