// A worker node: connects to NATS, makes sure the topology exists, runs its partitions on a
// piscina pool, and serves /metrics and /healthz.
import { availableParallelism } from 'node:os';
import { jetstream } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Piscina } from 'piscina';
import { builtinActorsDir, findActorFiles, type LoadedActor, loadActors } from './actor-loader.js';
import type { WorkerConfig } from './batch-worker.js';
import { BatchDispatcher } from './dispatcher.js';
import { Flusher } from './flusher.js';
import { createLogger, type Logger } from './logger.js';
import { createNodeMetrics, type NodeMetrics } from './metrics.js';
import { type MetricsServer, startMetricsServer } from './metrics-server.js';
import { PartitionRunner } from './partition-runner.js';
import {
  type Durability,
  markStateDirClean,
  openStateStore,
  prepareStateDir,
  type StateStore,
} from './state-store.js';
import { ensureTopology, type Topology, verifyPartitionMapping } from './topology.js';
import { UnroutedDeadLetterer } from './unrouted.js';

export interface NodeOptions {
  /** @default $PARTITA_NATS or nats://127.0.0.1:4222 */
  natsUrl?: string;
  /** Directory of actor modules; the built-in actors when omitted. */
  actorsDir?: string;
  /** Where LMDB keeps states and checkpoints. */
  dataDir: string;
  /** Worker threads. @default available cores − 1 (at least 1) */
  threads?: number;
  /** Node id. @default node-<pid> */
  id?: string;
  /** Port of /metrics and /healthz; 0 picks a free one, undefined serves none. */
  metricsPort?: number;
  /** Partition count for a new deployment; an existing one keeps its own. */
  partitions?: number;
  /** Larger payloads are dead-lettered. @default 262144 (256 KiB) */
  maxEventBytes?: number;
  /** Attempts of a throwing handler before the event is dead-lettered. @default 3 */
  maxAttempts?: number;
  /**
   * `sync`: fsync every commit (survives power loss). `process`: no fsync (survives the process
   * being killed; after an OS crash the node rebuilds its state from the input streams), lower
   * latency. @default 'sync'
   */
  durability?: Durability;
  /** Most events in one batch. @default 2000 */
  maxBatch?: number;
  logger?: Logger;
}

export type NodeStatus = 'STARTING' | 'RUNNING' | 'DRAINING' | 'STOPPED' | 'FAILED';

export interface PartitaNode {
  readonly id: string;
  readonly status: NodeStatus;
  readonly actors: readonly LoadedActor[];
  readonly partitions: number;
  readonly metrics: NodeMetrics;
  readonly metricsUrl: string | undefined;
  readonly natsUrl: string;
  /** Per partition: committed sequence and last commit time. */
  progress(): { partition: number; committedSeq: number; lastCommitAt: number }[];
  /** Checkpoints, releases the partitions and closes everything. */
  stop(): Promise<void>;
}

export function defaultNatsUrl(): string {
  return process.env.PARTITA_NATS || 'nats://127.0.0.1:4222';
}

export async function startNode(opts: NodeOptions): Promise<PartitaNode> {
  const id = opts.id ?? `node-${process.pid}`;
  const log = opts.logger ?? createLogger({ node: id });
  const natsUrl = opts.natsUrl ?? defaultNatsUrl();
  const actorFiles = findActorFiles(opts.actorsDir ?? builtinActorsDir());
  // Load on the main thread too: a broken actor fails the start, not the first batch.
  const actors = await loadActors(actorFiles);
  const nc: NatsConnection = await connect({
    servers: natsUrl.split(','),
    name: `partita-${id}`,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
  });
  let topology: Topology;
  try {
    topology = await ensureTopology(nc, { partitions: opts.partitions });
    await verifyPartitionMapping(nc, topology.partitions);
  } catch (err) {
    await nc.close();
    throw err;
  }
  const js = jetstream(nc);
  const durability = opts.durability ?? 'sync';
  const unsafe = prepareStateDir(opts.dataDir, durability);
  if (unsafe)
    log.warn(
      { movedTo: unsafe },
      'the OS restarted while the store was open without fsync; rebuilding state from the input streams',
    );
  const store: StateStore = openStateStore(opts.dataDir, durability);
  const metrics = createNodeMetrics();
  metrics.actors.set(store.states.getCount());
  // The main thread (NATS I/O) needs a core of its own; on a 2-core machine one worker thread also
  // makes every LMDB commit come from one writer, which lmdb-js groups into shared transactions.
  const threads = opts.threads ?? Math.max(1, availableParallelism() - 1);
  const workerData: WorkerConfig = {
    actorFiles,
    dataDir: opts.dataDir,
    partitions: topology.partitions,
    maxEventBytes: opts.maxEventBytes ?? 256 * 1024,
    maxAttempts: opts.maxAttempts ?? 3,
    durability,
  };
  const pool = new Piscina({
    filename: new URL('./batch-worker.js', import.meta.url).href,
    workerData,
    minThreads: threads,
    maxThreads: threads,
    // Tasks commit synchronously: one at a time per worker.
    concurrentTasksPerWorker: 1,
    idleTimeout: Number.POSITIVE_INFINITY,
  });
  let status: NodeStatus = 'STARTING';
  const dispatcher = new BatchDispatcher(pool, threads);
  const deps = {
    nc,
    js,
    jsm: topology.jsm,
    dispatcher,
    flusher: new Flusher(nc),
    store,
    metrics,
    log,
    maxBatch: opts.maxBatch ?? 2000,
    nodeId: id,
  };
  const runners: PartitionRunner[] = [];
  for (let p = 0; p < topology.partitions; p++) runners.push(new PartitionRunner(p, deps));
  const unrouted = new UnroutedDeadLetterer(js, topology.jsm, metrics, log);
  let server: MetricsServer | undefined;
  try {
    await dispatcher.warm(threads);
    await Promise.all(runners.map((r) => r.start()));
    metrics.ownedPartitions.set(runners.length);
    await unrouted.start();
    if (opts.metricsPort !== undefined) {
      server = await startMetricsServer({
        port: opts.metricsPort,
        registry: metrics.registry,
        ready: () => status === 'RUNNING' && !nc.isClosed(),
        beforeScrape: () => {
          const now = Date.now();
          for (const r of runners) {
            if (r.lastCommitAt > 0)
              metrics.checkpointAgeSeconds.set(
                { partition: String(r.partition) },
                (now - r.lastCommitAt) / 1000,
              );
          }
        },
      });
    }
  } catch (err) {
    status = 'FAILED';
    await Promise.allSettled(runners.map((r) => r.stop()));
    await pool.destroy();
    await nc.close();
    await store.close();
    throw err;
  }
  status = 'RUNNING';
  log.info({ partitions: topology.partitions, threads, actors: actors.map((a) => a.name) }, 'node running');

  return {
    id,
    get status() {
      return status;
    },
    actors,
    partitions: topology.partitions,
    metrics,
    metricsUrl: server?.url,
    natsUrl,
    progress: () =>
      runners.map((r) => ({
        partition: r.partition,
        committedSeq: r.committedSeq,
        lastCommitAt: r.lastCommitAt,
      })),
    async stop() {
      if (status === 'STOPPED' || status === 'DRAINING') return;
      status = 'DRAINING';
      await unrouted.stop();
      await Promise.all(runners.map((r) => r.stop()));
      metrics.ownedPartitions.set(0);
      await server?.close();
      await pool.destroy();
      await nc.drain().catch(() => undefined);
      await store.close();
      markStateDirClean(opts.dataDir, durability);
      status = 'STOPPED';
      log.info('node stopped');
    },
  };
}
