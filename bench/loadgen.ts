// The live-latency load generator. Two worker threads, each with its own NATS connection, so that
// neither publishing nor measuring competes with the node's main thread, or with each other:
//
// - `pub` publishes `events.tx.<key>` at a fixed rate with core publishes (small bursts per ~1 ms
//   tick, paced by the high-resolution clock) and writes each event's publish time into a shared
//   array just before publishing it;
// - `sub` subscribes to `partita.state.account.>`. A state change carries the id of the last event
//   applied to its key, so every event of that key up to that id is known to be committed and
//   visible at that moment: each published event gets its own latency.
//
// The event → key assignment is decided up front (shared too), so `sub` knows each key's ids.
import { readFileSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { connect } from '@nats-io/transport-node';

export interface LoadgenConfig {
  role: 'pub' | 'sub';
  url: string;
  /** Events per second. */
  rate: number;
  /**
   * Float64Array(1) over a SharedArrayBuffer: wall-clock time (epoch ms, fractional) of the first
   * publish, set once the subscriber is ready (before the publisher starts).
   */
  control: SharedArrayBuffer;
  /** Published but not measured, before the window. */
  warmupMs: number;
  /** The measured window. */
  windowMs: number;
  keys: number;
  /** Int32Array over a SharedArrayBuffer: the key of each event id. */
  keyOf: SharedArrayBuffer;
  /** Float64Array over a SharedArrayBuffer: publish time of each event id (0 = not yet). */
  sentAt: SharedArrayBuffer;
  /** Int32Array(1): events published so far (written by pub). */
  progress: SharedArrayBuffer;
  /** How long `sub` waits, after the publisher is done, for the window's events to show up. */
  drainMs: number;
  clockTickMs: number;
  /** Most events one tick may publish to catch up after a stall (keeps bursts bounded). */
  maxBurst: number;
}

export interface LatencySummary {
  count: number;
  p50: number;
  p95: number;
  p99: number;
  p999: number;
  max: number;
  mean: number;
}

export interface PubResult {
  published: number;
  /** Events published inside the measured window. */
  measured: number;
  /** Achieved rate inside the window. */
  publishRate: number;
  /** Largest gap between two publisher ticks (ms). */
  maxTickGapMs: number;
  /** Ticks later than 5 ms. */
  lateTicks: number;
  /** The publisher fell behind the schedule by this much at worst (events). */
  maxBehind: number;
  cpuMs: number;
}

export interface SubResult {
  /** Window events seen committed on partita.state.account.> */
  delivered: number;
  /** Events (whenever published) seen committed during the window, per second of the window. */
  deliveredRate: number;
  /** State change messages received over the whole run. */
  stateChanges: number;
  /** From the end of the window until the last window event was seen (ms). */
  drainMs: number;
  latencyMs: LatencySummary;
  /**
   * Exactly-once check at the end: per key, the count in the last state seen against the events
   * published to it. `missing` counts events not reflected, `extra` events counted twice.
   */
  check: { keys: number; keysWrong: number; missing: number; extra: number };
  /** Per slice of publish time (from the first publish, warm-up included): latencies of its events. */
  timeline: { fromMs: number; events: number; p50: number; max: number }[];
  cpuMs: number;
}

const SLICE_MS = 250;

export function summarize(values: ArrayLike<number>): LatencySummary {
  const a = Float64Array.from(values).sort();
  const n = a.length;
  const q = (p: number) => (n === 0 ? Number.NaN : a[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))]!);
  let sum = 0;
  for (const v of a) sum += v;
  return {
    count: n,
    p50: q(0.5),
    p95: q(0.95),
    p99: q(0.99),
    p999: q(0.999),
    max: n ? a[n - 1]! : Number.NaN,
    mean: n ? sum / n : Number.NaN,
  };
}

/** CPU time (ms) of the calling thread, from /proc/thread-self/stat. */
export function threadCpuMs(clockTickMs: number): number {
  try {
    const s = readFileSync('/proc/thread-self/stat', 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * clockTickMs;
  } catch {
    return Number.NaN;
  }
}

/** Wall-clock epoch ms with sub-millisecond resolution, comparable across threads. */
export const wallNow = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export const totalEvents = (cfg: Pick<LoadgenConfig, 'rate' | 'warmupMs' | 'windowMs'>) =>
  Math.round((cfg.rate * (cfg.warmupMs + cfg.windowMs)) / 1000);

async function publish(cfg: LoadgenConfig): Promise<PubResult> {
  const cpu0 = threadCpuMs(cfg.clockTickMs);
  const keyOf = new Int32Array(cfg.keyOf);
  const sentAt = new Float64Array(cfg.sentAt);
  const progress = new Int32Array(cfg.progress);
  const startAt = new Float64Array(cfg.control)[0]!;
  const nc = await connect({ servers: cfg.url, name: 'partita-bench-pub' });
  const total = totalEvents(cfg);
  const windowStart = startAt + cfg.warmupMs;
  const windowEnd = windowStart + cfg.windowMs;
  while (wallNow() < startAt) await sleep(Math.max(0, Math.min(5, startAt - wallNow())));
  let sent = 0;
  let measured = 0;
  let lastTick = startAt;
  let maxTickGapMs = 0;
  let lateTicks = 0;
  let maxBehind = 0;
  let firstInWindow = Number.NaN;
  let lastInWindow = Number.NaN;
  await new Promise<void>((resolve) => {
    const tick = () => {
      const t = wallNow();
      const gap = t - lastTick;
      maxTickGapMs = Math.max(maxTickGapMs, gap);
      if (gap > 5) lateTicks++;
      lastTick = t;
      const due = Math.min(total, Math.floor(((t - startAt) * cfg.rate) / 1000));
      maxBehind = Math.max(maxBehind, due - sent);
      const until = Math.min(due, sent + cfg.maxBurst);
      while (sent < until) {
        const id = sent++;
        const ts = wallNow();
        if (ts >= windowStart && ts < windowEnd) {
          measured++;
          if (Number.isNaN(firstInWindow)) firstInWindow = ts;
          lastInWindow = ts;
        }
        sentAt[id] = ts;
        nc.publish(
          `events.tx.k${keyOf[id]}`,
          JSON.stringify({ id, amount: (id % 10_000) / 100, ts, currency: 'EUR', note: 'live event #1' }),
        );
      }
      Atomics.store(progress, 0, sent);
      if (sent >= total) resolve();
      else setTimeout(tick, 1);
    };
    tick();
  });
  await nc.flush();
  await nc.close();
  const windowMs = Math.max(1, lastInWindow - firstInWindow);
  return {
    published: sent,
    measured,
    publishRate: measured > 1 ? ((measured - 1) / windowMs) * 1000 : 0,
    maxTickGapMs,
    lateTicks,
    maxBehind,
    cpuMs: threadCpuMs(cfg.clockTickMs) - cpu0,
  };
}

async function subscribe(cfg: LoadgenConfig): Promise<SubResult> {
  const cpu0 = threadCpuMs(cfg.clockTickMs);
  const keyOf = new Int32Array(cfg.keyOf);
  const sentAt = new Float64Array(cfg.sentAt);
  const progress = new Int32Array(cfg.progress);
  const total = totalEvents(cfg);
  // Each key's event ids, in order, and how many of them have been seen committed.
  const ids: number[][] = Array.from({ length: cfg.keys }, () => []);
  for (let id = 0; id < total; id++) ids[keyOf[id]!]!.push(id);
  const heads = new Int32Array(cfg.keys);
  const counts = new Float64Array(cfg.keys);
  const control = new Float64Array(cfg.control);
  // Known once the publisher is told to start, which is before any event can be seen.
  let startAt = 0;
  let windowStart = 0;
  let windowEnd = 0;
  const latencies: number[] = [];
  const slices: number[][] = [];
  let stateChanges = 0;
  let lastDelivery = 0;
  let seenTotal = 0;
  let seenInWindow = 0;
  const nc = await connect({ servers: cfg.url, name: 'partita-bench-sub' });
  nc.subscribe('partita.state.account.>', {
    callback: (err, m) => {
      if (err) return;
      const t = wallNow();
      if (startAt === 0) {
        startAt = control[0]!;
        windowStart = startAt + cfg.warmupMs;
        windowEnd = windowStart + cfg.windowMs;
      }
      stateChanges++;
      const change = m.json<{ key: string; state: { lastId: number; count: number } }>();
      const k = Number(change.key.slice(1));
      const kIds = ids[k];
      if (!kIds) return;
      counts[k] = Math.max(counts[k]!, change.state.count);
      const last = change.state.lastId;
      let h = heads[k]!;
      while (h < kIds.length && kIds[h]! <= last) {
        const ts = sentAt[kIds[h]!]!;
        h++;
        seenTotal++;
        if (t >= windowStart && t < windowEnd) seenInWindow++;
        if (ts === 0) continue; // cannot happen: the publish time is written before the publish
        const lat = t - ts;
        const slice = Math.floor((ts - startAt) / SLICE_MS);
        const xs = slices[slice];
        if (xs) xs.push(lat);
        else slices[slice] = [lat];
        if (ts >= windowStart && ts < windowEnd) {
          latencies.push(lat);
          lastDelivery = t;
        }
      }
      heads[k] = h;
    },
  });
  await nc.flush();
  parentPort?.postMessage({ ready: true });
  // Until the publisher is done and everything it published is seen, or the drain time is up.
  let doneAt = 0;
  for (;;) {
    await sleep(5);
    const published = Atomics.load(progress, 0);
    if (published >= total) {
      doneAt ||= wallNow();
      if (seenTotal >= total || wallNow() - doneAt > cfg.drainMs) break;
    }
  }
  await nc.close();
  const check = { keys: 0, keysWrong: 0, missing: 0, extra: 0 };
  for (let k = 0; k < cfg.keys; k++) {
    const want = ids[k]!.length;
    if (want === 0) continue;
    check.keys++;
    const got = counts[k]!;
    if (got !== want) check.keysWrong++;
    if (got < want) check.missing += want - got;
    else check.extra += got - want;
  }
  return {
    check,
    delivered: latencies.length,
    deliveredRate: (seenInWindow / cfg.windowMs) * 1000,
    stateChanges,
    drainMs: latencies.length > 0 ? Math.max(0, lastDelivery - windowEnd) : Number.NaN,
    latencyMs: summarize(latencies),
    timeline: Array.from(slices, (xs, i) => {
      const sm = summarize(xs ?? []);
      return { fromMs: i * SLICE_MS, events: sm.count, p50: sm.p50, max: sm.max };
    }),
    cpuMs: threadCpuMs(cfg.clockTickMs) - cpu0,
  };
}

if (parentPort && workerData) {
  const port = parentPort;
  const cfg = workerData as LoadgenConfig;
  (cfg.role === 'pub' ? publish(cfg) : subscribe(cfg)).then(
    (r) => port.postMessage({ ok: true, result: r }),
    (err: Error) => port.postMessage({ ok: false, error: err.stack ?? String(err) }),
  );
}
