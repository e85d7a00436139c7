// One PING/PONG round trip serves every partition that published in the meantime: a flush asked
// for while one is in flight waits for the next one, which covers everything published before it.
import type { NatsConnection } from '@nats-io/transport-node';

export class Flusher {
  private current: Promise<void> | null = null;
  private next: Promise<void> | null = null;

  constructor(private readonly nc: NatsConnection) {}

  /** Resolves once the server has received everything published before this call. */
  flush(): Promise<void> {
    if (!this.current) {
      this.current = this.nc.flush().finally(() => {
        this.current = null;
      });
      return this.current;
    }
    // A flush in flight may have been sent before our publishes: wait for the one after it.
    // Whatever the one in flight ends with (a flush fails while the connection is down), the next
    // one is sent: a failed flush must not be handed to every later caller.
    this.next ??= this.current
      .catch(() => undefined)
      .then(() => {
        this.next = null;
        return this.flush();
      });
    return this.next;
  }
}
