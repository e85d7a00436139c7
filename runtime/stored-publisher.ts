// Publishes a batch of messages into JetStream and resolves once every one is stored, at the cost
// of core publishes: all of a batch's messages share one reply subject, JetStream's acks come back
// on one wildcard subscription, and a counter (not a promise and a timer per message) waits for
// them. An error ack or a "no responders" status (the stream has no leader) fails the batch; the
// caller publishes it again, which is safe for idempotent writes such as KV puts.
import { createInbox, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node';

interface Pending {
  left: number;
  resolve: () => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export class StoredPublisher {
  private readonly prefix = createInbox();
  private readonly sub: Subscription;
  private readonly pending = new Map<string, Pending>();
  private next = 0;

  constructor(private readonly nc: NatsConnection) {
    this.sub = nc.subscribe(`${this.prefix}.*`, { callback: (_err, m) => this.onAck(m) });
  }

  /** Resolves when JetStream has stored every message; rejects on an error ack or after `timeoutMs`. */
  publishAll(items: readonly [string, Uint8Array | string][], timeoutMs = 10_000): Promise<void> {
    if (items.length === 0) return Promise.resolve();
    const id = String(++this.next);
    const reply = `${this.prefix}.${id}`;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`JetStream did not acknowledge ${items.length} messages within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { left: items.length, resolve, reject, timer });
      for (const [subject, data] of items) this.nc.publish(subject, data, { reply });
    });
  }

  private onAck(m: Msg): void {
    const id = m.subject.slice(this.prefix.length + 1);
    const p = this.pending.get(id);
    if (!p) return;
    let error: string | null = null;
    if (m.headers?.hasError) error = `${m.headers.code} ${m.headers.description}`;
    else if (m.data.length > 0 && m.string().includes('"error"')) error = m.string();
    if (error !== null) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(new Error(`JetStream refused a message: ${error}`));
      return;
    }
    if (--p.left === 0) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.resolve();
    }
  }

  close(): void {
    this.sub.unsubscribe();
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error('closed'));
    }
    this.pending.clear();
  }
}
