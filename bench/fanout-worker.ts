// A worker thread holding a share of the fan-out benchmark's WebSocket clients, so that reading
// 1,000 sockets does not compete with the baseline subscriber on the main thread. Each client
// records (seq, receipt time) of every change it gets; the main thread turns them into latencies.
import { parentPort, workerData } from 'node:worker_threads';
import { WebSocket } from 'ws';

export interface FanoutWorkerConfig {
  url: string;
  clients: number;
  /** Clients opened at once; the next wave waits for their snapshots. */
  wave: number;
}

export type FanoutWorkerMsg =
  | { type: 'ready'; clients: number }
  | { type: 'result'; samples: Float64Array; perClient: number[] }
  | { type: 'error'; error: string };

const cfg = workerData as FanoutWorkerConfig;
const now = () => performance.timeOrigin + performance.now();
const SEQ = /"seq":(\d+)/g;

let samples = new Float64Array(1 << 20);
let n = 0;
const add = (seq: number, t: number) => {
  if (n + 2 > samples.length) {
    const bigger = new Float64Array(samples.length * 2);
    bigger.set(samples);
    samples = bigger;
  }
  samples[n++] = seq;
  samples[n++] = t;
};

const sockets: WebSocket[] = [];
const perClient: number[] = [];

async function openOne(i: number): Promise<void> {
  perClient[i] = 0;
  const ws = new WebSocket(cfg.url);
  sockets.push(ws);
  await new Promise<void>((resolve, reject) => {
    ws.on('message', (data) => {
      const t = now();
      const s = data.toString();
      if (s.startsWith('{"type":"changes"')) {
        for (const m of s.matchAll(SEQ)) {
          add(Number(m[1]), t);
          perClient[i]!++;
        }
      } else if (s.startsWith('{"type":"ready"')) resolve();
    });
    ws.once('error', reject);
  });
}

async function main() {
  for (let i = 0; i < cfg.clients; i += cfg.wave) {
    const wave = [];
    for (let j = i; j < Math.min(cfg.clients, i + cfg.wave); j++) wave.push(openOne(j));
    await Promise.all(wave);
  }
  parentPort!.postMessage({ type: 'ready', clients: sockets.length } satisfies FanoutWorkerMsg);
  parentPort!.once('message', () => {
    for (const ws of sockets) ws.terminate();
    const out = samples.slice(0, n);
    parentPort!.postMessage({ type: 'result', samples: out, perClient } satisfies FanoutWorkerMsg, [
      out.buffer,
    ]);
  });
}

main().catch((err) =>
  parentPort!.postMessage({
    type: 'error',
    error: (err as Error).stack ?? String(err),
  } satisfies FanoutWorkerMsg),
);
