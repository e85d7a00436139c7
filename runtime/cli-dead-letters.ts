// `partita dead-letters [--since 1h] [--type T] [--limit N] [--json]`: the dead-letter stream,
// summed by code, type and actor over a recent window, with the latest entries.
import { type Command, connectCli, int, natsUrlOf, UsageError } from './cli-kit.js';
import { formatDeadLetters, readDeadLetters } from './dead-letter-report.js';

const UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

function sinceMs(v: string | undefined): number {
  if (v === undefined) return UNITS.h!;
  const m = /^(\d+)(s|m|h|d)$/.exec(v);
  if (!m) throw new UsageError(`--since must be a duration such as 15m, 1h or 2d, got "${v}"`);
  return Number(m[1]) * UNITS[m[2]!]!;
}

export const deadLettersCommand: Command = {
  options: {
    nats: { type: 'string' },
    since: { type: 'string' },
    type: { type: 'string' },
    limit: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run(v) {
    const ms = sinceMs(v.since as string | undefined);
    const nc = await connectCli(natsUrlOf(v), { name: 'partita-dead-letters' });
    try {
      const r = await readDeadLetters(nc, {
        sinceMs: ms,
        type: v.type as string | undefined,
        limit: int(v.limit as string | undefined, 'limit'),
      });
      process.stdout.write(v.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatDeadLetters(r)}\n`);
    } finally {
      await nc.close();
    }
    return 0;
  },
};
