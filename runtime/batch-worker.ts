// The piscina worker: applies a partition's batch and commits states, checkpoint and outbox in one
// LMDB transaction, then returns what the main thread must publish. Actors never touch NATS.
import { workerData } from 'node:worker_threads';
import { pack, unpack } from 'msgpackr';
import { Piscina } from 'piscina';
import type { LoadedActor } from './actor-loader.js';
import { loadActors } from './actor-loader.js';
import { type ApplyOptions, actorsByType, applyBatch, type RawEvent } from './batch.js';
import { type Outbox, openStateStore, type StateStore } from './state-store.js';
import { stateKvKey } from './subjects.js';

export interface WorkerConfig {
  actorFiles: string[];
  dataDir: string;
  partitions: number;
  maxEventBytes: number;
  maxAttempts: number;
}

export interface BatchTask {
  partition: number;
  /** msgpack of RawEvent[] */
  events: Uint8Array;
}

export interface BatchResult {
  applied: number;
  created: number;
  lastSeq: number;
  /** [kv key, state change JSON] */
  changes: [string, string][];
  emits: Outbox['emits'];
  dead: Outbox['dead'];
  handlerMs: number;
  commitMs: number;
}

interface Ready {
  byType: Map<string, LoadedActor[]>;
  store: StateStore;
}

const cfg = workerData as WorkerConfig;
let ready: Promise<Ready> | undefined;

async function init(): Promise<Ready> {
  const actors = await loadActors(cfg.actorFiles);
  return { byType: actorsByType(actors), store: openStateStore(cfg.dataDir) };
}

/** Copies into a buffer of its own so it can be transferred (msgpackr reuses its buffers). */
export function ownBuffer(b: Uint8Array): Uint8Array {
  const out = new Uint8Array(b.byteLength);
  out.set(b);
  return out;
}

export default async function runBatch(task: BatchTask): Promise<unknown> {
  ready ??= init();
  const { byType, store } = await ready;
  const events = unpack(task.events) as RawEvent[];
  const now = Date.now();
  const opts: ApplyOptions = {
    partition: task.partition,
    partitions: cfg.partitions,
    maxEventBytes: cfg.maxEventBytes,
    maxAttempts: cfg.maxAttempts,
    now,
  };
  const t0 = performance.now();
  const out = applyBatch(byType, events, (actor, key) => store.states.get([actor, key]), opts);
  const t1 = performance.now();
  const updatedAt = new Date(now).toISOString();
  const changes: [string, string][] = [];
  const keys: [string, string][] = [];
  let created = 0;
  for (const w of out.writes) {
    keys.push([w.actor, w.key]);
    if (w.created) created++;
    changes.push([
      stateKvKey(w.actor, w.key),
      `{"actor":${JSON.stringify(w.actor)},"key":${JSON.stringify(w.key)},"state":${w.json},"seq":${w.record.q},"updatedAt":"${updatedAt}","partition":${task.partition}}`,
    ]);
  }
  const dead: Outbox['dead'] = out.dead.map((d) => [d.seq, d.code, d.message, d.actor]);
  const outbox: Outbox = { seq: out.lastSeq, keys, emits: out.emits, dead };
  await store.root.transaction(() => {
    for (const w of out.writes) store.states.put([w.actor, w.key], w.record);
    store.meta.put(['cp', task.partition], { seq: out.lastSeq, at: now });
    store.meta.put(['ob', task.partition], outbox);
  });
  const t2 = performance.now();
  const result: BatchResult = {
    applied: out.applied,
    created,
    lastSeq: out.lastSeq,
    changes,
    emits: out.emits,
    dead,
    handlerMs: t1 - t0,
    commitMs: t2 - t1,
  };
  return Piscina.move(ownBuffer(pack(result)));
}
