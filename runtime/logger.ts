// Structured logs (pino) on stderr; stdout carries the `partita ready` line. Every line of a node
// carries `node`; a partition's lines add `partition`, an actor's add `actor` (child loggers), so
// one query finds everything about a node, a partition or an actor.
import { pino } from 'pino';

export type Logger = pino.Logger;

/** @param destination where lines go; stderr by default (tests pass a stream). */
export function createLogger(
  bindings: Record<string, unknown> = {},
  destination: pino.DestinationStream = pino.destination(2),
): Logger {
  return pino({ level: process.env.PARTITA_LOG_LEVEL ?? 'info', base: bindings }, destination);
}

/** A partition's logger: every line names the partition (the node comes from the parent). */
export function partitionLogger(log: Logger, partition: number): Logger {
  return log.child({ partition });
}

/** An actor's logger; `actor` null (an event no actor took) leaves the parent's bindings. */
export function actorLogger(log: Logger, actor: string | null): Logger {
  return actor === null ? log : log.child({ actor });
}

/**
 * Logs a failure that can repeat thousands of times a second (a flood of bad events, a stream
 * that refuses) as one line per kind and interval: the first at once, then, at the end of the
 * interval, one line with how many more came and the last one's fields. One warn line per dead
 * letter wrote 21 MB in a flood of 100k bad events and kept the main thread busy writing it.
 */
export class RepeatedLog {
  private readonly kinds = new Map<string, { n: number; fields: Record<string, unknown>; msg: string }>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: Logger,
    private readonly everyMs = 10_000,
  ) {}

  warn(kind: string, fields: Record<string, unknown>, msg: string): void {
    const seen = this.kinds.get(kind);
    if (seen) {
      seen.n++;
      seen.fields = fields;
      return;
    }
    this.kinds.set(kind, { n: 0, fields, msg });
    this.log.warn(fields, msg);
    this.timer ??= setTimeout(() => this.flush(), this.everyMs).unref();
  }

  /** Writes the counts of what repeated since its first line, and starts a new interval. */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const kinds = [...this.kinds.values()];
    this.kinds.clear();
    for (const { n, fields, msg } of kinds)
      if (n > 0) this.log.warn({ ...fields, repeated: n, intervalMs: this.everyMs }, `${msg} (repeated)`);
  }
}
