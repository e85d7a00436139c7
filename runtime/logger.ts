import { pino } from 'pino';

export type Logger = pino.Logger;

/** Structured logs on stderr (stdout carries the `partita ready` line). */
export function createLogger(bindings: Record<string, unknown> = {}): Logger {
  return pino({ level: process.env.PARTITA_LOG_LEVEL ?? 'info', base: bindings }, pino.destination(2));
}
