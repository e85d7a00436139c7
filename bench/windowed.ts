// Bench phase `windowed`: the backlog of the `backlog` phase, with event times spread over
// `spanMinutes`, worked off by an actor with 1m/5m/1h rollups (bench/windowed-actors). Timed like
// the plain backlog (from the startNode call until every partition has everything acknowledged).
// Two shapes: the backlog's own keys (100k keys for 200k events: nearly every event opens its own
// windows, the worst case), printed beside the `backlog` phase; and `fewKeys` keys (many events
// per window, as rollups usually see), run with both the windowed and the plain bench actor here.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { connect } from '@nats-io/transport-node';
import { pino } from 'pino';
import { AGG_STREAM, ensureTopology, inStream, startNatsServer, startNode } from '../runtime/index.js';

export interface WindowedOptions {
  events: number;
  keys: number;
  partitions: number;
  threads?: number;
  /** Event time covered by the backlog, so windows close while it is worked off. @default 10 */
  spanMinutes?: number;
  /** The same events as the plain backlog (payload and key), given their index. */
  event: (i: number) => [string, string];
}

export interface RunResult {
  eventsPerSec: number;
  ackedMs: number;
  windowResults: number;
  lateEvents: number;
}

export interface WindowedResult extends RunResult {
  fewKeys: number;
  fewWindowed: RunResult;
  fewPlain: RunResult;
}

const WINDOWED_ACTORS = fileURLToPath(new URL('./windowed-actors/', import.meta.url));
const PLAIN_ACTORS = fileURLToPath(new URL('./actors/', import.meta.url));

export async function benchWindowed(o: WindowedOptions & { fewKeys?: number }): Promise<WindowedResult> {
  const fewKeys = o.fewKeys ?? 1000;
  // The same events on fewer keys: key index i of the backlog's own key, mod fewKeys.
  const few = (i: number): [string, string] => {
    const [subject, payload] = o.event(i);
    const key = subject.split('.')[2]!;
    return [`events.tx.a${Number(key.slice(1)) % fewKeys}`, payload];
  };
  const worst = await runBacklog({ ...o }, WINDOWED_ACTORS, 'windowed');
  const fewPlain = await runBacklog({ ...o, keys: fewKeys, event: few }, PLAIN_ACTORS, 'plain');
  const fewWindowed = await runBacklog({ ...o, keys: fewKeys, event: few }, WINDOWED_ACTORS, 'windowed');
  return { ...worst, fewKeys, fewPlain, fewWindowed };
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function runBacklog(o: WindowedOptions, actorsDir: string, label: string): Promise<RunResult> {
  const dir = mkdtempSync(join(tmpdir(), 'partita-bench-windowed-'));
  const server = await startNatsServer({ port: 0, dataDir: join(dir, 'nats'), partitions: o.partitions });
  const nc = await connect({ servers: server.url, name: 'partita-bench-windowed' });
  let node: Awaited<ReturnType<typeof startNode>> | undefined;
  try {
    const { jsm } = await ensureTopology(nc, { partitions: o.partitions });
    const span = (o.spanMinutes ?? 10) * 60_000;
    const t0Event = Date.now() - span;
    process.stderr.write(
      `Partita ${label} backlog: publishing ${o.events} events over ${o.keys} keys, ${span / 60_000} min of event time ...\n`,
    );
    for (let i = 0; i < o.events; i++) {
      const [subject, payload] = o.event(i);
      // Event time advances through the span, with up to 2 s of disorder (the actor allows 5 s).
      const ts = t0Event + Math.floor((i / o.events) * span) - ((i * 7919) % 2000);
      nc.publish(subject, `${payload.slice(0, -1)},"ts":${ts}}`);
      if (i % 5000 === 4999) await nc.flush();
    }
    await nc.flush();
    const stored = async () => {
      let n = 0;
      for (let p = 0; p < o.partitions; p++) n += (await jsm.streams.info(inStream(p))).state.messages;
      return n;
    };
    while ((await stored()) < o.events) await sleep(20);
    const t0 = performance.now();
    node = await startNode({
      natsUrl: server.url,
      actorsDir,
      dataDir: join(dir, 'node'),
      threads: o.threads,
      partitions: o.partitions,
      logger: pino({ level: process.env.PARTITA_LOG_LEVEL ?? 'warn' }),
    });
    const deadline = t0 + 600_000;
    for (;;) {
      let done = true;
      for (let p = 0; p < o.partitions && done; p++) {
        let found = false;
        for await (const ci of jsm.consumers.list(inStream(p))) {
          if (!ci.name.startsWith(`partita-p${p}-`)) continue;
          found = true;
          // Ticks may follow the events: done when the events' last sequence is acknowledged.
          if (ci.num_pending > 0 || ci.num_ack_pending > 0) done = false;
        }
        if (!found) done = false;
      }
      if (done || performance.now() > deadline) break;
      await sleep(5);
    }
    const ackedMs = performance.now() - t0;
    const late = await node.metrics.lateEvents.get();
    const result: RunResult = {
      eventsPerSec: o.events / (ackedMs / 1000),
      ackedMs,
      windowResults: (await jsm.streams.info(AGG_STREAM)).state.messages,
      lateEvents: late.values.reduce((a, v) => a + v.value, 0),
    };
    process.stderr.write(
      `  ${Math.round(result.eventsPerSec)} events/s incl. start-up (all acked at ${Math.round(ackedMs)} ms); ` +
        `${result.windowResults} window results in ${AGG_STREAM}; ${result.lateEvents} late events\n`,
    );
    return result;
  } finally {
    await node?.stop().catch(() => undefined);
    await nc.close().catch(() => undefined);
    await server.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}
