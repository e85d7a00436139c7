// What every `partita` command shares: the command shape, usage errors, the ready line.
// A command may live in a module of its own (`cli-<name>.ts`) and be listed in cli.ts.
import { type ConnectionOptions, connect } from '@nats-io/transport-node';
import { PartitaError } from './errors.js';
import { LOG_FORMATS, type LogFormat, setLogFormat } from './logger.js';
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

/** `--log-format`, for the long-running commands (those that log). */
export const LOG_OPTIONS = { 'log-format': { type: 'string' } } as const;

/**
 * Applies `--log-format auto|json|pretty` before a command starts anything that logs: pretty on a
 * terminal and JSON elsewhere by default (auto), or as asked.
 */
export function applyLogFormat(v: Values): void {
  const f = v['log-format'];
  if (f === undefined) return;
  if (!LOG_FORMATS.includes(f as LogFormat))
    throw new UsageError(`--log-format must be ${LOG_FORMATS.join(', ')}, got "${String(f)}"`);
  setLogFormat(f as LogFormat);
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

/**
 * `err` as the one line a user needs when it is a failure to reach NATS (nothing listens at the
 * URL, a DNS name that does not resolve, a timeout): the URLs tried and what to do. Any other
 * error is returned as it is.
 */
export function natsUnreachable(err: unknown, servers: string | readonly string[]): unknown {
  const e = err as Error & { code?: string; cause?: Error };
  if (e instanceof PartitaError) return err;
  const text = `${e?.message ?? ''} ${e?.cause?.message ?? ''}`;
  const connectFailed =
    e?.name === 'ConnectionError' ||
    /ECONNREFUSED|ENOTFOUND|EAI_AGAIN|connection refused|timeout/i.test(text);
  if (!connectFailed) return err;
  const urls = typeof servers === 'string' ? servers : servers.join(',');
  return new PartitaError(
    'PARTITA_ERR_NATS_UNREACHABLE',
    `nothing answers at ${urls} (${e.message}): start NATS with \`partita nats\` (or everything with \`partita dev\`), or pass --nats URL`,
    { cause: err },
  );
}

/** `connect` for commands: a NATS that does not answer is one clear line, not a stack. */
export async function connectCli(servers: string[], opts: Omit<ConnectionOptions, 'servers'> = {}) {
  try {
    return await connect({ servers, ...opts });
  } catch (err) {
    throw natsUnreachable(err, servers);
  }
}

/**
 * Runs `stop` once the first SIGTERM or SIGINT has come (the caller awaited it), bounded: if it
 * takes longer than `timeoutMs`, or a second signal comes, writes why (`waiting` says what the stop
 * is waiting for) and exits 1 at once. A stop that hangs (outputs NATS never acknowledges, a
 * worker that never answers) must not leave a process that only SIGKILL ends.
 */
export async function stopWithin(
  command: string,
  timeoutMs: number,
  stop: () => Promise<void>,
  waiting: () => string = () => '',
): Promise<number> {
  const bail = (why: string): never => {
    const detail = waiting();
    process.stderr.write(`partita ${command}: ${why}${detail ? ` (waiting for: ${detail})` : ''}; exiting\n`);
    process.exit(1);
  };
  let timer: NodeJS.Timeout | undefined;
  const onSignal = (s: NodeJS.Signals) => bail(`${s} while stopping`);
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  const timedOut = Symbol('timed out');
  try {
    const r = await Promise.race([
      stop(),
      new Promise<symbol>((res) => {
        timer = setTimeout(() => res(timedOut), timeoutMs);
      }),
    ]);
    if (r === timedOut) bail(`did not stop within ${timeoutMs} ms`);
    return 0;
  } finally {
    clearTimeout(timer);
    process.removeListener('SIGTERM', onSignal);
    process.removeListener('SIGINT', onSignal);
  }
}
