// What a flood of log lines costs the main thread, by log format: JSON to stderr (what a log
// pipeline gets), pino-pretty as a pino transport (what a terminal gets, formatted in a worker
// thread), and pino-pretty as a stream on the main thread (the alternative not taken). For each:
// the main thread's busy time and its longest event-loop delay, from the first line until every
// line is out. Each runs in a child process with this process's stderr, so run it in a terminal
// to measure a terminal: `node dist/bench/log-lines.js [lines]` (default 100,000); the lines
// themselves go to stderr (`2>/dev/null` measures without a terminal).
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import type { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import pretty from 'pino-pretty';
import { prettyTransport } from '../runtime/logger.js';

const MODES = ['json', 'pretty-transport', 'pretty-main-thread'] as const;
type Mode = (typeof MODES)[number];

/** The destination `createLogger` uses for each format, and the rejected main-thread one. */
function destination(mode: Mode): Writable {
  if (mode === 'json') return pino.destination(2) as unknown as Writable;
  if (mode === 'pretty-transport') return pino.transport(prettyTransport()) as unknown as Writable;
  return pretty(prettyTransport().options) as unknown as Writable;
}

/** Writes `n` warn lines in bursts of 1,000, yielding between bursts as a busy node would. */
async function flood(mode: Mode, n: number): Promise<void> {
  const dest = destination(mode);
  if (mode === 'pretty-transport') await once(dest, 'ready');
  const log = pino({ base: { node: 'bench' } }, dest as unknown as pino.DestinationStream);
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();
  const elu0 = performance.eventLoopUtilization();
  const t0 = performance.now();
  for (let b = 0; b < n / 1000; b++) {
    for (let i = 0; i < 1000; i++)
      log.warn({ partition: i % 8, code: 'PARTITA_ERR_DECODE', seq: b * 1000 + i }, 'event dead-lettered');
    await new Promise((r) => setImmediate(r));
  }
  // Every line out. The transport's end() would block this thread until the worker is done, so
  // it is asked to flush (the worker drains what it was given, then answers).
  if (mode === 'pretty-transport') await new Promise((r) => log.flush(r));
  else {
    dest.end();
    await once(dest, 'close');
  }
  const elu = performance.eventLoopUtilization(elu0);
  delay.disable();
  process.stdout.write(
    `${JSON.stringify({
      busyMs: Math.round(elu.active),
      wallMs: Math.round(performance.now() - t0),
      maxDelayMs: +(delay.max / 1e6).toFixed(1),
    })}\n`,
  );
}

const [mode, lines] = process.argv.slice(2);
if (MODES.includes(mode as Mode)) {
  await flood(mode as Mode, Number(lines));
} else {
  const n = Number(mode ?? 100_000);
  process.stdout.write(
    `${n} warn lines with fields; stderr is ${process.stderr.isTTY ? 'a terminal' : 'not a terminal'}\n`,
  );
  for (const m of MODES) {
    const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), m, String(n)], {
      stdio: ['ignore', 'pipe', 'inherit'],
      encoding: 'utf8',
    });
    const run = JSON.parse(r.stdout) as { busyMs: number; wallMs: number; maxDelayMs: number };
    process.stdout.write(
      `${m.padEnd(20)} main thread busy ${String(run.busyMs).padStart(5)} ms (${((run.busyMs * 1000) / n).toFixed(1)} µs a line), longest event-loop delay ${run.maxDelayMs} ms, every line out after ${run.wallMs} ms\n`,
    );
  }
}
