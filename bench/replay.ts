// `node dist/bench/replay.js [--events N] [--keys N] [--partitions N]`: how long `partita replay`
// takes, next to the baseline of the same run: the same node applying the same events live, from a
// backlog. A replay folds on the owner's main thread (in time slices) and reads the stream with an
// ordered consumer; the live path batches into worker threads. It reports; it asserts nothing.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { pino } from 'pino';
import { ensureTopology, inStream, startNatsServer, startNode } from '../runtime/index.js';
import { runReplay } from '../runtime/replay.js';

const { values } = parseArgs({
  options: {
    events: { type: 'string', default: '100000' },
    keys: { type: 'string', default: '10000' },
    partitions: { type: 'string', default: '8' },
  },
});
const events = Number(values.events);
const keys = Number(values.keys);
const partitions = Number(values.partitions);

const ACTOR = `export default {
  name: 'tally', events: ['sales'],
  initial: () => ({ n: 0, total: 0 }),
  handle(s, e) { s.n += 1; s.total += e.data.price * e.data.qty; return s; },
};`;

const dir = mkdtempSync(join(tmpdir(), 'partita-bench-replay-'));
const server = await startNatsServer({ port: 0, dataDir: join(dir, 'nats'), partitions });
const nc = await connect({ servers: server.url });
try {
  const topo = await ensureTopology(nc, { partitions });
  const actors = join(dir, 'actors');
  mkdirSync(actors);
  writeFileSync(join(actors, 'tally.mjs'), ACTOR);
  for (let i = 0; i < events; i++) {
    nc.publish(`events.sales.k${i % keys}`, JSON.stringify({ price: (i % 50) + 1, qty: (i % 5) + 1 }));
    if (i % 10_000 === 0) await nc.flush();
  }
  await nc.flush();
  let stored = 0;
  while (stored < events) {
    stored = 0;
    for (let p = 0; p < partitions; p++) stored += (await topo.jsm.streams.info(inStream(p))).state.messages;
  }

  // Baseline: the node works off the backlog through its worker threads.
  const t0 = performance.now();
  const node = await startNode({
    natsUrl: server.url,
    actorsDir: actors,
    dataDir: join(dir, 'node'),
    logger: pino({ level: 'silent' }),
  });
  for (;;) {
    const done = node.progress().reduce((a, p) => a + p.committedSeq, 0);
    if (node.progress().length === partitions && done >= events) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const liveMs = performance.now() - t0;

  const t1 = performance.now();
  const results = await runReplay(nc, { actor: 'tally', fromSeq: 1, who: 'bench' });
  const replayMs = performance.now() - t1;
  const folded = results.reduce((a, r) => a + r.events, 0);
  await node.stop();

  const rate = (n: number, ms: number) => Math.round(n / (ms / 1000));
  console.log(`events ${events}, keys ${keys}, partitions ${partitions}`);
  console.log(`live (backlog, worker threads)   ${Math.round(liveMs)} ms  ${rate(events, liveMs)} events/s`);
  console.log(
    `replay (all partitions, from 1)  ${Math.round(replayMs)} ms  ${rate(folded, replayMs)} events/s`,
  );
  console.log(
    `replay / live rate               ${(rate(folded, replayMs) / rate(events, liveMs)).toFixed(2)}`,
  );
} finally {
  await nc.close();
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
}
