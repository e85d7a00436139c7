// Dead-letters what the partition mapping did not route: subjects under `events.>` of another
// shape (too many or too few tokens), or every event when the server lacks the mapping.
import { AckPolicy, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { publishDeadLetter } from './dead-letter.js';
import type { Logger } from './logger.js';
import type { NodeMetrics } from './metrics.js';
import { UNROUTED_STREAM } from './subjects.js';

const NAME = 'partita-unrouted';

export class UnroutedDeadLetterer {
  private running = true;
  private stopFetch: (() => void) | null = null;
  private loop: Promise<void> | null = null;

  constructor(
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly metrics: NodeMetrics,
    private readonly log: Logger,
  ) {}

  async start(): Promise<void> {
    await this.jsm.consumers
      // An event fetched by a node that dies is redelivered to another after the ack wait.
      .add(UNROUTED_STREAM, { durable_name: NAME, ack_policy: AckPolicy.Explicit, ack_wait: 10_000_000_000 })
      .catch(() => undefined);
    const consumer = await this.js.consumers.get(UNROUTED_STREAM, NAME);
    this.loop = (async () => {
      while (this.running) {
        try {
          const it = await consumer.fetch({ max_messages: 256, expires: 2000 });
          this.stopFetch = () => it.stop();
          for await (const m of it) {
            const tokens = m.subject.split('.');
            const unmapped = tokens.length === 3;
            const code = unmapped ? 'PARTITA_ERR_UNMAPPED' : 'PARTITA_ERR_UNROUTABLE';
            const message = unmapped
              ? 'the server has no partition mapping for events.*.*: start it with `partita nats` or a config from deploy/'
              : `subject "${m.subject}" does not have the shape events.<type>.<key>`;
            const written = await publishDeadLetter(this.js, {
              subject: m.subject,
              data: m.data,
              headers: m.headers,
              stream: UNROUTED_STREAM,
              seq: m.seq,
              code,
              message,
            });
            // A redelivery (after a crash between publish and ack) was deduplicated: count it once.
            if (written) this.metrics.deadLetters.inc({ code });
            await m.ackAck();
          }
        } catch (err) {
          if (!this.running) break;
          this.log.warn({ err: (err as Error).message }, 'unrouted dead-lettering failed; retrying');
          await new Promise((r) => setTimeout(r, 500));
        }
      }
    })();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.stopFetch?.();
    await this.loop;
  }
}
