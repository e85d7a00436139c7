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
