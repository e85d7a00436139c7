// Does the nats-server cluster keep every acknowledged write while one of its servers is paused?
// No Partita node: a 3-server cluster with Partita's streams (R3), 8 producers publishing with
// JetStream (each event retried with its id until acknowledged), and three rounds of one random
// server SIGSTOPped for 3–7 s (the chaos harness's nats-stall). Then it compares what was
// acknowledged with what the ingest stream holds and what the partition streams sourced.
// `node dist/bench/stall-loss.js [runs] [seed]`, with PARTITA_NATS_SERVER for the server to try.
import { jetstream } from '@nats-io/jetstream';
import { ensureTopology, INGEST_STREAM, inStream } from '../runtime/index.js';
import { natsServerVersion } from '../runtime/nats-server.js';
import { seededRandom } from '../test/helpers/check.js';
import { startTestNatsCluster } from '../test/helpers/nats-cluster.js';

const PARTITIONS = 8;
const runs = Number(process.argv[2] ?? 6);
const firstSeed = Number(process.argv[3] ?? 1);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function run(seed: number): Promise<string> {
  const rnd = seededRandom(seed);
  const t = await startTestNatsCluster({ partitions: PARTITIONS });
  try {
    const nc = await t.connect({ name: 'stall-loss' });
    const topo = await ensureTopology(nc, { partitions: PARTITIONS, replicas: 3 });
    const js = jetstream(nc);
    let acked = 0;
    let next = 0;
    let stop = false;
    const producers = Array.from({ length: 8 }, async () => {
      while (!stop) {
        const id = next++;
        for (;;) {
          try {
            await js.publish(`events.tx.k${id % 97}`, JSON.stringify({ id }), {
              msgID: `e-${id}`,
              timeout: 3000,
            });
            acked++;
            break;
          } catch {
            await sleep(50);
          }
        }
      }
    });
    await sleep(3000);
    const stalls: string[] = [];
    for (let round = 0; round < 3; round++) {
      const m = t.cluster.members[Math.floor(rnd() * t.cluster.members.length)]!;
      const ms = 3000 + Math.floor(rnd() * 4000);
      m.server?.process.kill('SIGSTOP');
      await sleep(ms);
      m.server?.process.kill('SIGCONT');
      stalls.push(`${m.name} ${ms} ms`);
      await sleep(8000);
    }
    stop = true;
    await Promise.all(producers);
    const ingest = (await topo.jsm.streams.info(INGEST_STREAM)).state.messages;
    let sourced = 0;
    for (let wait = 0; wait < 120; wait++) {
      sourced = 0;
      for (let p = 0; p < PARTITIONS; p++)
        sourced += (await topo.jsm.streams.info(inStream(p)).catch(() => null))?.state.messages ?? 0;
      if (sourced >= ingest) break;
      await sleep(1000);
    }
    const verdict = acked === ingest && sourced === ingest ? 'kept' : 'LOST';
    return `seed ${seed}: ${acked} acknowledged, ${ingest} in ${INGEST_STREAM}, ${sourced} in the partition streams: ${verdict} (stalled ${stalls.join(', ')})`;
  } finally {
    await t.stop();
  }
}

console.log(`nats-server ${natsServerVersion().text}: ${runs} runs`);
for (let i = 0; i < runs; i++) console.log(await run(firstSeed + i));
process.exit(0);
