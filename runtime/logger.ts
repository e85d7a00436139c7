// Structured logs (pino) on stderr; stdout carries the `partita ready` line. Every line of a node
// carries `node`; a partition's lines add `partition`, an actor's add `actor` (child loggers), so
// one query finds everything about a node, a partition or an actor.
//
// On a terminal the lines are pretty (pino-pretty: time, level, message, then the fields); anywhere
// else, JSON, one object a line, for log pipelines. `--log-format json|pretty` (or
// $PARTITA_LOG_FORMAT) decides instead.
import { pino } from 'pino';

export type Logger = pino.Logger;

export const LOG_FORMATS = ['auto', 'json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

let chosen: LogFormat | undefined;
let shared: pino.DestinationStream | undefined;

/** The process's log format, for loggers created after it (the CLI sets it from `--log-format`). */
export function setLogFormat(format: LogFormat): void {
  if (format !== chosen) shared = undefined;
  chosen = format;
}

/** `json` or `pretty`: the format chosen, else $PARTITA_LOG_FORMAT, else pretty on a terminal. */
export function logFormat(): 'json' | 'pretty' {
  const f = chosen ?? (process.env.PARTITA_LOG_FORMAT as LogFormat | undefined) ?? 'auto';
  if (f === 'json' || f === 'pretty') return f;
  return process.stderr.isTTY ? 'pretty' : 'json';
}

/**
 * stderr, shared by every logger of the process. Pretty lines are formatted by pino-pretty as a
 * transport (pino's documented way): a worker thread formats and writes them. `bench/log-lines.ts`
 * on a terminal, 2 cores: a burst of 10k lines costs the main thread 8 µs a line, as JSON does (9),
 * against 36 for pino-pretty as a stream on the main thread; past the transport's 4 MB buffer
 * (100k lines at once) the main thread waits for the worker, with event-loop stalls of at most
 * 30-55 ms against 135-175 ms on the main thread. RepeatedLog keeps floods from getting there.
 */
function stderr(): pino.DestinationStream {
  shared ??= logFormat() === 'pretty' ? pino.transport(prettyTransport()) : pino.destination(2);
  return shared;
}

/** pino-pretty on stderr: one line each, local time to the millisecond, colours on a terminal. */
export function prettyTransport() {
  return {
    target: 'pino-pretty',
    options: {
      destination: 2,
      // The worker thread has no TTY of its own to detect colours from.
      colorize: process.stderr.isTTY === true && !process.env.NO_COLOR,
      translateTime: 'SYS:yyyy-mm-dd HH:MM:ss.l',
      singleLine: true,
    },
  };
}

/** @param destination where lines go, as JSON; stderr by default (tests pass a stream). */
export function createLogger(
  bindings: Record<string, unknown> = {},
  destination?: pino.DestinationStream,
): Logger {
  return pino({ level: process.env.PARTITA_LOG_LEVEL ?? 'info', base: bindings }, destination ?? stderr());
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
