// The worker's LMDB side of event time: the partition clock in the checkpoint, and the wake index
// (`['wk' | 'wp', partition, actor, time, key]`) that finds the keys whose windows or timers are
// due without scanning every state. Index changes commit in the batch's transaction.
import type { LoadedActor } from './actor-loader.js';
import type { ApplyOutput } from './batch.js';
import {
  type Clock,
  newClock,
  type TimeActor,
  type TimeOptions,
  timeFeaturesOf,
  type WakeReader,
  wakeKey,
  watermarkOf,
} from './event-time.js';
import type { Checkpoint, StateStore } from './state-store.js';

export interface WorkerTime {
  readonly actors: readonly TimeActor[];
  summary(
    store: StateStore,
    partition: number,
    clock: Clock | undefined,
  ): {
    timersPending: boolean;
    watermark: number | null;
  };
}

export function workerTimeOf(actors: readonly LoadedActor[]): WorkerTime {
  const timed = actors.map((a) => timeFeaturesOf(a.def)).filter((t): t is TimeActor => t !== undefined);
  return {
    actors: timed,
    summary(store, partition, clock) {
      if (timed.length === 0) return { timersPending: false, watermark: null };
      let pending = false;
      for (const tag of ['wk', 'wp']) {
        for (const _ of store.meta.getKeys({ start: [tag, partition], end: [tag, partition + 1], limit: 1 }))
          pending = true;
      }
      let wm: number | null = null;
      for (const a of timed) {
        const w = clock ? watermarkOf(clock, a.name) : Number.NEGATIVE_INFINITY;
        if (Number.isFinite(w) && (wm === null || w < wm)) wm = w;
      }
      return { timersPending: pending, watermark: wm };
    },
  };
}

/** applyBatch's event-time options for a partition: its clock from the checkpoint and the index. */
export function timeOptionsFor(
  time: WorkerTime,
  store: StateStore,
  partition: number,
): TimeOptions | undefined {
  if (time.actors.length === 0) return undefined;
  const cp = store.meta.get(['cp', partition]) as Checkpoint | undefined;
  const clock = (cp?.clock as Clock | undefined) ?? newClock();
  // Each read runs a range to its end and returns an array: an lmdb-js iterator left open (a loop
  // that stops early) pins the thread's read snapshot, and this worker would then miss what the
  // main thread writes later (a restore) when it loads states.
  const wakes: WakeReader = (actor, kind, after, upTo, limit) => {
    const tag = kind === 0 ? 'wk' : 'wp';
    // '\uffff' sorts after any key, so the range starts after every entry at `after` itself.
    const start = Number.isFinite(after) ? [tag, partition, actor, after, '\uffff'] : [tag, partition, actor];
    const end = Number.isFinite(upTo)
      ? [tag, partition, actor, upTo, '\uffff']
      : [tag, partition, `${actor}\u0000`];
    const out: [number, string][] = [];
    for (const k of [...store.meta.getKeys({ start, end, limit })]) {
      const t = k[3] as number;
      if (t > after && t <= upTo) out.push([t, k[4] as string]);
    }
    return out;
  };
  return { clock, wakes };
}

/** Inside the commit: keeps the wake index in step with the records written. */
export function writeTime(store: StateStore, partition: number, out: ApplyOutput): void {
  for (const [actor, key, old, now] of out.wakes) {
    for (const kind of [0, 1] as const) {
      const o = old?.[kind] ?? null;
      const n = now?.[kind] ?? null;
      if (o === n) continue;
      if (o !== null) store.meta.remove(wakeKey(partition, actor, kind, o, key));
      if (n !== null) store.meta.put(wakeKey(partition, actor, kind, n, key), 1);
    }
  }
}
