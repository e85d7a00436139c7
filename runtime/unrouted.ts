// Dead-letters what was not partitioned: subjects under `events.>` of another shape (too many or
// too few tokens), which the ingest stream keeps as published; and, once, what a retired
// PARTITA_UNROUTED still holds (every event, when that deployment's server lacked the mapping).
import { AckPolicy, type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream';
import type { AckedPublisher, Outgoing } from './acked-publisher.js';
import { DLQ_HEADERS, deadLetterMessage } from './dead-letter.js';
import type { Logger, RepeatedLog } from './logger.js';
import type { NodeMetrics } from './metrics.js';
import { EVENTS_PREFIX, INGEST_STREAM, UNROUTED_STREAM } from './subjects.js';

const NAME = 'partita-unrouted';

/** What the dead-letterer reads: the ingest stream's other shapes, or the retired work queue. */
export type UnroutedSource = 'ingest' | 'retired';
const PUBLISH_TIMEOUT_MS = 5000;

export class UnroutedDeadLetterer {
  private running = true;
  private stopFetch: (() => void) | null = null;
  private loop: Promise<void> | null = null;

  private readonly stream: string;

  constructor(
    private readonly source: UnroutedSource,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly metrics: NodeMetrics,
    private readonly log: Logger,
    /** A fetch's dead letters go out together, as a batch's do (see partition-runner.ts). */
    private readonly publisher: AckedPublisher,
    private readonly repeated: RepeatedLog,
  ) {
    this.stream = source === 'ingest' ? INGEST_STREAM : UNROUTED_STREAM;
  }

  async start(): Promise<void> {
    await this.jsm.consumers
      // An event fetched by a node that dies is redelivered to another after the ack wait.
      .add(this.stream, {
        durable_name: NAME,
        ack_policy: AckPolicy.Explicit,
        ack_wait: 10_000_000_000,
        // The ingest stream's other shapes: what its transform (events.*.*) left as published.
        ...(this.source === 'ingest'
          ? { filter_subjects: [`${EVENTS_PREFIX}.*`, `${EVENTS_PREFIX}.*.*.>`] }
          : {}),
      })
      .catch(() => undefined);
    const consumer = await this.js.consumers.get(this.stream, NAME);
    this.loop = (async () => {
      while (this.running) {
        try {
          const it = await consumer.fetch({ max_messages: 256, expires: 2000 });
          this.stopFetch = () => it.stop();
          const fetched: JsMsg[] = [];
          for await (const m of it) fetched.push(m);
          if (fetched.length > 0) await this.deadLetter(fetched);
          else if (
            this.source === 'retired' &&
            (await this.jsm.streams.info(this.stream)).state.messages === 0
          ) {
            // Drained: nothing publishes on its retired subject, so it stays empty.
            await this.jsm.streams.delete(this.stream).catch(() => undefined);
            this.log.info({ stream: this.stream }, 'retired stream drained and deleted');
            break;
          }
        } catch (err) {
          if (!this.running) break;
          if (this.source === 'retired' && !(await this.jsm.streams.info(this.stream).catch(() => null)))
            break;
          this.log.warn({ err: (err as Error).message }, 'unrouted dead-lettering failed; retrying');
          await new Promise((r) => setTimeout(r, 500));
        }
      }
    })();
  }

  /** Stores the dead letters of `msgs` and acknowledges each stored one; the rest is redelivered. */
  private async deadLetter(msgs: JsMsg[]): Promise<void> {
    const codes: string[] = [];
    let out: Outgoing[] = msgs.map((m) => {
      const unmapped = m.subject.split('.').length === 3;
      const code = unmapped ? 'PARTITA_ERR_UNMAPPED' : 'PARTITA_ERR_UNROUTABLE';
      codes.push(code);
      const message = unmapped
        ? 'published while the deployment relied on a server mapping the server lacked; publish it again'
        : `subject "${m.subject}" does not have the shape events.<type>.<key>`;
      return deadLetterMessage({
        subject: m.subject,
        data: m.data,
        headers: m.headers,
        stream: this.stream,
        seq: m.seq,
        code,
        message,
      });
    });
    let stored = await this.publisher.publish(out, PUBLISH_TIMEOUT_MS);
    // One the dead-letter stream refuses for good (its payload over the stream's limit) goes again
    // without its payload, its size in a header.
    if (stored.refused.size > 0) {
      out = out.map((o, i) => {
        if (!stored.refused.has(i)) return o;
        const data = typeof o.data === 'string' ? Buffer.byteLength(o.data) : o.data.length;
        o.headers?.set(DLQ_HEADERS.size, String(data));
        return { ...o, data: new Uint8Array(0) };
      });
      const refused = [...stored.refused.keys()];
      const again = await this.publisher.publish(
        refused.map((i) => out[i]!),
        PUBLISH_TIMEOUT_MS,
      );
      const seqs = [...stored.seqs];
      const duplicate = new Uint8Array(stored.duplicate);
      refused.forEach((i, j) => {
        seqs[i] = again.seqs[j]!;
        duplicate[i] = again.duplicate[j]!;
      });
      stored = { ...stored, seqs, duplicate };
    }
    for (let i = 0; i < msgs.length; i++) {
      if (stored.seqs[i] === 0) continue;
      // A redelivery (after a crash between publish and ack) was deduplicated: count it once.
      if (!stored.duplicate[i]) {
        this.metrics.deadLetters.inc({ code: codes[i]! });
        this.repeated.warn(
          `unrouted:${codes[i]}`,
          { code: codes[i], subject: msgs[i]!.subject.slice(0, 200), seq: msgs[i]!.seq },
          'event dead-lettered',
        );
      }
      msgs[i]!.ack();
    }
    if (stored.error)
      throw new Error(`${stored.failed.length} unrouted dead letters not stored: ${stored.error}`);
  }

  async stop(): Promise<void> {
    this.running = false;
    this.stopFetch?.();
    await this.loop;
  }
}
