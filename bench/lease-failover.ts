// Lease failover and the coordinators' request load, with and without expiry markers (nats-server
// 2.11+), in one run. Two nodes share the partitions; the JetStream API requests they send in a
// steady stretch of one lease TTL are counted (listings: stream info and direct gets), then the
// node holding half of the partitions is killed with SIGKILL, and the time is from the kill until
// the other node holds every partition. Only the coordinators run (no partitions' work), so what
// is timed is membership and leases alone. Modes alternate, each on buckets of its own.
//   node dist/bench/lease-failover.js [reps] [baseline dist dir]
// PARTITA_NATS_SERVER picks the server; a baseline's `dist/` (a build of another commit) adds its
// Coordinator as a second candidate, run the same way.
import { type ChildProcess, fork } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { jetstreamManager, StorageType } from '@nats-io/jetstream';
import { type KV, Kvm } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { Coordinator } from '../runtime/coordinator.js';
import { createLogger } from '../runtime/logger.js';
import { natsServerBinary, natsServerVersion, startNatsServer } from '../runtime/nats-server.js';
import { tempDir } from '../test/helpers/nats.js';

const PARTITIONS = 16;
const TTL_MS = 2000;
const log = createLogger({}, { write: () => true } as never);

async function buckets(
  nc: NatsConnection,
  name: string,
  markers: boolean,
): Promise<{ nodes: KV; leases: KV; expiryMarkers: boolean }> {
  const kvm = new Kvm(nc);
  const opts = { history: 1, ttl: TTL_MS, ...(markers ? { markerTTL: TTL_MS } : {}) };
  return {
    nodes: await kvm.create(`${name}_nodes`, { ...opts, storage: StorageType.Memory }),
    leases: await kvm.create(`${name}_leases`, { ...opts, storage: StorageType.File }),
    expiryMarkers: markers,
  };
}

type CoordinatorClass = typeof Coordinator;
const thisDist = fileURLToPath(new URL('..', import.meta.url));
const loadCoordinator = async (dist: string): Promise<CoordinatorClass> =>
  (await import(join(dist, 'runtime', 'coordinator.js'))).Coordinator;

function coordinator(
  C: CoordinatorClass,
  b: { nodes: KV; leases: KV; expiryMarkers: boolean },
  node: string,
  held: Set<number>,
): Coordinator {
  return new C({
    ...b,
    holder: { node, instance: String(process.pid) },
    partitions: PARTITIONS,
    leaseTtlMs: TTL_MS,
    log,
    async start(leases) {
      for (const l of leases) held.add(l.partition);
    },
    async stop(p) {
      held.delete(p);
    },
  });
}

/** The node that gets killed: runs a coordinator and says how many partitions it holds. */
async function child(url: string, name: string, dist: string, markers: boolean): Promise<void> {
  const nc = await connect({ servers: url });
  const held = new Set<number>();
  const c = coordinator(await loadCoordinator(dist), await buckets(nc, name, markers), 'a', held);
  await c.start();
  setInterval(() => process.send?.(held.size), 50);
}

async function once(
  url: string,
  nc: NatsConnection,
  dist: string,
  name: string,
  markers: boolean,
): Promise<{ ms: number; requests: number }> {
  const b = await buckets(nc, name, markers);
  const held = new Set<number>();
  const survivor = coordinator(await loadCoordinator(dist), b, 'b', held);
  await survivor.start();
  const victim: ChildProcess = fork(
    fileURLToPath(import.meta.url),
    ['child', url, name, dist, String(markers)],
    {
      stdio: 'inherit',
    },
  );
  // Wait for the split: each node holds half.
  await new Promise<void>((resolve) => {
    victim.on('message', (n) => {
      if (n === PARTITIONS / 2 && held.size === PARTITIONS / 2) resolve();
    });
  });
  // Count the API requests of one TTL of steady state, then kill at a random point of the renewal
  // cycle.
  let requests = 0;
  const sub = nc.subscribe('$JS.API.>', {
    callback: () => {
      requests++;
    },
  });
  await new Promise((r) => setTimeout(r, TTL_MS));
  sub.unsubscribe();
  await new Promise((r) => setTimeout(r, Math.random() * (TTL_MS / 4)));
  const t0 = performance.now();
  victim.kill('SIGKILL');
  while (held.size < PARTITIONS) await new Promise((r) => setTimeout(r, 5));
  const ms = performance.now() - t0;
  await survivor.stop();
  return { ms, requests: (requests * 1000) / TTL_MS };
}

async function main(): Promise<void> {
  if (process.argv[2] === 'child')
    return child(process.argv[3]!, process.argv[4]!, process.argv[5]!, process.argv[6] === 'true');
  const reps = Number(process.argv[2] ?? 6);
  const candidates: [string, string][] = [['this build', thisDist]];
  if (process.argv[3]) candidates.unshift(['baseline', process.argv[3]]);
  const bin = natsServerBinary();
  const dir = tempDir('partita-bench-');
  const server = await startNatsServer({ port: 0, dataDir: join(dir, 'nats'), partitions: 1 });
  const nc = await connect({ servers: server.url });
  console.log(`nats-server ${natsServerVersion(bin).text}, ${PARTITIONS} partitions, lease TTL ${TTL_MS} ms`);
  const jsm = await jetstreamManager(nc);
  const modes = candidates.flatMap(([label, dist]) =>
    [false, true].map((markers) => ({
      label: `${label}, ${markers ? 'markers' : 'no markers'}`,
      dist,
      markers,
    })),
  );
  const times = new Map<string, number[]>(modes.map((m) => [m.label, []]));
  const loads = new Map<string, number[]>(modes.map((m) => [m.label, []]));
  try {
    for (let i = 0; i < reps; i++) {
      const order = i % 2 === 0 ? modes : [...modes].reverse();
      for (const [j, mode] of order.entries()) {
        const name = `bench_${i}_${j}`;
        const r = await once(server.url, nc, mode.dist, name, mode.markers);
        times.get(mode.label)!.push(r.ms);
        loads.get(mode.label)!.push(r.requests);
        console.log(
          `  run ${i + 1} ${mode.label.padEnd(26)} ${r.ms.toFixed(0)} ms, ${r.requests.toFixed(0)} API requests/s`,
        );
        for (const s of ['nodes', 'leases']) await jsm.streams.delete(`KV_${name}_${s}`);
      }
    }
  } finally {
    await nc.close();
    await server.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
  const stats = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    const mean = s.reduce((a, b) => a + b, 0) / s.length;
    return { mean, median: s[Math.floor(s.length / 2)]!, max: s[s.length - 1]! };
  };
  console.log('\n| coordinator, buckets | failover mean | median | max | API requests/s, 2 nodes |');
  console.log('| --- | --- | --- | --- | --- |');
  for (const m of modes) {
    const t = stats(times.get(m.label)!);
    const l = stats(loads.get(m.label)!);
    console.log(
      `| ${m.label} | ${t.mean.toFixed(0)} ms | ${t.median.toFixed(0)} ms | ${t.max.toFixed(0)} ms | ${l.mean.toFixed(0)} |`,
    );
  }
  process.exit(0);
}

await main();
