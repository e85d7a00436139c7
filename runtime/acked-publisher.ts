// Stored publishing for a batch's outputs: every message goes out with its own reply subject and
// counts as published only once its stream's PubAck comes back. A plain publish plus a flush only
// proves the connected server read it; while a stream elects a leader (a NATS server died) the
// server drops such messages without a word, and acknowledging the input after that loses them.
// One subscription and one timer per call, not a request (a promise and a timer) per message.
import { createInbox, type MsgHdrs, type NatsConnection, type Subscription } from '@nats-io/transport-node';

export interface Outgoing {
  subject: string;
  data: Uint8Array | string;
  headers?: MsgHdrs;
}

export interface Stored {
  /** Indexes (into the items given) that were not stored: no PubAck in time, or an error. */
  failed: number[];
  /** The first error a stream answered with, if any. */
  error?: string;
  /** The stream sequence each stored item got (0 where it failed). */
  seqs: number[];
}

interface Call {
  seqs: number[];
  answered: Uint8Array;
  left: number;
  error?: string;
  done: () => void;
}

const decoder = new TextDecoder();

export class AckedPublisher {
  private readonly prefix = createInbox();
  private readonly calls = new Map<number, Call>();
  private nextCall = 0;
  private readonly sub: Subscription;

  constructor(private readonly nc: NatsConnection) {
    this.sub = nc.subscribe(`${this.prefix}.>`, {
      callback: (err, m) => {
        if (err) return;
        const tail = m.subject.slice(this.prefix.length + 1);
        const dot = tail.indexOf('.');
        const call = this.calls.get(Number(tail.slice(0, dot)));
        const i = Number(tail.slice(dot + 1));
        if (!call || call.answered[i]) return;
        call.answered[i] = 1;
        call.left--;
        // A 503 (no responders: no stream took the subject) comes as a status header.
        const status = m.headers?.code ?? 0;
        if (status >= 400 || m.data.length === 0) {
          call.error ??= `status ${status || 'empty reply'} ${m.headers?.description ?? ''}`.trim();
        } else {
          const text = decoder.decode(m.data);
          const ack = JSON.parse(text) as { seq?: number; error?: { description?: string } };
          if (ack.error || typeof ack.seq !== 'number') call.error ??= ack.error?.description ?? text;
          else call.seqs[i] = ack.seq;
        }
        if (call.left === 0) call.done();
      },
    });
  }

  /**
   * Publishes every item; resolves once each has an answer or `timeoutMs` has passed, with what was
   * not stored. Retrying those is safe for KV puts of the same value and for messages with an id
   * (the stream drops duplicates).
   */
  publish(items: readonly Outgoing[], timeoutMs: number): Promise<Stored> {
    if (items.length === 0) return Promise.resolve({ failed: [], seqs: [] });
    const id = this.nextCall++;
    return new Promise<Stored>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const call: Call = {
        seqs: new Array<number>(items.length).fill(0),
        answered: new Uint8Array(items.length),
        left: items.length,
        done: () => {
          clearTimeout(timer);
          this.calls.delete(id);
          const failed: number[] = [];
          for (let i = 0; i < items.length; i++) if (call.seqs[i] === 0) failed.push(i);
          const error =
            failed.length > 0
              ? (call.error ?? `${failed.length} not acknowledged in ${timeoutMs} ms`)
              : undefined;
          resolve({ failed, seqs: call.seqs, error });
        },
      };
      this.calls.set(id, call);
      timer = setTimeout(call.done, timeoutMs);
      try {
        for (let i = 0; i < items.length; i++) {
          const it = items[i]!;
          this.nc.publish(it.subject, it.data, {
            reply: `${this.prefix}.${id}.${i}`,
            ...(it.headers ? { headers: it.headers } : {}),
          });
        }
      } catch (err) {
        // The connection is closed or draining: nothing more goes out; what went is counted.
        call.error = (err as Error).message;
        call.done();
      }
    });
  }

  close(): void {
    this.sub.unsubscribe();
    for (const c of [...this.calls.values()]) c.done();
  }
}
