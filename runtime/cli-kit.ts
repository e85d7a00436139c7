// What every `partita` command shares: the command shape, usage errors, the ready line.
// A command may live in a module of its own (`cli-<name>.ts`) and be listed in cli.ts.
import { PartitaError } from './errors.js';
import { defaultNatsUrl } from './node.js';

export type Values = Record<string, string | boolean | undefined>;

export interface Command {
  options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>;
  /** Positional arguments allowed (for subcommands such as `schema add <type> <file>`). */
  positionals?: boolean;
  run(v: Values, positionals: string[]): Promise<number>;
}

export class UsageError extends PartitaError {
  constructor(detail: string) {
    super('PARTITA_ERR_USAGE', detail);
  }
}

export function int(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`--${name} must be a whole number, got "${v}"`);
  return n;
}

export function ready(pairs: Record<string, string | undefined>): void {
  const parts = Object.entries(pairs)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${v}`);
  process.stdout.write(`partita ready ${parts.join(' ')}\n`);
}

/** Resolves on the first SIGTERM or SIGINT. */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((res) => {
    process.once('SIGTERM', () => res('SIGTERM'));
    process.once('SIGINT', () => res('SIGINT'));
  });
}

/** The `--nats` option as a server list: comma-separated, default `$PARTITA_NATS`. */
export function natsUrlOf(v: Values): string[] {
  return ((v.nats as string | undefined) ?? defaultNatsUrl()).split(',');
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A duration option: `90d`, `36h`, `15m`, `30s`, `500ms` or plain milliseconds; 0 means none. */
export function durationMs(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(v.trim());
  if (!m) throw new UsageError(`--${name} must be a duration such as 90d, 36h or 500ms, got "${v}"`);
  return Math.round(Number(m[1]) * UNITS[m[2] ?? 'ms']!);
}
