// Runs one partition on this node: pulls its events, hands batches to the worker pool (one batch
// in flight at a time, which is what keeps per-key order), publishes what each commit produced,
// and only then acknowledges. See ARCHITECTURE.md, "Checkpoint protocol".
import {
  AckPolicy,
  type ConsumerMessages,
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from '@nats-io/jetstream';
import { type MsgHdrs, type NatsConnection, headers as natsHeaders } from '@nats-io/transport-node';
import type { AckedPublisher, Outgoing, Stored } from './acked-publisher.js';
import { deliveryOf } from './batch-codec.js';
import type { BatchResult } from './batch-worker.js';
import {
  CHANGELOG_STREAM,
  ChangelogFencedError,
  type ChangelogRecord,
  type ChangelogWriter,
  changelogSubject,
  decodeMessage,
  setChangelogPosition,
} from './changelog.js';
import { consumerNames } from './consumer-names.js';
import { deadLetterMessage, EPOCH_HEADER, PARTITION_HEADER, producerSubject } from './dead-letter.js';
import type { BatchDispatcher } from './dispatcher.js';
import { PartitaError } from './errors.js';
import { type Logger, RepeatedLog } from './logger.js';
import type { NodeMetrics } from './metrics.js';
import { retryRefusals } from './nats-refusal.js';
import type { PartitionLease } from './partition-lease.js';
import { PartitionTicker } from './partition-ticker.js';
import { emitInfo, type OutputInfo, refusedOutput, stateInfo } from './refused-output.js';
import { serverFeatures } from './server-features.js';
import { stateChangeJson } from './state-change.js';
import type { Checkpoint, Outbox, StateRecord, StateStore } from './state-store.js';
import { consumerPrefix, inStream, partitionOf, STATE_BUCKET, STATE_PREFIX, stateKvKey } from './subjects.js';

export interface PartitionDeps {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  dispatcher: BatchDispatcher;
  /** Stored publishing of outputs (acknowledged by their streams). */
  publisher: AckedPublisher;
  store: StateStore;
  metrics: NodeMetrics;
  log: Logger;
  nodeId: string;
  /** The runner stopped itself because its lease was not provably held. */
  onFenced: (partition: number) => void;
  /** Most events handed to a worker at once. */
  maxBatch: number;
  /** Partitions of the deployment (the key → partition mapping). */
  partitions: number;
  /** A deliberate defect (NodeOptions.faults): acknowledge on arrival, before the commit. */
  ackBeforeCommit?: boolean;
  /** Some actor uses event time: tick idle partitions every this many ms (0: never). */
  tickMs?: number;
  /** Repeated failures (dead letters, publishing retries) as one line per kind and interval. */
  repeated?: RepeatedLog;
  /** Publish a batch's state changes as atomic batches (nats-server 2.12+, `allow_atomic` on the
   * state bucket; see `atomicStatesAvailable`). */
  atomicStates?: boolean;
  /** Recovery by changelog: snapshot a partition once the batches in its changelog since the last
   * snapshot outgrow both this and that snapshot. */
  snapshotBytes?: number;
}

/** An event to dead-letter, as its stream holds it. */
export interface Original {
  subject: string;
  data: Uint8Array;
  headers?: MsgHdrs;
}

/** One output on its way: what it is (for dead letters and logs), and for dead letters their code. */
interface Item {
  out: Outgoing;
  info: () => OutputInfo;
  code?: string;
  message?: string;
  /** A refused output's dead letter, with its payload or already without. */
  refusal?: 'payload' | 'bare';
}

export type PartitionStatus = 'STARTING' | 'RUNNING' | 'STOPPING' | 'STOPPED' | 'FAILED';

const KV_STATE_PREFIX = `$KV.${STATE_BUCKET}.`;
const nanos = (ms: number) => ms * 1_000_000;
/** How long one attempt waits for the streams to acknowledge a batch's outputs. */
const PUBLISH_TIMEOUT_MS = 5000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Recovery by changelog: how far (in input events) the state bucket's export may lag the commits. */
const MAX_EXPORT_LAG_EVENTS = 1_000_000;
/** Recovery by changelog: batches in a partition's changelog before it snapshots (at least). */
const DEFAULT_SNAPSHOT_BYTES = 64 * 1024 * 1024;
/** Changelog messages the export reads at a time. */
const EXPORT_FETCH = 1024;
/** How long the export waits between rounds: how stale the state bucket may be, besides a round. */
const EXPORT_INTERVAL_MS = Number(process.env.PARTITA_EXPORT_INTERVAL_MS ?? 1000);

/** A partition's consumer is named after the lease epoch that created it: acks a former owner
 * still sends go to its own, deleted, consumer and cannot move the new owner's ack floor. */
export function consumerName(partition: number, epoch: number, serial = 0): string {
  return `${consumerPrefix(partition)}${epoch}${serial > 0 ? `-r${serial}` : ''}`;
}

export class PartitionRunner {
  status: PartitionStatus = 'STARTING';
  /** Highest sequence committed in LMDB for this partition. */
  committedSeq = 0;
  /** Every state committed at or below this sequence is stored in the state bucket. */
  publishedSeq = 0;
  lastCommitAt = 0;
  /** When the partition last committed or finished publishing a batch (or started, or went idle). */
  private lastProgressAt = Date.now();
  private lastQueuedSeq = 0;
  private queue: JsMsg[] = [];
  private busy: Promise<void> | null = null;
  private scheduled = false;
  private messages: ConsumerMessages | null = null;
  /** The consumer being read, and how many this run has created (a resume that cannot reset makes a fresh one). */
  private consumer = '';
  private consumers = 0;
  /** Delivery stopped until the queue is published and a fresh consumer starts at the checkpoint. */
  private resuming = false;
  /** Publishing of committed batches, in commit order, off the compute path. */
  private publishing: Promise<void> = Promise.resolve();
  private unpublished = 0;
  private fenced = false;
  /**
   * Rebuilding from the input stream (the state bucket lost keys; see restore.ts) up to this
   * sequence: the outputs of events up to it were stored by earlier owners, so batches up to it
   * publish nothing, and reaching it publishes the partition's states whole. 0: not rebuilding.
   */
  private rebuildTo = 0;
  /** Recovery by changelog: every state committed at or below this input position is exported. */
  private exportedTo = 0;
  /** The export of the changelog to the state bucket, while it runs. */
  private exporting: Promise<void> | null = null;
  /** A snapshot of the partition into its changelog, while one is written. */
  private snapshotting: Promise<void> | null = null;
  private readonly label: { partition: string };
  private readonly log: Logger;
  private readonly repeated: RepeatedLog;
  /** The partition's input stream. */
  readonly stream: string;
  /** Event time for idle partitions; see partition-ticker.ts. */
  readonly ticker: PartitionTicker | undefined;

  constructor(
    readonly partition: number,
    private readonly deps: PartitionDeps,
    /** Proof of ownership: checked before every batch and every publish. */
    readonly lease: PartitionLease,
    /** Some node has run this partition before (so a gap at the start is a loss). */
    private readonly everOwned = true,
    /** Recovery by changelog: this owner's claim on the partition's changelog (changelog.ts). */
    private readonly writer?: ChangelogWriter,
  ) {
    this.label = { partition: String(partition) };
    this.stream = inStream(partition);
    this.log = deps.log.child({ partition });
    this.repeated = deps.repeated ?? new RepeatedLog(deps.log);
    if (deps.tickMs)
      this.ticker = new PartitionTicker(
        deps.nc,
        partition,
        deps.tickMs,
        () => this.status === 'RUNNING' && !this.fenced && this.lease.valid(),
      );
  }

  async start(): Promise<void> {
    const cp = this.deps.store.checkpoint(this.partition);
    this.committedSeq = cp?.seq ?? 0;
    this.lastCommitAt = cp?.at ?? 0;
    this.lastQueuedSeq = this.committedSeq;
    this.rebuildTo = this.writer
      ? 0
      : ((this.deps.store.meta.get(['rb', this.partition]) as number | undefined) ?? 0);
    const outboxes = [...this.deps.store.outboxes(this.partition)];
    // A rebuilding batch publishes nothing: its outputs are stored already. With a changelog, the
    // restore left only batches whose entries (appended after their outputs) it read.
    if (!this.writer) await this.recoverOutboxes(outboxes.filter((ob) => ob.seq > this.rebuildTo));
    for (const ob of outboxes) await this.deps.store.deleteOutbox(this.partition, ob.seq);
    if (this.rebuildTo > 0 && this.committedSeq >= this.rebuildTo && !(await this.finishRebuild()))
      throw new Error(`partition ${this.partition}: lease lapsed while publishing its rebuilt states`);
    // Every outbox is published: what is committed is stored (a rebuild has stored nothing yet).
    this.publishedSeq = this.rebuildTo > 0 ? 0 : this.committedSeq;
    // A partition's stream holds only its own events, so sequences are contiguous: a checkpoint
    // below the stream's first sequence means retention dropped events the state never saw.
    const first = (await this.deps.jsm.streams.info(this.stream)).state.first_seq;
    if (this.committedSeq + 1 < first) {
      if (this.committedSeq > 0 || this.everOwned) {
        this.failClosed(
          `checkpoint at ${this.committedSeq}, the stream starts at ${first}${this.rebuildTo > 0 ? ' (a rebuild of lost state needs every event)' : ''}`,
        );
        return;
      }
      // Never processed by anyone: start at the first event the stream still has.
      this.lastQueuedSeq = first - 1;
    }
    await this.createConsumer(this.lastQueuedSeq + 1);
    this.log.info(
      { epoch: this.lease.epoch, checkpoint: this.committedSeq, from: this.lastQueuedSeq + 1 },
      'partition running',
    );
    this.status = 'RUNNING';
    this.lastProgressAt = Date.now();
    this.ticker?.start();
    if (this.writer) this.exporting = this.exportChangelog();
    await this.consume();
  }

  /**
   * How long the partition has had work waiting (events queued, a batch being computed or
   * published) without committing or publishing any of it; 0 while it progresses or is idle. A
   * partition failed closed holds its lease and does no work at all: it counts from its failure.
   */
  stalledMs(now = Date.now()): number {
    if (this.status === 'FAILED') return now - this.lastProgressAt;
    if (this.status !== 'RUNNING') return 0;
    const waiting = this.queue.length > 0 || this.busy !== null || this.unpublished > 0;
    if (!waiting) {
      this.lastProgressAt = now;
      return 0;
    }
    return now - this.lastProgressAt;
  }

  /**
   * The lease is not provably held: commit and publish nothing more, stop consuming, and tell the
   * coordinator, which releases the lease and takes the partition again (from this node's
   * checkpoint and outboxes) if it is still assigned here. Nothing queued is lost: it is after
   * the checkpoint, so the next run fetches it again.
   */
  private fence(): void {
    if (this.fenced) return;
    this.fenced = true;
    this.log.warn(
      { epoch: this.lease.epoch, checkpoint: this.committedSeq, queued: this.lastQueuedSeq },
      'lease not provably held: stopping the partition until it is taken again',
    );
    this.status = 'STOPPING';
    this.queue = [];
    this.messages?.stop();
    setImmediate(() => this.deps.onFenced(this.partition));
  }

  /** Stops the partition for good on a gap in its events, holding the lease so nobody skips it. */
  private failClosed(why: string): void {
    const err = new PartitaError('PARTITA_ERR_RETENTION_GAP', `partition ${this.partition}: ${why}`);
    this.log.error({ code: err.code }, err.message);
    this.deps.metrics.retentionGaps.inc(this.label);
    this.status = 'FAILED';
    this.lastProgressAt = Date.now();
    this.queue = [];
    this.messages?.stop();
  }

  /**
   * Stops taking events, finishes the batch in flight and publishes its outputs, unless the lease
   * is gone: then nothing more is published (a new owner may already run the partition).
   */
  async stop(): Promise<void> {
    if (this.status === 'STOPPED') return;
    if (this.status === 'FAILED') {
      // Its last published batch's delete may still be held back (see below).
      await this.deps.store.flushOutboxDeletes();
      this.status = 'STOPPED';
      return;
    }
    this.status = 'STOPPING';
    this.ticker?.stop();
    this.queue = [];
    this.messages?.stop();
    await this.busy;
    await this.publishing;
    await this.snapshotting;
    await this.exporting;
    // A replay or a restore may write this partition's outboxes next: none of its held-back
    // deletes may land after them.
    await this.deps.store.flushOutboxDeletes();
    this.status = 'STOPPED';
    this.log.info({ epoch: this.lease.epoch, checkpoint: this.committedSeq }, 'partition stopped');
  }

  private async createConsumer(startSeq: number): Promise<void> {
    const { jsm } = this.deps;
    if (!this.lease.valid()) throw new Error(`lease of partition ${this.partition} lost`);
    const name = consumerName(this.partition, this.lease.epoch, this.consumers++);
    // The consumer's position is not the truth (the LMDB checkpoint is): recreate it at the
    // checkpoint so nothing waits for an ack timeout after a crash. The new consumer comes first
    // and the former ones (earlier owners', earlier runs') go after: a new owner resumes at the
    // highest acknowledged position over the partition's consumers, so there is never a moment
    // with none, which would send it back to the start of the stream.
    // A refusal that passes (the stream at its consumer limit, a leader not ready) is waited out
    // while the lease is held; the lease is renewed meanwhile, and a lost one ends the wait.
    const refusals = {
      log: this.log,
      count: (code: string) => this.deps.metrics.natsRefusals.inc({ code }),
      going: () => this.lease.valid() && this.status !== 'STOPPING' && this.status !== 'STOPPED',
      // A durable of the same name and config: a resend after a timeout finds the first one.
      nc: this.deps.nc,
    };
    await retryRefusals(
      `creating consumer ${name} on ${this.stream}`,
      () =>
        jsm.consumers.add(this.stream, {
          durable_name: name,
          ack_policy: AckPolicy.All,
          ack_wait: nanos(120_000),
          // Flow control: the server delivers at most this many events past the last ack (acks come
          // after commit and publish), which bounds what a partition buffers.
          max_ack_pending: this.deps.maxBatch * 3,
          description: `owner=${this.deps.nodeId}`,
          ...(startSeq > 1
            ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: startSeq }
            : { deliver_policy: DeliverPolicy.All }),
        }),
      refusals,
    );
    this.consumer = name;
    // By name: a listing leaves out consumers whose leaders are slow to answer, which would stay.
    for (const other of await consumerNames(jsm, this.stream)) {
      if (other.startsWith(consumerPrefix(this.partition)) && other !== name) {
        await jsm.consumers.delete(this.stream, other).catch(() => undefined);
      }
    }
  }

  /**
   * Moves this run's consumer back to `startSeq`. On nats-server 2.14+ it is reset in place
   * (ADR-60: delivery restarts there and its acknowledged position becomes `startSeq - 1`), so a
   * resume creates and deletes no consumer; older servers, or a reset the server refuses, get a
   * fresh consumer. Fencing is unchanged: a reset, like a creation, is sent only under the lease,
   * and it can only move this epoch's consumer, which a newer owner deletes and does not count.
   */
  private async consumeFrom(startSeq: number): Promise<void> {
    if (this.consumer !== '' && serverFeatures(this.deps.nc).consumerReset) {
      if (!this.lease.valid()) throw new Error(`lease of partition ${this.partition} lost`);
      try {
        await this.deps.jsm.consumers.reset(this.stream, this.consumer, startSeq);
        this.log.info({ consumer: this.consumer, from: startSeq }, 'consumer reset to the checkpoint');
        return;
      } catch (err) {
        this.log.warn(
          { consumer: this.consumer, err: (err as Error).message },
          'resetting the consumer failed; creating a fresh one',
        );
      }
    }
    await this.createConsumer(startSeq);
  }

  private async consume(): Promise<void> {
    const consumer = await this.deps.js.consumers.get(this.stream, this.consumer);
    const messages = await consumer.consume({
      max_messages: this.deps.maxBatch,
      expires: 5000,
      callback: (m) => this.onMessage(m),
    });
    this.messages = messages;
    // nats.js re-pulls after timeouts and missed heartbeats itself; if the consume ends for another
    // reason (the consumer was deleted), start again from the checkpoint.
    void messages.closed().then((err) => {
      if (this.messages !== messages) return;
      this.resume(`consume ended${err ? `: ${(err as Error).message}` : ''}`);
    });
    // A deleted consumer is retried by nats.js forever: resume with a fresh one instead.
    // (`abort_on_missing_resource` would do it too, but it also ends the consume when heartbeats
    // are missed after the main thread froze, which left the node unresponsive for seconds.)
    void (async () => {
      for await (const s of messages.status()) {
        if (s.type === 'consumer_deleted' && this.messages === messages) {
          this.consumer = ''; // nothing left to reset: the resume creates a fresh one
          this.resume('consumer deleted');
        }
      }
    })().catch(() => undefined);
  }

  /**
   * Consumes again from the checkpoint: after a delivery gap (a pull whose events were lost with a
   * NATS server: the stream still holds them, but the consumer would redeliver them only after its
   * ack wait), or when the consume ended. What is queued is committed and published first, so the
   * consumer, whose acknowledged position then sits just below where it starts, never claims work
   * that is not published. A gap the stream no longer holds fails closed instead.
   */
  private resume(why: string, gap?: [number, number]): void {
    if (this.resuming || this.status !== 'RUNNING') return;
    this.resuming = true;
    this.deps.metrics.deliveryResumes.inc(this.label);
    this.log.warn(
      { why, checkpoint: this.committedSeq, queued: this.lastQueuedSeq },
      'resuming delivery from the checkpoint',
    );
    this.messages?.stop();
    void (async () => {
      for (let attempt = 1; this.status === 'RUNNING'; attempt++) {
        try {
          // A macrotask between checks: never a microtask loop that starves the event loop.
          while (this.busy || this.scheduled) {
            await this.busy;
            await sleep(1);
          }
          await this.publishing;
          if (this.status !== 'RUNNING') return;
          this.lastQueuedSeq = this.committedSeq;
          const first = (await this.deps.jsm.streams.info(this.stream)).state.first_seq;
          if (this.committedSeq + 1 < first) {
            this.failClosed(`checkpoint at ${this.committedSeq}, the stream starts at ${first}`);
            return;
          }
          if (gap && !(await this.stillStored(gap[0]))) {
            this.failClosed(`events ${gap[0]}..${gap[1]} are gone from the stream`);
            return;
          }
          if (!this.lease.valid()) {
            this.fence();
            return;
          }
          await this.consumeFrom(this.committedSeq + 1);
          this.resuming = false;
          await this.consume();
          return;
        } catch (e) {
          this.resuming = true;
          this.log.warn({ err: (e as Error).message, attempt }, 'resuming delivery failed; retrying');
          await sleep(Math.min(2000, 50 * 2 ** attempt));
        }
      }
    })();
  }

  /**
   * Whether the stream still holds event `seq`: nats.js answers null only when the server says it
   * has none; a timeout or a stream without a leader throws (and the resume is retried).
   */
  private async stillStored(seq: number): Promise<boolean> {
    return (await this.deps.jsm.streams.getMessage(this.stream, { seq })) != null;
  }

  private onMessage(m: JsMsg): void {
    if (this.status !== 'RUNNING' || this.resuming) return;
    // Redeliveries and duplicates below what is queued are already handled.
    if (m.seq <= this.lastQueuedSeq) return;
    if (m.seq !== this.lastQueuedSeq + 1) {
      const gap: [number, number] = [this.lastQueuedSeq + 1, m.seq - 1];
      this.resume(`events ${gap[0]}..${gap[1]} were not delivered`, gap);
      return;
    }
    this.lastQueuedSeq = m.seq;
    // Work arriving at an idle partition: a stall is counted from now, not from the last batch.
    if (this.queue.length === 0 && !this.busy && this.unpublished === 0) this.lastProgressAt = Date.now();
    if (this.deps.ackBeforeCommit) m.ack();
    this.queue.push(m);
    this.ticker?.onMessage();
    // Start on the next turn, so that what one socket read brought forms one batch.
    if (!this.busy && !this.scheduled) {
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        if (!this.busy) this.startDrain();
      });
    }
  }

  /** Starts draining the queue; `busy` is the drain in progress, cleared when it ends. */
  private startDrain(): void {
    // Cleared after the assignment, not inside drain(): a drain that ends without awaiting (the
    // lease has lapsed) would otherwise clear `busy` before it is set, and leave it set for good.
    const run = this.drain();
    this.busy = run;
    void run.finally(() => {
      if (this.busy === run) this.busy = null;
    });
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0 && this.status === 'RUNNING') {
      if (!this.lease.valid()) {
        // Not provably ours: another node may own the partition by now. Stop, and let the
        // coordinator start it again from its checkpoint if it is still ours.
        this.fence();
        break;
      }
      if (this.writer && !this.snapshotting && this.snapshotDue()) await this.startSnapshot();
      if (this.status !== 'RUNNING') break;
      let size = this.deps.maxBatch;
      if (this.rebuildTo > this.committedSeq) {
        // A batch never straddles the end of a rebuild: it publishes all its outputs or none.
        const through = this.rebuildTo - this.queue[0]!.seq + 1;
        if (through > 0) size = Math.min(size, through);
      }
      const batch = this.queue.splice(0, size);
      await this.process(batch);
      // Let publishing fall at most two batches behind compute.
      if (this.unpublished >= 2) await this.publishing;
      // And the state bucket's export a bounded number of events behind the commits.
      while (
        this.writer &&
        this.committedSeq - this.exportedTo > MAX_EXPORT_LAG_EVENTS &&
        this.status === 'RUNNING'
      )
        await sleep(2);
    }
  }

  private async process(batch: JsMsg[]): Promise<void> {
    const { metrics } = this.deps;
    const events = batch.map(deliveryOf);
    metrics.eventsIn.inc(this.label, batch.length);
    metrics.batchSize.observe(batch.length);
    let result: BatchResult | undefined;
    for (let attempt = 1; !result; attempt++) {
      try {
        result = await this.deps.dispatcher.submit(this.partition, this.lease.epoch, events);
      } catch (err) {
        // Nothing was committed: the same batch is tried again, so nothing is skipped.
        metrics.batchFailures.inc(this.label);
        this.log.error({ err: (err as Error).message, attempt }, 'batch failed before commit; retrying');
        await sleep(Math.min(5000, 100 * 2 ** attempt));
        // A stopping node may leave the batch to the next run: it starts after the checkpoint.
        if (this.status !== 'RUNNING') return;
        // The worker may have committed before the failure reached us (its answer was lost). A
        // retry would then find every event applied and commit an empty outbox over the batch's:
        // its states would never reach the bucket while its events are acknowledged. Publish the
        // committed outbox instead.
        this.deps.store.root.resetReadTxn();
        const last = events[events.length - 1]!.seq;
        if ((this.deps.store.checkpoint(this.partition)?.seq ?? 0) >= last) {
          this.log.warn({ seq: last }, 'the failed batch was committed: publishing its outbox');
          this.publishCommittedOutbox(batch, last);
          return;
        }
      }
    }
    this.committedSeq = result.lastSeq;
    this.lastCommitAt = Date.now();
    this.lastProgressAt = this.lastCommitAt;
    metrics.handlerSeconds.observe(result.handlerMs / 1000);
    metrics.checkpointSeconds.observe(result.commitMs / 1000);
    metrics.actors.inc(result.created);
    metrics.eventsApplied.inc(this.label, result.applied);
    for (const [actor, n] of Object.entries(result.late)) metrics.lateEvents.inc({ actor }, n);
    this.ticker?.onResult(result);
    const done = result;
    const last = batch[batch.length - 1]!;
    const previous = this.publishing;
    this.unpublished++;
    this.publishing = (async () => {
      await previous;
      const rebuilding = done.lastSeq <= this.rebuildTo;
      const published = this.writer
        ? await this.publishToChangelog(done, batch)
        : rebuilding
          ? done.lastSeq < this.rebuildTo || (await this.finishRebuild())
          : await this.publishOutputs(done.changes, done.emits, done.dead, async (seqs) => {
              const bySeq = new Map(batch.map((m) => [m.seq, m]));
              const found = new Map<number, Original | null>();
              for (const seq of seqs) {
                const m = bySeq.get(seq);
                found.set(seq, m ? { subject: m.subject, data: m.data, headers: m.headers } : null);
              }
              return found;
            });
      if (!this.settle(published, done.lastSeq)) return;
      const now = Date.now();
      for (const e of events) metrics.endToEndSeconds.observe((now - e.publishMs) / 1000);
      const pending = last.info.pending;
      metrics.consumerLagMessages.set(this.label, pending);
      metrics.consumerLagSeconds.set(
        this.label,
        pending > 0 ? (now - events[events.length - 1]!.publishMs) / 1000 : 0,
      );
      last.ack();
    })();
  }

  /**
   * Recovery by changelog: the batch's emits and dead letters are stored first, then its changelog
   * entry (the ack follows it; a restore reads the entry, and the events it covers are never
   * processed again). The state bucket is updated after, from the changelog (`exportChangelog`).
   */
  private async publishToChangelog(done: BatchResult, batch: JsMsg[]): Promise<boolean> {
    const stored = await this.publishOutputs([], done.emits, done.dead, async (seqs) => {
      const bySeq = new Map(batch.map((m) => [m.seq, m]));
      const found = new Map<number, Original | null>();
      for (const seq of seqs) {
        const m = bySeq.get(seq);
        found.set(seq, m ? { subject: m.subject, data: m.data, headers: m.headers } : null);
      }
      return found;
    });
    return stored && (await this.appendToChangelog(done.checkpoint!, done.changes as [string, Uint8Array][]));
  }

  /** Recovery by changelog: a committed outbox's emits and dead letters, then its changelog entry. */
  private async appendOutbox(ob: Outbox): Promise<boolean> {
    const { store } = this.deps;
    const cp = store.checkpoint(this.partition)!;
    const changes: [string, Uint8Array][] = [];
    for (const [actor, key] of ob.keys) {
      const rec = store.states.get([actor, key]);
      if (rec) {
        const [kvKey, json] = this.stateChange(actor, key, rec, cp.n);
        changes.push([kvKey, Buffer.from(json)]);
      }
    }
    return (
      (await this.publishOutputs([], ob.emits, ob.dead, (seqs) => this.readEvents(seqs))) &&
      (await this.appendToChangelog({ ...cp, seq: ob.seq }, changes))
    );
  }

  /** Appends a committed batch to the changelog, retried while the lease holds; false when fenced. */
  private async appendToChangelog(cp: Checkpoint, changes: [string, Uint8Array][]): Promise<boolean> {
    const writer = this.writer!;
    for (let attempt = 1; ; attempt++) {
      if (this.fenced || !this.lease.valid()) return false;
      try {
        await writer.appendChanges(cp, changes);
        void setChangelogPosition(this.deps.store, this.partition, { seq: writer.last, to: cp.seq });
        // The push path: every committed change once, in commit order, as the bucket's republish
        // carries it in the other mode (the bucket, exported later and coalesced, republishes none).
        for (const [kvKey, json] of changes) this.deps.nc.publish(`${STATE_PREFIX}.${kvKey}`, json);
        this.deps.metrics.stateChanges.inc(changes.length);
        return true;
      } catch (err) {
        if (err instanceof ChangelogFencedError) {
          this.log.error(
            { epoch: this.lease.epoch, err: err.message },
            'the changelog was claimed by another owner',
          );
          return false;
        }
        this.repeated.warn(
          `changelog:${this.partition}`,
          { partition: this.partition, err: (err as Error).message, attempt },
          'appending to the changelog failed; retrying',
        );
        await sleep(Math.min(2000, 50 * 2 ** attempt));
      }
    }
  }

  private snapshotDue(): boolean {
    const w = this.writer!;
    return (
      w.bytesSinceSnapshot > Math.max(this.deps.snapshotBytes ?? DEFAULT_SNAPSHOT_BYTES, w.snapshotBytes)
    );
  }

  /**
   * Starts a snapshot of the partition into its changelog, from the state as every appended batch
   * left it: called between batches, once the ones before are appended (a state ahead of the
   * appended position could stand for events whose emits are not stored yet). The read holds
   * that LMDB snapshot while batches go on; its chunks are appended between theirs. What it
   * compacts away must be exported first.
   */
  private async startSnapshot(): Promise<void> {
    await this.publishing;
    if (this.fenced || this.status !== 'RUNNING' || !this.lease.valid()) return;
    const { store, partitions } = this.deps;
    store.root.resetReadTxn();
    const cp = store.checkpoint(this.partition)!;
    const p = this.partition;
    const range = store.states.getRange({ snapshot: true });
    const records = (function* () {
      for (const { key, value } of range)
        if (partitionOf(key[1], partitions) === p) yield [key[0], key[1], value] as ChangelogRecord;
    })();
    const t0 = performance.now();
    this.snapshotting = this.writer!.snapshot(cp, records, async () => {
      while (this.exportedTo < cp.seq && this.status === 'RUNNING' && !this.fenced) await sleep(20);
      if (this.exportedTo < cp.seq) throw new Error('stopped before the export reached the snapshot');
    })
      .then(() =>
        this.log.info(
          { checkpoint: cp.seq, bytes: this.writer!.snapshotBytes, ms: Math.round(performance.now() - t0) },
          'partition snapshot written to its changelog',
        ),
      )
      .catch((err) =>
        this.repeated.warn(
          `snapshot:${this.partition}`,
          { partition: this.partition, err: (err as Error).message },
          'a snapshot of the partition failed; the changelog stays whole until the next one',
        ),
      )
      .finally(() => {
        this.snapshotting = null;
      });
  }

  /**
   * Exports the partition's changelog to the state bucket, in order, for plain NATS readers and
   * the push path (the bucket republishes each change). Its position is a durable consumer's, so
   * an export cut short (a crash, a handover) goes on from there under the next owner. Puts go out
   * under the lease, like every output.
   */
  private async exportChangelog(): Promise<void> {
    const { js, jsm } = this.deps;
    const name = `partita-export-p${this.partition}`;
    const going = () => this.status === 'RUNNING' && !this.fenced && this.lease.valid();
    for (let attempt = 1; going(); attempt++) {
      try {
        await jsm.consumers.add(CHANGELOG_STREAM, {
          durable_name: name,
          filter_subject: changelogSubject(this.partition),
          ack_policy: AckPolicy.All,
          deliver_policy: DeliverPolicy.All,
          ack_wait: nanos(30_000),
        });
        const consumer = await js.consumers.get(CHANGELOG_STREAM, name);
        while (going()) {
          const fetched = await consumer.fetch({ max_messages: EXPORT_FETCH, expires: 1000 });
          let last: JsMsg | undefined;
          let to = 0;
          // The newest change of each key among the messages read: the bucket holds only the latest.
          const latest = new Map<string, Uint8Array | string>();
          for await (const m of fetched) {
            const msg = decodeMessage(m.data);
            if (msg.k === 'b') {
              if (msg.j && msg.jk) for (let i = 0; i < msg.jk.length; i++) latest.set(msg.jk[i]!, msg.j[i]!);
              else if (msg.s)
                for (const [actor, key, rec] of msg.s) {
                  const [kvKey, json] = this.stateChange(actor, key, rec, msg.n, msg.e);
                  latest.set(kvKey, json);
                }
              if (msg.end) to = Math.max(to, msg.to);
            }
            last = m;
          }
          const changes = [...latest];
          if (!last) {
            // Nothing left to export: everything committed is in the bucket.
            if (this.unpublished === 0 && !this.busy)
              this.exportedTo = Math.max(this.exportedTo, this.committedSeq);
            continue;
          }
          if (changes.length > 0 && !(await this.exportStates(changes))) return;
          last.ack();
          if (to > 0) this.exportedTo = Math.max(this.exportedTo, to);
          attempt = 0;
          // The next round coalesces what this interval commits: a key changed many times in it
          // is put once.
          for (let waited = 0; waited < EXPORT_INTERVAL_MS && going(); waited += 50) await sleep(50);
        }
      } catch (err) {
        this.repeated.warn(
          `export:${this.partition}`,
          { partition: this.partition, err: (err as Error).message, attempt },
          'exporting the changelog to the state bucket failed; retrying',
        );
        await sleep(Math.min(2000, 50 * 2 ** attempt));
      }
    }
  }

  /** The state bucket's newest states from the changelog, under the lease, as any output. */
  private exportStates(changes: [string, Uint8Array | string][]): Promise<boolean> {
    return this.publishOutputs(changes, [], [], async () => new Map(), false);
  }

  /**
   * The path of `process` for a batch the worker committed but whose result was lost: its outbox
   * is published (as after a restart), then the batch is acknowledged.
   */
  private publishCommittedOutbox(batch: JsMsg[], lastSeq: number): void {
    this.committedSeq = lastSeq;
    this.lastCommitAt = Date.now();
    const ob = this.deps.store.outboxes(this.partition).find((o) => o.seq === lastSeq);
    const previous = this.publishing;
    this.unpublished++;
    this.publishing = (async () => {
      await previous;
      let published = true;
      try {
        if (this.writer) {
          if (ob && !(await this.appendOutbox(ob))) throw new Error('fenced');
        } else if (lastSeq <= this.rebuildTo) {
          if (lastSeq === this.rebuildTo && !(await this.finishRebuild())) throw new Error('lease lapsed');
        } else if (ob) await this.recoverOutboxes([ob]);
      } catch {
        published = false;
      }
      if (this.settle(published, lastSeq)) batch[batch.length - 1]!.ack();
    })();
  }

  /**
   * Ends the publishing of the batch committed at `lastSeq`, before its ack (AckAll: one ack
   * covers the batch; only for retention, lag and flow control: the checkpoint is the truth).
   * Published: its outbox goes, since a restart must not publish it again (JetStream's duplicate
   * window only covers two minutes; held back up to OUTBOX_DELETE_DELAY_MS to share a write
   * transaction with other batches' deletes, and written before the partition stops). Not
   * published (fenced): nothing is acknowledged and the outbox stays. If the partition is still
   * ours, it restarts from its checkpoint and publishes the outbox; if another node took it, that
   * node restores from the bucket and the acknowledged position, and this node drops the commit if
   * it ever owns the partition again (see restore.ts). Answers whether to acknowledge.
   */
  private settle(published: boolean, lastSeq: number): boolean {
    this.unpublished--;
    if (!published) {
      this.deps.metrics.fencedBatches.inc(this.label);
      this.fence();
      return false;
    }
    this.deps.store.deleteOutboxSoon(this.partition, lastSeq);
    if (this.rebuildTo === 0) this.publishedSeq = lastSeq;
    this.lastProgressAt = Date.now();
    return true;
  }

  /**
   * Publishes what a commit produced, retried until the streams have stored it, since the state is
   * committed. Emits and dead letters are stored before the state changes: a new owner restores the
   * states and resumes at the acknowledged position, so an event whose state change is stored is
   * never processed again, and its emits and dead letters must be stored already. The input is
   * acknowledged only after both (the caller does that). All go through the stored publisher, a
   * batch at a time (one `js.publish` awaited per dead letter could not keep up with a flood of bad
   * events). An output NATS refuses for good becomes a dead letter (refused-output.ts) in its place.
   */
  private async publishOutputs(
    changes: [string, Uint8Array | string][],
    emits: Outbox['emits'],
    dead: Outbox['dead'],
    /** The events dead-lettered, by sequence: null where the stream no longer holds one; throws
     * when it cannot tell now (the dead letters are then retried). */
    originals: (seqs: number[]) => Promise<Map<number, Original | null>>,
    /** Count the state changes as published (the export of a changelog counted them at the append). */
    countStates = true,
  ): Promise<boolean> {
    const { metrics, publisher } = this.deps;
    const ctx = { stream: this.stream, partition: this.partition, epoch: this.lease.epoch };
    const first: Item[] = [];
    for (const [subject, msgID, json] of emits) {
      // Proof of the lease the output was produced under: readers can drop older epochs.
      const h = natsHeaders();
      h.set(EPOCH_HEADER, String(this.lease.epoch));
      h.set(PARTITION_HEADER, String(this.partition));
      h.set('Nats-Msg-Id', msgID);
      first.push({ out: { subject, data: json, headers: h }, info: () => emitInfo(subject, msgID) });
    }
    const second: Item[] = changes.map(([kvKey, json]) => ({
      out: { subject: `${KV_STATE_PREFIX}${kvKey}`, data: json },
      info: () => stateInfo(json),
    }));
    // Dead letters whose original event is still to read.
    let deadLeft = dead;
    let pending = first;
    let phase: 1 | 2 = 1;
    let oneByOne = false;
    for (let attempt = 1; ; attempt++) {
      if (this.fenced || !this.lease.valid()) return false;
      try {
        if (phase === 1 && deadLeft.length > 0) {
          const found = await originals(deadLeft.map(([seq]) => seq));
          const later: Outbox['dead'] = [];
          for (const d of deadLeft) {
            const [seq, code, message, actor] = d;
            const m = found.get(seq);
            if (m === undefined) later.push(d);
            else if (m === null)
              this.log.error(
                { seq, code, actor },
                'dead letter lost its original event: the stream no longer holds it',
              );
            else {
              const out = deadLetterMessage({
                subject: m.subject,
                originalSubject: producerSubject(m.subject),
                data: m.data,
                headers: m.headers,
                stream: this.stream,
                seq,
                code,
                message,
                actor,
                epoch: this.lease.epoch,
              });
              pending.push({ out, info: () => ({ kind: 'dead-letter', actor, seq, code }), code, message });
            }
          }
          deadLeft = later;
        }
        const stored =
          phase === 2 && this.deps.atomicStates && !oneByOne
            ? await this.publishAtomic(pending)
            : await publisher.publish(
                pending.map((p) => p.out),
                PUBLISH_TIMEOUT_MS,
              );
        if (stored.atomicRefused) {
          // Published one by one from now on, which tells the refused output from the others.
          oneByOne = true;
          this.log.warn(
            { partition: this.partition, err: stored.error },
            'the state bucket refused an atomic batch of state changes; publishing them one by one',
          );
        }
        const retry: Item[] = [];
        for (let i = 0; i < pending.length; i++) {
          const p = pending[i]!;
          const refusal = stored.refused.get(i);
          if (refusal !== undefined) {
            const letter = this.refused(p, refusal, ctx);
            if (letter) retry.push(letter);
            continue;
          }
          if (stored.seqs[i] === 0) {
            retry.push(p);
            continue;
          }
          // A duplicate was stored before (a retry, an outbox published again): count it once.
          if (p.code && !stored.duplicate[i]) {
            metrics.deadLetters.inc({ code: p.code });
            const info = p.info();
            this.repeated.warn(
              `dead:${p.code}:${info.actor ?? ''}`,
              {
                partition: this.partition,
                actor: info.actor,
                key: info.key,
                seq: info.seq,
                code: p.code,
                err: p.message,
              },
              'event dead-lettered',
            );
          }
        }
        pending = retry;
        if (pending.length > 0 || deadLeft.length > 0) {
          const what = pending[0] ? pending[0].info() : undefined;
          throw new Error(
            `${pending.length + deadLeft.length} not stored${stored.error ? `: ${stored.error}` : ''}${what ? ` (first: ${what.kind} of actor ${what.actor ?? '?'} key ${JSON.stringify((what.key ?? '?').slice(0, 200))})` : ''}`,
          );
        }
        if (phase === 1) {
          phase = 2;
          pending = second;
          attempt = 0;
          continue;
        }
        if (countStates) metrics.stateChanges.inc(changes.length);
        metrics.eventsOut.inc(emits.length);
        return true;
      } catch (err) {
        this.repeated.warn(
          `publish:${this.partition}`,
          { partition: this.partition, err: (err as Error).message, attempt, phase },
          'publishing committed outputs failed; retrying',
        );
        await sleep(Math.min(2000, 50 * 2 ** attempt));
      }
    }
  }

  /**
   * The state changes among `items` as atomic batches on the state bucket, the rest (dead letters
   * standing for refused state changes) one by one: an atomic batch goes to one stream only.
   */
  private async publishAtomic(items: Item[]): Promise<Stored> {
    const { publisher } = this.deps;
    const states: number[] = [];
    const others: number[] = [];
    items.forEach((p, i) => {
      (p.out.subject.startsWith(KV_STATE_PREFIX) ? states : others).push(i);
    });
    const [a, b] = await Promise.all([
      publisher.publishAtomic(
        states.map((i) => items[i]!.out),
        PUBLISH_TIMEOUT_MS,
      ),
      publisher.publish(
        others.map((i) => items[i]!.out),
        PUBLISH_TIMEOUT_MS,
      ),
    ]);
    const merged: Stored = {
      failed: [],
      seqs: new Array<number>(items.length).fill(0),
      refused: new Map(),
      duplicate: new Uint8Array(items.length),
      ...(a.error || b.error ? { error: a.error ?? b.error } : {}),
      ...(a.atomicRefused ? { atomicRefused: true } : {}),
    };
    for (const [part, index] of [
      [a, states],
      [b, others],
    ] as const) {
      part.seqs.forEach((seq, j) => {
        merged.seqs[index[j]!] = seq;
      });
      for (const j of part.failed) merged.failed.push(index[j]!);
      for (const [j, why] of part.refused) merged.refused.set(index[j]!, why);
      part.duplicate.forEach((d, j) => {
        merged.duplicate[index[j]!] = d;
      });
    }
    return merged;
  }

  /** The dead letter that stands for an output NATS refused for good; logged each time (rare). */
  private refused(
    p: Item,
    why: string,
    ctx: { stream: string; partition: number; epoch: number },
  ): Item | undefined {
    const info = p.info();
    const fields = {
      partition: this.partition,
      actor: info.actor,
      key: info.key?.slice(0, 200),
      seq: info.seq,
    };
    // Nothing smaller than a bare dead letter can be sent: say so, and stop retrying it.
    if (p.refusal === 'bare') {
      this.log.error({ ...fields, err: why }, 'dead letter of a refused output refused too: dropped');
      return undefined;
    }
    this.log.error(
      { ...fields, kind: info.kind, err: why },
      'output refused by NATS for good: dead-lettering it',
    );
    // A dead letter refused in turn goes again without its payload.
    const bare = info.kind === 'dead-letter' || p.refusal === 'payload';
    return {
      out: refusedOutput(p.out, info, why, ctx, bare),
      info: () => ({ ...info, kind: 'dead-letter' }),
      code: 'PARTITA_ERR_OUTPUT_REFUSED',
      message: why,
      refusal: bare ? 'bare' : 'payload',
    };
  }

  /**
   * The rebuild reached where the earlier owners had stored every output: publishes every state of
   * the partition (the keys the bucket lost among them), then ends the rebuild.
   */
  private async finishRebuild(): Promise<boolean> {
    const { store, partitions } = this.deps;
    const n = store.checkpoint(this.partition)?.n;
    let changes: [string, string][] = [];
    let states = 0;
    const flush = async () => {
      const ok = await this.publishOutputs(changes, [], [], async () => new Map());
      changes = [];
      return ok;
    };
    for (const {
      key: [actor, key],
      value: rec,
    } of store.states.getRange()) {
      // A key a later batch changed again is stored by that batch, after its emits.
      if (rec.q > this.rebuildTo || partitionOf(key, partitions) !== this.partition) continue;
      states++;
      changes.push(this.stateChange(actor, key, rec, n));
      if (changes.length >= 5000 && !(await flush())) return false;
    }
    if (changes.length > 0 && !(await flush())) return false;
    await store.meta.remove(['rb', this.partition]);
    this.log.warn(
      { through: this.rebuildTo, states, checkpoint: this.committedSeq },
      'rebuild from the input stream finished: the partition states are published whole',
    );
    this.publishedSeq = this.rebuildTo;
    this.rebuildTo = 0;
    return true;
  }

  /**
   * Stores again the states of `keys` that the state bucket lost or serves stale (see
   * state-audit.ts), after deleting the stale entries (`staleSeqs`, bucket sequences): on 2.9 a
   * replica that brought a removed entry back can keep serving it over later puts. In line with
   * the partition's publishing, under its lease; a state not yet stored by its own batch is left to
   * that batch. Answers how many states were stored.
   */
  repairStates(keys: readonly [string, string][], staleSeqs: readonly number[]): Promise<number> {
    const run = this.publishing.then(async () => {
      if (this.fenced || this.status !== 'RUNNING' || !this.lease.valid()) return 0;
      const { store, jsm } = this.deps;
      for (const seq of staleSeqs)
        await jsm.streams.deleteMessage(`KV_${STATE_BUCKET}`, seq, false).catch(() => undefined);
      const n = store.checkpoint(this.partition)?.n;
      const changes: [string, string][] = [];
      for (const [actor, key] of keys) {
        const rec = store.states.get([actor, key]);
        if (rec && rec.q <= this.publishedSeq) changes.push(this.stateChange(actor, key, rec, n));
      }
      if (changes.length === 0) return 0;
      return (await this.publishOutputs(changes, [], [], async () => new Map())) ? changes.length : 0;
    });
    this.publishing = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /** A state change as the bucket stores it, built from a committed record. */
  private stateChange(
    actor: string,
    key: string,
    rec: StateRecord,
    n: number | undefined,
    epoch = this.lease.epoch,
  ): [string, string] {
    return [
      stateKvKey(actor, key),
      stateChangeJson(actor, key, rec, {
        partition: this.partition,
        epoch,
        partitionKeys: n,
      }),
    ];
  }

  /**
   * After a restart, publishes again what the last commits may not have published: every emit and
   * dead letter of all of them first, then the states of their keys. The states are the current
   * records, which may reflect a later one of these batches, so they must not go out before that
   * batch's emits (a state stored is never processed again: see `publishOutputs`).
   */
  private async recoverOutboxes(outboxes: readonly Outbox[]): Promise<void> {
    if (outboxes.length === 0) return;
    const { store } = this.deps;
    const n = outboxes[outboxes.length - 1]!.n;
    const keys = new Map<string, [string, string]>();
    for (const ob of outboxes)
      for (const [actor, key] of ob.keys) keys.set(stateKvKey(actor, key), [actor, key]);
    const changes: [string, Uint8Array | string][] = [];
    for (const [actor, key] of keys.values()) {
      const rec = store.states.get([actor, key]);
      if (rec) changes.push(this.stateChange(actor, key, rec, n));
    }
    const published = await this.publishOutputs(
      changes,
      outboxes.flatMap((ob) => ob.emits),
      outboxes.flatMap((ob) => ob.dead),
      (seqs) => this.readEvents(seqs),
    );
    // Not published (the lease lapsed meanwhile): keep the outboxes for the next owner run; deleting
    // them would lose these state changes downstream.
    if (!published)
      throw new Error(`partition ${this.partition}: lease lapsed while publishing its outboxes`);
  }

  /**
   * Reads the events `seqs` of the partition's stream in one pass (an ordered consumer from the
   * lowest to the highest), not with a request each: the outboxes of a flood of bad events hold
   * thousands of dead letters. Null where the stream no longer holds one; a read that does not
   * reach the highest in time throws (the dead letters are retried).
   */
  private async readEvents(seqs: number[]): Promise<Map<number, Original | null>> {
    const found = new Map<number, Original | null>();
    if (seqs.length === 0) return found;
    const want = new Set(seqs);
    const lo = seqs.reduce((a, b) => Math.min(a, b));
    const hi = seqs.reduce((a, b) => Math.max(a, b));
    const { state } = await this.deps.jsm.streams.info(this.stream);
    for (const seq of want) if (seq < state.first_seq || seq > state.last_seq) found.set(seq, null);
    const from = Math.max(lo, state.first_seq);
    if (from <= Math.min(hi, state.last_seq)) {
      const consumer = await this.deps.js.consumers.get(this.stream, {
        deliver_policy: DeliverPolicy.StartSequence,
        opt_start_seq: from,
      });
      const messages = await consumer.consume({ max_messages: 1000 });
      const timer = setTimeout(() => messages.stop(), PUBLISH_TIMEOUT_MS * 2);
      let reached = 0;
      try {
        for await (const m of messages) {
          reached = m.seq;
          if (want.has(m.seq)) found.set(m.seq, { subject: m.subject, data: m.data, headers: m.headers });
          if (m.seq >= hi) break;
        }
      } finally {
        clearTimeout(timer);
        messages.stop();
        // Stopping leaves the consumer on the server for its inactive threshold (5 min), counted
        // against the stream's consumer limit (1000 by default from nats-server 2.15).
        await consumer.delete().catch(() => undefined);
      }
      const end = Math.min(hi, state.last_seq);
      if (reached < end) throw new Error(`read events ${from}..${end} of ${this.stream} only to ${reached}`);
      // Skipped by the read: deleted from the stream.
      for (const seq of want) if (!found.has(seq)) found.set(seq, null);
    }
    return found;
  }
}
