// Gateway benchmarks, run by `npm run bench -- --only fanout,features`:
//
//   fanout    a `partita gateway` child with N WebSocket clients (worker threads of this process)
//             subscribed to one actor; state changes are written into the state bucket at a fixed
//             rate (as a node commits them; the bucket republishes each on partita.state.>). The
//             baseline is a plain NATS subscriber to partita.state.> in the main thread of the same
//             process: "added latency" is a client's receipt minus the baseline's receipt of the same
//             change, so it is what the gateway's fan-out adds to what NATS already costs.
//   features  p50/p99 of a 100-entity, 3-feature POST /get-online-features against the same child,
//             over states a `partita node` child committed (the bench's `account` actor), next to
//             its baseline: the same 100 reads as parallel KV gets from a nats.js client.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
import { STATE_BUCKET, stateKvKey } from '../runtime/index.js';
import { type NodeProcess, spawnPartita } from '../test/helpers/node-process.js';
import type { FanoutWorkerConfig, FanoutWorkerMsg } from './fanout-worker.js';

export interface GatewayBenchEnv {
  url: string;
  /** A fresh directory of the run (a node's data dir goes under it). */
  dir: string;
}

/** The bench's actors (`account`: a running count and total per key). */
const ACTORS_DIR = fileURLToPath(new URL('./actors/', import.meta.url));

export interface Percentiles {
  p50: number;
  p95: number;
  p99: number;
  max: number;
  n: number;
}

export function percentiles(xs: number[] | Float64Array): Percentiles {
  const s = Float64Array.from(xs).sort();
  const at = (q: number) =>
    s.length === 0 ? Number.NaN : s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  return {
    p50: at(0.5),
    p95: at(0.95),
    p99: at(0.99),
    max: s.length ? s[s.length - 1]! : Number.NaN,
    n: s.length,
  };
}

export interface FanoutOptions {
  clients: number;
  /** State changes per second, spread over `keys` keys. */
  rate: number;
  seconds: number;
  warmupSeconds: number;
  keys: number;
  workers: number;
}

export interface FanoutResult extends FanoutOptions {
  setupSeconds: number;
  published: number;
  measured: number;
  /** Deliveries expected in the window: measured changes × clients. */
  expected: number;
  delivered: number;
  /** Deliveries per second across all clients, in the window. */
  deliveredPerSecond: number;
  addedLatencyMs: Percentiles;
  /** Write → the baseline subscriber's receipt (the NATS path alone). */
  baselineLatencyMs: Percentiles;
  /** The gateway's own fan-out rounds (partita_gateway_push_round_seconds): upper bucket bounds. */
  gatewayRoundMs: { p50: number; p99: number; rounds: number };
  /** The gateway process's CPU over the window: cores used, and µs per delivered change. */
  gatewayCpu: { cores: number; usPerDelivery: number };
}

/** Upper bucket bounds of a Prometheus histogram's quantiles, from its text exposition. */
function histogramQuantiles(text: string, name: string, qs: number[]): { q: number[]; count: number } {
  const buckets: [number, number][] = [];
  for (const line of text.split('\n')) {
    const m = new RegExp(`^${name}_bucket\\{le="([^"]+)"\\} (\\d+)`).exec(line);
    if (m) buckets.push([m[1] === '+Inf' ? Infinity : Number(m[1]), Number(m[2])]);
  }
  const count = buckets.at(-1)?.[1] ?? 0;
  return { q: qs.map((q) => (buckets.find(([, c]) => c >= q * count)?.[0] ?? Number.NaN) * 1000), count };
}

/** CPU time (user + system) of a process, in ms; Linux clock ticks of 10 ms. */
function cpuMs(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * 10;
  } catch {
    return Number.NaN;
  }
}

const wall = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function spawnGateway(env: GatewayBenchEnv): Promise<[NodeProcess, string]> {
  const gw = await spawnPartita(['gateway', '--nats', env.url, '--port', '0', '--rate-limit', '0']);
  return [gw, gw.ready.gateway!];
}

function stateRecord(actor: string, key: string, state: unknown, seq: number): string {
  return JSON.stringify({
    actor,
    key,
    state,
    seq,
    updatedAt: new Date().toISOString(),
    partition: 0,
    epoch: 1,
  });
}

export async function benchFanout(env: GatewayBenchEnv, opts: FanoutOptions): Promise<FanoutResult> {
  const nc = await connect({ servers: env.url, name: 'bench-fanout' });
  const [gw, gwUrl] = await spawnGateway(env);
  const workers: Worker[] = [];
  try {
    const t0 = performance.now();
    const wsUrl = `${gwUrl.replace(/^http/, 'ws')}/v1/ws?actor=fan`;
    const results: Promise<Extract<FanoutWorkerMsg, { type: 'result' }>>[] = [];
    const readies: Promise<void>[] = [];
    for (let w = 0; w < opts.workers; w++) {
      const share = Math.floor(opts.clients / opts.workers) + (w < opts.clients % opts.workers ? 1 : 0);
      const worker = new Worker(new URL('./fanout-worker.js', import.meta.url), {
        workerData: { url: wsUrl, clients: share, wave: 50 } satisfies FanoutWorkerConfig,
      });
      workers.push(worker);
      let onReady!: () => void;
      let onResult!: (m: Extract<FanoutWorkerMsg, { type: 'result' }>) => void;
      let onError!: (e: Error) => void;
      readies.push(
        new Promise<void>((res, rej) => {
          onReady = res;
          onError = rej;
        }),
      );
      results.push(
        new Promise((res, rej) => {
          onResult = res;
          const prev = onError;
          onError = (e) => {
            prev(e);
            rej(e);
          };
        }),
      );
      worker.on('message', (m: FanoutWorkerMsg) => {
        if (m.type === 'ready') onReady();
        else if (m.type === 'result') onResult(m);
        else onError(new Error(m.error));
      });
      worker.once('error', (e) => onError(e));
    }
    await Promise.all(readies);
    const setupSeconds = (performance.now() - t0) / 1000;

    const warm = Math.round(opts.rate * opts.warmupSeconds);
    const total = warm + Math.round(opts.rate * opts.seconds);
    const writtenAt = new Float64Array(total + 1);
    const baseAt = new Float64Array(total + 1);
    const seqRe = /"seq":(\d+)/;
    const base = nc.subscribe('partita.state.fan.>', {
      callback: (_e, m) => {
        const t = wall();
        const seq = Number(seqRe.exec(m.string())?.[1] ?? 0);
        if (seq > 0 && seq <= total) baseAt[seq] = t;
      },
    });
    await nc.flush();
    // Paced writes: change `seq` is due at start + seq / rate.
    const start = wall() + 50;
    let cpuAtWindow = Number.NaN;
    let wallAtWindow = 0;
    for (let seq = 1; seq <= total; seq++) {
      const due = start + ((seq - 1) * 1000) / opts.rate;
      const wait = due - wall();
      if (wait > 1) await sleep(wait);
      if (seq === warm + 1) {
        cpuAtWindow = cpuMs(gw.child.pid);
        wallAtWindow = wall();
      }
      const key = `k-${seq % opts.keys}`;
      writtenAt[seq] = wall();
      nc.publish(`$KV.${STATE_BUCKET}.${stateKvKey('fan', key)}`, stateRecord('fan', key, { v: seq }, seq));
    }
    await nc.flush();
    const cpuWindow = cpuMs(gw.child.pid) - cpuAtWindow;
    const wallWindow = wall() - wallAtWindow;
    // Let the last changes arrive everywhere.
    const deadline = Date.now() + 5000;
    while (baseAt[total] === 0 && Date.now() < deadline) await sleep(20);
    await sleep(1500);
    base.unsubscribe();
    const metrics = await (await fetch(`${gwUrl}/metrics`)).text();
    const round = histogramQuantiles(metrics, 'partita_gateway_push_round_seconds', [0.5, 0.99]);
    for (const w of workers) w.postMessage('stop');
    const all = await Promise.all(results);

    const added: number[] = [];
    let delivered = 0;
    for (const r of all) {
      const s = r.samples;
      for (let i = 0; i < s.length; i += 2) {
        const seq = s[i]!;
        if (seq <= warm || seq > total || baseAt[seq] === 0) continue;
        delivered++;
        added.push(s[i + 1]! - baseAt[seq]!);
      }
    }
    const baseline: number[] = [];
    for (let seq = warm + 1; seq <= total; seq++)
      if (baseAt[seq]! > 0) baseline.push(baseAt[seq]! - writtenAt[seq]!);
    const measured = total - warm;
    return {
      ...opts,
      setupSeconds,
      published: total,
      measured,
      expected: measured * opts.clients,
      delivered,
      deliveredPerSecond: delivered / opts.seconds,
      addedLatencyMs: percentiles(added),
      baselineLatencyMs: percentiles(baseline),
      gatewayRoundMs: { p50: round.q[0]!, p99: round.q[1]!, rounds: round.count },
      gatewayCpu: {
        cores: cpuWindow / wallWindow,
        usPerDelivery: (cpuWindow * 1000) / Math.max(1, delivered),
      },
    };
  } finally {
    for (const w of workers) await w.terminate();
    await gw.kill('SIGTERM');
    await nc.close();
  }
}

export interface FeaturesOptions {
  /** Keys of state to choose the entities from. */
  keys: number;
  entities: number;
  requests: number;
}

export interface FeaturesResult extends FeaturesOptions {
  requestMs: Percentiles;
  /** The same reads as parallel KV gets from a nats.js client. */
  kvBaselineMs: Percentiles;
  allPresent: boolean;
  /** Timed requests by the gateway's `Partita-State-Source` header (`none` without one). */
  sources: Record<string, number>;
}

export async function benchFeatures(env: GatewayBenchEnv, opts: FeaturesOptions): Promise<FeaturesResult> {
  const nc = await connect({ servers: env.url, name: 'bench-features' });
  // The states are committed by a node, which stays up: it owns the partitions the gateway reads.
  const node = await spawnPartita(
    ['node', '--nats', env.url, '--actors', ACTORS_DIR, '--data', join(env.dir, 'features-node')],
    { PARTITA_LOG_LEVEL: process.env.PARTITA_LOG_LEVEL ?? 'warn' },
    30_000,
  );
  const [gw, gwUrl] = await spawnGateway(env);
  try {
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    for (let i = 0; i < opts.keys; i++) {
      nc.publish(`events.tx.u-${i}`, JSON.stringify({ id: i, amount: i / 2 }));
      if (i % 2000 === 0) await nc.flush();
    }
    await nc.flush();
    // Every key's state is stored once the bucket holds one entry per key (history 1).
    const jsm = await jetstreamManager(nc);
    while ((await jsm.streams.info(`KV_${STATE_BUCKET}`)).state.messages < opts.keys) await sleep(50);

    let x = 12345;
    const rnd = () => {
      x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
      return x / 2 ** 32;
    };
    const pick = () => Array.from({ length: opts.entities }, () => `u-${Math.floor(rnd() * opts.keys)}`);
    const body = (ids: string[]) =>
      JSON.stringify({
        features: ['account:count', 'account:total', 'account:lastId'],
        entities: { user_id: ids },
      });
    let allPresent = true;
    const sources: Record<string, number> = {};
    let timed = false;
    const request = async (ids: string[]) => {
      const res = await fetch(`${gwUrl}/get-online-features`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: body(ids),
      });
      const j = (await res.json()) as { results: { statuses: string[] }[] };
      if (res.status !== 200 || !j.results.every((c) => c.statuses.every((s) => s === 'PRESENT')))
        allPresent = false;
      if (timed) {
        const source = res.headers.get('partita-state-source') ?? 'none';
        sources[source] = (sources[source] ?? 0) + 1;
      }
    };
    const time = async (fn: () => Promise<unknown>) => {
      const t = performance.now();
      await fn();
      return performance.now() - t;
    };
    const warmup = Math.max(20, Math.round(opts.requests / 10));
    for (let i = 0; i < warmup; i++) await request(pick());
    timed = true;
    const http: number[] = [];
    const kvTimes: number[] = [];
    // Interleaved, so both see the same machine.
    for (let i = 0; i < opts.requests; i++) {
      const ids = pick();
      http.push(await time(() => request(ids)));
      kvTimes.push(await time(() => Promise.all(ids.map((id) => kv.get(stateKvKey('account', id))))));
    }
    return {
      ...opts,
      requestMs: percentiles(http),
      kvBaselineMs: percentiles(kvTimes),
      allPresent,
      sources,
    };
  } finally {
    await gw.kill('SIGTERM');
    await node.kill('SIGTERM');
    await nc.close();
  }
}
