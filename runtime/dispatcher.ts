// Gathers the batches that partitions have ready and hands them to the worker pool together: one
// piscina round trip and one LMDB transaction (group commit) for all of them. A partition still
// has at most one batch in flight; the dispatcher only shares the trip.
//
// It also keeps one partition's poison from holding the others (see ARCHITECTURE.md, "Poison
// events"): it watches every task's calls into actor code and stops a call that runs past the
// time limit; a task that ended before its commit (stopped, or its worker died) runs again with
// the call that ended it marked poisoned, each of its batches in a task of its own; and a
// partition whose batch failed travels alone until one of its batches succeeds.
import { unpack } from 'msgpackr';
import type { Piscina } from 'piscina';
import { type Poison, quoteKey } from './batch.js';
import { type Delivery, encodeBatches, type OutgoingBatch } from './batch-codec.js';
import type { BatchOutcome, BatchResult, BatchTask } from './batch-worker.js';
import { type RecordedCall, TaskWatch, watchBuffer } from './handler-watchdog.js';
import type { Logger } from './logger.js';

interface Pending {
  batch: OutgoingBatch;
  resolve: (r: BatchResult) => void;
  reject: (e: unknown) => void;
}

/** How a task ended. */
type TaskEnd =
  | { kind: 'answered'; outcomes: BatchOutcome[] }
  /** A call ran past the limit, or its worker died in it; nothing of the task was committed. */
  | { kind: 'poisoned'; batch: number; poison: Poison }
  /** `rerun`: the task surely committed nothing, so its batches may run again. */
  | { kind: 'failed'; err: unknown; rerun: boolean };

export interface DispatcherOptions {
  /** Tasks running at once; more batches wait and join the next task, which is how batches grow under load. */
  maxInFlight: number;
  /** The actors in the order the workers load them (the watchdog names an actor by its index). */
  actorNames: readonly string[];
  /** Longest a call into actor code may run on one event, ms. */
  handlerTimeoutMs: number;
  /** Loses every n-th task's answer after the worker committed it (an injected fault). */
  loseEvery?: number;
  /** A call ran past the limit and its worker was stopped. */
  onTimeout?: (actor: string) => void;
  log?: Logger;
}

export class BatchDispatcher {
  private pending: Pending[] = [];
  private scheduled = false;
  private inFlight = 0;
  private tasks = 0;
  private closed = false;
  /** Partitions whose last batch failed: their batches travel alone until one succeeds. */
  private readonly alone = new Set<number>();
  private readonly watched = new Map<TaskWatch, (call: RecordedCall) => void>();
  private timer: NodeJS.Timeout | undefined;
  /** How often running tasks are sampled: a call is stopped within the limit plus this. */
  private readonly periodMs: number;

  constructor(
    private readonly pool: Piscina,
    private readonly opts: DispatcherOptions,
  ) {
    this.periodMs = Math.max(10, Math.min(250, opts.handlerTimeoutMs / 10));
  }

  /** Loads actors and opens LMDB in every worker before the first event arrives. */
  async warm(threads: number): Promise<void> {
    await Promise.all(
      Array.from({ length: threads }, () =>
        this.pool.run({ batches: encodeBatches([]) } satisfies BatchTask),
      ),
    );
  }

  submit(partition: number, epoch: number, deliveries: readonly Delivery[]): Promise<BatchResult> {
    return new Promise((resolve, reject) => {
      this.pending.push({ batch: { partition, epoch, deliveries }, resolve, reject });
      this.schedule();
    });
  }

  /** Before the pool is destroyed: tasks it ends are failures, not poison. */
  close(): void {
    this.closed = true;
  }

  private schedule(): void {
    if (this.scheduled || this.inFlight >= this.opts.maxInFlight || this.pending.length === 0) return;
    this.scheduled = true;
    // On the next turn, so that batches submitted in this one travel together.
    setImmediate(() => {
      this.scheduled = false;
      this.dispatch();
    });
  }

  private dispatch(): void {
    if (this.inFlight >= this.opts.maxInFlight || this.pending.length === 0) return;
    const all = this.pending;
    this.pending = [];
    const shared = all.filter((g) => !this.alone.has(g.batch.partition));
    const units = shared.length > 0 ? [shared] : [];
    for (const g of all) if (this.alone.has(g.batch.partition)) units.push([g]);
    for (const unit of units) {
      this.inFlight++;
      void this.run(unit).finally(() => {
        this.inFlight--;
        this.schedule();
      });
    }
  }

  /** Runs a group of batches until each is answered or has failed. */
  private async run(group: Pending[]): Promise<void> {
    const end = await this.runTask(group.map((g) => g.batch));
    if (end.kind === 'answered') {
      for (const [i, g] of group.entries()) {
        const o = end.outcomes[i];
        if (o && !('failed' in o)) {
          this.alone.delete(g.batch.partition);
          g.resolve(o);
        } else {
          this.alone.add(g.batch.partition);
          g.reject(new Error(o?.failed ?? 'the worker gave no answer for this batch'));
        }
      }
      return;
    }
    if (end.kind === 'failed' && (!end.rerun || group.length === 1)) {
      if (group.length === 1) this.alone.add(group[0]!.batch.partition);
      for (const g of group) g.reject(end.err);
      return;
    }
    if (end.kind === 'poisoned') {
      const b = group[end.batch]!.batch;
      b.poisoned = [...(b.poisoned ?? []), end.poison];
    }
    // Nothing of the task was committed. Again, each batch in a task of its own: one partition's
    // poison delays the others by one run at most.
    if (group.length === 1) return this.run(group);
    await Promise.all(group.map((g) => this.run([g])));
  }

  private async runTask(batches: OutgoingBatch[]): Promise<TaskEnd> {
    const buf = encodeBatches(batches);
    const watch = new TaskWatch(watchBuffer());
    const abort = new AbortController();
    let overran: RecordedCall | undefined;
    this.watch(watch, (call) => {
      overran = call;
      // piscina terminates the thread running an aborted task and starts another in its place.
      abort.abort();
    });
    const task: BatchTask = { batches: buf, watch: watch.buffer };
    try {
      const out = (await this.pool.run(task, {
        transferList: [buf.buffer],
        signal: abort.signal,
      })) as Uint8Array;
      if (this.opts.loseEvery && ++this.tasks % this.opts.loseEvery === 0)
        return {
          kind: 'failed',
          err: new Error('injected fault: the worker committed, its answer was lost'),
          rerun: false,
        };
      return { kind: 'answered', outcomes: unpack(out) as BatchOutcome[] };
    } catch (err) {
      if (this.closed) return { kind: 'failed', err, rerun: false };
      const call = overran ?? watch.diedIn();
      if (call && batches[call.batch]) {
        const poison = this.poisonOf(call, overran ? undefined : err);
        this.opts.log?.warn(
          {
            partition: batches[call.batch]!.partition,
            seq: call.seq,
            actor: poison.actor,
            err: poison.reason,
          },
          overran ? 'handler ran past its time limit: worker replaced' : 'worker died in a handler',
        );
        if (overran) this.opts.onTimeout?.(poison.actor);
        return { kind: 'poisoned', batch: call.batch, poison };
      }
      return { kind: 'failed', err, rerun: watch.uncommitted() };
    } finally {
      this.unwatch(watch);
    }
  }

  /** The dead letter of a call that overran (no error) or whose worker died of `err`. */
  private poisonOf(call: RecordedCall, err: unknown): Poison {
    const actor = this.opts.actorNames[call.actor] ?? `actor #${call.actor}`;
    const what = call.fire
      ? `onTimer/onWindow of key ${quoteKey(call.key)}`
      : `handler on key ${quoteKey(call.key)}`;
    const timedOut = err === undefined;
    return {
      seq: call.seq,
      actor,
      key: call.key,
      fire: call.fire,
      code: timedOut ? 'PARTITA_ERR_HANDLER_TIMEOUT' : 'PARTITA_ERR_HANDLER',
      reason: timedOut
        ? `${what} ran longer than ${this.opts.handlerTimeoutMs} ms; its worker thread was stopped`
        : `${what}: its worker thread died (${err instanceof Error ? err.message : String(err)})`,
    };
  }

  private watch(w: TaskWatch, onOverrun: (call: RecordedCall) => void): void {
    // A limit of 0 (or none) turns the watchdog off.
    if (!(this.opts.handlerTimeoutMs > 0)) return;
    this.watched.set(w, onOverrun);
    this.timer ??= setInterval(() => {
      const now = performance.now();
      for (const [t, f] of this.watched) {
        const call = t.overrun(now, this.opts.handlerTimeoutMs);
        if (call) f(call);
      }
    }, this.periodMs);
  }

  private unwatch(w: TaskWatch): void {
    this.watched.delete(w);
    if (this.watched.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }
}
