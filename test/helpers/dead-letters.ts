// Reads the dead-letter stream by sequence; stored messages never change, so each is read once.
import type { JetStreamManager, StoredMsg } from '@nats-io/jetstream';
import { DLQ_HEADERS, DLQ_STREAM } from '../../runtime/index.js';

export class DeadLetters {
  private readonly bySeq = new Map<number, StoredMsg>();

  constructor(private readonly jsm: JetStreamManager) {}

  async all(): Promise<StoredMsg[]> {
    const { state } = await this.jsm.streams.info(DLQ_STREAM);
    for (let seq = Math.max(1, state.first_seq); seq <= state.last_seq; seq++) {
      if (this.bySeq.has(seq)) continue;
      const m = await this.jsm.streams.getMessage(DLQ_STREAM, { seq });
      if (m) this.bySeq.set(seq, m);
    }
    return [...this.bySeq.values()];
  }

  /** The dead letters of one input: the subject the producer used and, if given, its exact payload. */
  async of(subject: string, payload?: Uint8Array): Promise<StoredMsg[]> {
    return (await this.all()).filter(
      (m) =>
        m.header?.get(DLQ_HEADERS.subject) === subject &&
        (payload === undefined || Buffer.from(m.data).equals(Buffer.from(payload))),
    );
  }
}
