// Gathers the batches that partitions have ready and hands them to the worker pool together: one
// piscina round trip and one LMDB transaction (group commit) for all of them. A partition still
// has at most one batch in flight; the dispatcher only shares the trip.
import { pack, unpack } from 'msgpackr';
import type { Piscina } from 'piscina';
import type { RawEvent } from './batch.js';
import type { BatchResult, BatchTask, PartitionBatch } from './batch-worker.js';

interface Pending {
  batch: PartitionBatch;
  resolve: (r: BatchResult) => void;
  reject: (e: unknown) => void;
}

export class BatchDispatcher {
  private pending: Pending[] = [];
  private scheduled = false;
  private inFlight = 0;

  /**
   * @param maxInFlight tasks running at once; more batches wait and join the next task, which
   *   is how batches grow under load.
   */
  private tasks = 0;

  constructor(
    private readonly pool: Piscina,
    private readonly maxInFlight: number,
    /** Loses every n-th task's answer after the worker committed it (an injected fault). */
    private readonly loseEvery = 0,
  ) {}

  /** Loads actors and opens LMDB in every worker before the first event arrives. */
  async warm(threads: number): Promise<void> {
    const empty = pack([]);
    await Promise.all(
      Array.from({ length: threads }, () =>
        this.pool.run({ batches: new Uint8Array(empty) } satisfies BatchTask),
      ),
    );
  }

  submit(partition: number, epoch: number, events: RawEvent[]): Promise<BatchResult> {
    return new Promise((resolve, reject) => {
      this.pending.push({ batch: { partition, epoch, events }, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.inFlight >= this.maxInFlight || this.pending.length === 0) return;
    this.scheduled = true;
    // On the next turn, so that batches submitted in this one travel together.
    setImmediate(() => {
      this.scheduled = false;
      void this.dispatch();
    });
  }

  private async dispatch(): Promise<void> {
    if (this.inFlight >= this.maxInFlight || this.pending.length === 0) return;
    const group = this.pending;
    this.pending = [];
    this.inFlight++;
    try {
      const packed = pack(group.map((g) => g.batch));
      const buf = new Uint8Array(packed.byteLength);
      buf.set(packed);
      const task: BatchTask = { batches: buf };
      const out = (await this.pool.run(task, { transferList: [buf.buffer] })) as Uint8Array;
      if (this.loseEvery > 0 && ++this.tasks % this.loseEvery === 0)
        throw new Error('injected fault: the worker committed, its answer was lost');
      const results = unpack(out) as BatchResult[];
      for (const [i, g] of group.entries()) g.resolve(results[i]!);
    } catch (err) {
      for (const g of group) g.reject(err);
    } finally {
      this.inFlight--;
      this.schedule();
    }
  }
}
