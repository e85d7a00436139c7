// A worker node: connects to NATS, makes sure the topology exists, runs its partitions on a
// piscina pool, and serves /metrics and /healthz.
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, hostname } from 'node:os';
import { join } from 'node:path';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Piscina } from 'piscina';
import { AckedPublisher } from './acked-publisher.js';
import { builtinActorsDir, findActorFiles, type LoadedActor, loadActors } from './actor-loader.js';
import type { WorkerConfig } from './batch-worker.js';
import { CHANGELOG_STREAM, claimChangelog, restoreFromChangelog } from './changelog.js';
import { Coordinator } from './coordinator.js';
import { BatchDispatcher } from './dispatcher.js';
import { type InjectedDefect, serveDrillFaults } from './drill-faults.js';
import { PartitaError } from './errors.js';
import { timeFeaturesOf } from './event-time.js';
import { startSchemaSync } from './governance.js';
import { kvKeys } from './kv-keys.js';
import { LagMonitor } from './lag-monitor.js';
import { createLogger, type Logger, RepeatedLog } from './logger.js';
import { createNodeMetrics, initialiseSeries, type NodeMetrics } from './metrics.js';
import { type MetricsServer, startMetricsServer } from './metrics-server.js';
import { retryRefusals } from './nats-refusal.js';
import type { PartitionLease } from './partition-lease.js';
import { PartitionRunner } from './partition-runner.js';
import { PROBE_ACTOR_FILE } from './probe-actor.js';
import { serveReplays } from './replay.js';
import {
  type OwnerFence,
  type OwnerRecord,
  ownerKey,
  type RestoreTarget,
  readOwnerRecord,
  restorePartitions,
} from './restore.js';
import { SCHEMAS_BUCKET } from './schema-registry.js';
import { startSourceWatchdog } from './source-watchdog.js';
import { type AuditReport, StateAuditor } from './state-audit.js';
import { StateQueries } from './state-query.js';
import {
  type Durability,
  markStateDirClean,
  openStateStore,
  prepareStateDir,
  type StateStore,
} from './state-store.js';
import {
  INGEST_STREAM,
  LEASES_BUCKET,
  META_BUCKET,
  NODES_BUCKET,
  STATE_BUCKET,
  UNROUTED_STREAM,
} from './subjects.js';
import { atomicStatesAvailable, ensureTopology, type Topology, verifyPartitionMapping } from './topology.js';
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
  /** Node id, unique in the deployment. @default an id kept in the data dir */
  id?: string;
  /** Port of /metrics and /healthz; 0 picks a free one, undefined serves none. */
  metricsPort?: number;
  /** Address /metrics listens on (read-only, unauthenticated). @default '127.0.0.1' */
  metricsHost?: string;
  /** Partition count for a new deployment; an existing one keeps its own. */
  partitions?: number;
  /** Larger payloads are dead-lettered. @default 262144 (256 KiB) */
  maxEventBytes?: number;
  /** Attempts of a throwing handler before the event is dead-lettered. @default 3 */
  maxAttempts?: number;
  /**
   * Longest a handler (or `onTimer` / `onWindow`) may run on one event, ms: past it the worker
   * thread is stopped and the event dead-lettered for that actor (`PARTITA_ERR_HANDLER_TIMEOUT`).
   * @default 5000
   */
  handlerTimeoutMs?: number;
  /**
   * Largest state change, bytes (the JSON published on `partita.state.*`): an event after which a
   * key's change would be larger is dead-lettered (`PARTITA_ERR_STATE_TOO_LARGE`). Never more than
   * the server's `max_payload` less 4 KiB. @default the server's max_payload less 4 KiB
   */
  maxStateBytes?: number;
  /**
   * `sync`: fsync every commit (survives power loss). `process`: no fsync (survives the process
   * being killed; after an OS crash the node rebuilds its state from the input streams), lower
   * latency. @default 'sync'
   */
  durability?: Durability;
  /** Lease TTL for a new deployment: how long a crashed node's partitions wait. @default 2000 */
  leaseTtlMs?: number;
  /** Most events in one batch. @default 2000 */
  maxBatch?: number;
  /**
   * Publish each batch's state changes as atomic batches where the server has them (2.12+):
   * readers never see part of a batch of up to 1,000 changes (see ARCHITECTURE.md, "Server
   * features by version"). Ignored on older servers.
   * @default false: one acknowledged KV put per change
   */
  atomicStates?: boolean;
  /**
   * Where a partition's state is recovered from when a node takes it:
   * - `bucket`: the state bucket, which each batch updates (one stored put per changed key) before
   *   its input is acknowledged;
   * - `changelog`: the partition's changelog, one stored message per batch (changelog.ts); the
   *   state bucket is exported from it after the ack.
   * Chosen when a deployment is created: a deployment's nodes must agree.
   * @default 'bucket' (or $PARTITA_RECOVERY)
   */
  recovery?: 'bucket' | 'changelog';
  /** Recovery by changelog: bytes of batches a partition's changelog gathers before a snapshot
   * compacts it (at least the last snapshot's size). @default 64 MiB (or $PARTITA_SNAPSHOT_BYTES) */
  snapshotBytes?: number;
  /**
   * Accept drill faults (crash, stall, handoff) on `partita.drill.<node id>`: for deployments
   * that run `partita drill`, whose supervisor restarts a node that exits. @default false
   */
  allowDrills?: boolean;
  /**
   * Deliberate defects, to prove that the chaos harness catches a broken build. Never in
   * production: `ack-before-commit` acknowledges events as they arrive, before they are committed.
   */
  faults?: readonly InjectedDefect[];
  /** Key of x-pii "hash" fields; the same on every node and the archive. @default $PARTITA_PII_SECRET */
  piiSecret?: string;
  /** Max age of raw events in the input streams (new deployment), ms. @default 90 days ($PARTITA_EVENTS_MAX_AGE) */
  eventsMaxAgeMs?: number;
  /** Max age of window results in PARTITA_AGG, ms. @default 2 years ($PARTITA_AGGREGATES_MAX_AGE) */
  aggregatesMaxAgeMs?: number;
  /** How often an idle partition with open windows or timers gets a tick. @default 1000 */
  tickMs?: number;
  /**
   * The state audit (state-audit.ts): besides after every change of the state bucket's leader,
   * at least this often, ms (0: only then). @default 600000
   */
  stateAuditMs?: number;
  /**
   * A partition with work waiting that has committed and published nothing for this long is
   * stalled: `/readyz` answers 503 and `partita_partitions_stalled` counts it. @default 60000
   */
  stallThresholdMs?: number;
  /** Retention of dead letters in PARTITA_DLQ, ms (0: forever). @default 30 days ($PARTITA_DLQ_MAX_AGE) */
  dlqMaxAgeMs?: number;
  /** Most bytes PARTITA_DLQ keeps; the oldest go first (-1: no limit). @default 1 GiB ($PARTITA_DLQ_MAX_BYTES) */
  dlqMaxBytes?: number;
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
  /** The partitions this node runs now. */
  owned(): number[];
  /** Compares the state bucket with this node's states now, and stores again what it lacks. */
  auditState(): Promise<AuditReport>;
  /** Per partition: committed sequence and last commit time. */
  progress(): { partition: number; committedSeq: number; lastCommitAt: number }[];
  /** Checkpoints, releases the partitions and closes everything. */
  stop(): Promise<void>;
  /** While `stop()` runs: what it is waiting for (for a stop that takes too long to say why). */
  stopping(): string;
  /** How many schema sets this node has put in force (1 after start; +1 per registration seen). */
  schemaRevision(): number;
}

/** Room left in a NATS message for headers and the subject: the longest control line. */
const OUTPUT_HEADROOM_BYTES = 4096;

export function defaultNatsUrl(): string {
  return process.env.PARTITA_NATS || 'nats://127.0.0.1:4222';
}

export async function startNode(opts: NodeOptions): Promise<PartitaNode> {
  const id = opts.id ?? nodeIdOf(opts.dataDir);
  const log = opts.logger ?? createLogger({ node: id });
  const natsUrl = opts.natsUrl ?? defaultNatsUrl();
  // The probe runs everywhere, so a drill can time recovery of any deployment.
  const actorFiles = [...findActorFiles(opts.actorsDir ?? builtinActorsDir()), PROBE_ACTOR_FILE];
  // Load on the main thread too: a broken actor fails the start, not the first batch.
  const actors = await loadActors(actorFiles);
  const nc: NatsConnection = await connect({
    servers: natsUrl.split(','),
    name: `partita-${id}`,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
  });
  let topology: Topology;
  const metrics = createNodeMetrics();
  let status: NodeStatus = 'STARTING';
  // Every JetStream request of the start may be refused for a while, or go unanswered while a
  // stream or the meta layer elects a leader (after a server kill or restart): while the
  // connection is up, wait that out rather than exit (nats-refusal.ts). Each is safe to send again.
  const refusals = {
    log,
    count: (code: string) => metrics.natsRefusals.inc({ code }),
    going: () => status === 'STARTING',
    nc,
  };
  try {
    // Right after a cluster forms JetStream may also fail otherwise for a while: try again for a
    // few seconds before giving up.
    const deadline = Date.now() + 15_000;
    for (;;) {
      try {
        topology = await retryRefusals(
          'creating the streams and buckets',
          () =>
            ensureTopology(nc, {
              partitions: opts.partitions,
              leaseTtlMs: opts.leaseTtlMs,
              eventsMaxAgeMs: opts.eventsMaxAgeMs,
              aggregatesMaxAgeMs: opts.aggregatesMaxAgeMs,
              dlqMaxAgeMs: opts.dlqMaxAgeMs,
              dlqMaxBytes: opts.dlqMaxBytes,
            }),
          refusals,
        );
        break;
      } catch (err) {
        if (err instanceof PartitaError || Date.now() > deadline || nc.isClosed()) throw err;
        log.warn({ err: (err as Error).message }, 'JetStream not ready; retrying');
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    const partitions = topology.partitions;
    await retryRefusals(
      'probing the partition mapping',
      () => verifyPartitionMapping(nc, partitions),
      refusals,
    );
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
  metrics.actors.set(store.states.getCount());
  metrics.partitions.set(topology.partitions);
  metrics.nodeInfo.set({ node: id }, 1);
  initialiseSeries(metrics, {
    partitions: topology.partitions,
    actors: actors.map((a) => ({ name: a.name, timeAware: timeFeaturesOf(a.def) !== undefined })),
  });
  // The main thread (NATS I/O) needs a core of its own; on a 2-core machine one worker thread also
  // makes every LMDB commit come from one writer, which lmdb-js groups into shared transactions.
  const threads = opts.threads ?? Math.max(1, availableParallelism() - 1);
  // Every output is one NATS message, which the server refuses above its max_payload: leave room
  // for the headers (republish adds its own) and the subject.
  const maxEmitBytes = nc.info!.max_payload - OUTPUT_HEADROOM_BYTES;
  const recovery = opts.recovery ?? (process.env.PARTITA_RECOVERY || 'bucket');
  if (recovery !== 'bucket' && recovery !== 'changelog')
    throw new Error(`recovery must be bucket or changelog, not ${JSON.stringify(recovery)}`);
  const byChangelog = recovery === 'changelog';
  try {
    await checkRecoveryMode(topology, byChangelog);
    if (byChangelog) await withoutRepublish(topology);
  } catch (err) {
    await nc.close();
    throw err;
  }
  const workerData: WorkerConfig = {
    actorFiles,
    dataDir: opts.dataDir,
    partitions: topology.partitions,
    maxEventBytes: opts.maxEventBytes ?? 256 * 1024,
    maxAttempts: opts.maxAttempts ?? 3,
    durability,
    piiSecret: opts.piiSecret ?? (process.env.PARTITA_PII_SECRET || undefined),
    maxStateBytes: Math.min(opts.maxStateBytes ?? maxEmitBytes, maxEmitBytes),
    maxEmitBytes,
    changelog: byChangelog,
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
  // A worker that fails between tasks (an actor's stray timer throwing) is replaced by piscina; the
  // pool reports it here rather than crash the node.
  pool.on('error', (err: Error) => log.error({ err: err.message }, 'a worker thread failed between tasks'));
  const dispatcher = new BatchDispatcher(pool, {
    maxInFlight: threads,
    actorNames: actors.map((a) => a.name),
    handlerTimeoutMs: opts.handlerTimeoutMs ?? 5000,
    loseEvery: opts.faults?.includes('lose-worker-answers') ? 4 : 0,
    onTimeout: (actor) => metrics.handlerTimeouts.inc({ actor }),
    log,
  });
  const deps = {
    nc,
    js,
    jsm: topology.jsm,
    dispatcher,
    publisher: new AckedPublisher(nc),
    repeated: new RepeatedLog(log),
    store,
    metrics,
    log,
    maxBatch: opts.maxBatch ?? 2000,
    atomicStates: opts.atomicStates === true && (await atomicStatesAvailable(nc, topology.jsm)),
    snapshotBytes: opts.snapshotBytes ?? (Number(process.env.PARTITA_SNAPSHOT_BYTES) || undefined),
    partitions: topology.partitions,
    tickMs: actors.some((a) => timeFeaturesOf(a.def)) ? (opts.tickMs ?? 1000) : 0,
    nodeId: id,
    ackBeforeCommit: opts.faults?.includes('ack-before-commit') ?? false,
    onFenced: (p: number) => coordinator?.fenced(p),
  };
  const runners = new Map<number, PartitionRunner>();
  // Reads of a partition's committed states, answered while its runner runs (state-query.ts): a
  // subscription per partition, opened with the runner and closed before it stops.
  const queries = new StateQueries({
    nc,
    store,
    partitions: topology.partitions,
    metrics,
    log,
    runner: (p) => runners.get(p),
  });

  // Recovery by changelog: each partition's changelog is claimed under its lease (which fences
  // every earlier owner's appends), and the local state brought up to the claim, from the local
  // position when the log continues from it, else whole. No owner records and no bucket scans.
  const startFromChangelogs = async (leases: PartitionLease[]) => {
    const t0 = performance.now();
    const taking = { ...refusals, going: () => leases.every((l) => l.valid()) };
    let restored = false;
    await Promise.all(
      leases.map(async (l) => {
        const writer = await retryRefusals(
          `claiming the changelog of partition ${l.partition}`,
          () => claimChangelog(nc, js, topology.jsm, l.partition, l.epoch, id),
          taking,
        );
        const r = await restoreFromChangelog(js, store, topology.partitions, writer);
        if (r.full) restored = true;
        log.info(
          {
            partition: l.partition,
            epoch: l.epoch,
            checkpoint: r.checkpoint.seq,
            whole: r.full,
            messages: r.messages,
          },
          'partition state brought up to its changelog',
        );
        if (!l.valid()) throw new Error(`lease of partition ${l.partition} lapsed while starting it`);
        const runner = new PartitionRunner(l.partition, deps, l, writer.claimedAfter > 0, writer);
        runners.set(l.partition, runner);
        queries.open(l.partition);
        await runner.start();
      }),
    );
    if (restored) metrics.restoreSeconds.observe((performance.now() - t0) / 1000);
    metrics.actors.set(store.states.getCount());
    metrics.ownedPartitions.set(runners.size);
    void lag.sample();
  };

  // Starts partitions whose leases were just taken: from local state when this node was their
  // last owner, else from the state bucket and the previous owner's acknowledged position.
  const startPartitions = async (leases: PartitionLease[]) => {
    if (byChangelog) return startFromChangelogs(leases);
    const restore: RestoreTarget[] = [];
    const owned = new Set<number>();
    const fences = new Map<number, OwnerFence>();
    // The state bucket's position before this node writes anything for these partitions: a state
    // written after it under an older epoch is a paused former owner's (see restore.ts).
    // Reads, and writes checked on the revision, are sent again on a refusal or a timeout while the
    // leases hold (a failure releases the partitions, to be taken again).
    const taking = { ...refusals, going: () => leases.every((l) => l.valid()) };
    const stateRev = (
      await retryRefusals(
        `reading the position of KV_${STATE_BUCKET}`,
        () => topology.jsm.streams.info(`KV_${STATE_BUCKET}`),
        taking,
      )
    ).state.last_seq;
    // The owner records' revisions as read: each is written back on that revision (below).
    const revisions = new Map<number, number>();
    for (const l of leases) {
      const { record: last, revision } = await retryRefusals(
        `reading the owner of partition ${l.partition} (stream KV_${META_BUCKET})`,
        () => readOwnerRecord(topology.jsm, l.partition),
        taking,
      );
      revisions.set(l.partition, revision);
      if (last !== undefined) owned.add(l.partition);
      if (last?.node === id && store.checkpoint(l.partition)) {
        // Still the same stretch of ownership: states written since it began stay legitimate.
        fences.set(l.partition, last.fence ?? { epoch: l.epoch, stateRev });
      } else {
        fences.set(l.partition, { epoch: l.epoch, stateRev });
        restore.push({
          partition: l.partition,
          epoch: l.epoch,
          previous: last?.fence,
          rebuildTo: last?.rebuild?.to,
        });
      }
    }
    if (restore.length > 0) {
      const t0 = performance.now();
      const { zombieStates, rebuilds, fromFollowers } = await restorePartitions(
        js,
        topology.jsm,
        store,
        restore,
        topology.partitions,
        log,
      );
      metrics.restoreSeconds.observe((performance.now() - t0) / 1000);
      if (zombieStates > 0) metrics.zombieStates.inc(zombieStates);
      for (const r of rebuilds) metrics.stateRebuilds.inc({ partition: String(r.partition) });
      if (fromFollowers > 0) metrics.stateRepairs.inc({ kind: 'restore' }, fromFollowers);
    }
    metrics.actors.set(store.states.getCount());
    await Promise.all(
      leases.map(async (l) => {
        // A rebuild in progress is recorded, so that whoever takes the partition next carries it on.
        const rebuildTo = store.meta.get(['rb', l.partition]) as number | undefined;
        const record: OwnerRecord = {
          node: id,
          epoch: l.epoch,
          at: Date.now(),
          fence: fences.get(l.partition)!,
          ...(rebuildTo !== undefined ? { rebuild: { to: rebuildTo } } : {}),
        };
        // Only under the lease, and on the revision read before the restore: a node paused past its
        // lease meanwhile (another node then ran the partition, from its own checkpoint, as the
        // record still named it) must not name itself the last owner, or it would later start
        // from its own stale checkpoint. A conflict fails the start; the partition is taken again.
        if (!l.valid()) throw new Error(`lease of partition ${l.partition} lapsed while starting it`);
        const rev = revisions.get(l.partition) ?? 0;
        try {
          const value = JSON.stringify(record);
          // A compare-and-set refused for a while (10163: a new leader of the bucket applying its
          // log) stored nothing: send it again unchanged while the lease holds. One that timed out
          // may have been stored: a resend then conflicts, and the record holding this very value
          // (it has its own `at`) says the first one was.
          let resend = false;
          await retryRefusals(
            `recording the owner of partition ${l.partition} (stream KV_${META_BUCKET})`,
            async () => {
              try {
                return rev > 0
                  ? await topology.meta.update(ownerKey(l.partition), value, rev)
                  : await topology.meta.create(ownerKey(l.partition), value);
              } catch (err) {
                if (resend && (await topology.meta.get(ownerKey(l.partition)))?.string() === value) return 0;
                throw err;
              } finally {
                resend = true;
              }
            },
            { ...refusals, going: () => l.valid() },
          );
        } catch (err) {
          throw new Error(`partition ${l.partition}: its owner record changed while starting it`, {
            cause: err,
          });
        }
        const runner = new PartitionRunner(l.partition, deps, l, owned.has(l.partition));
        runners.set(l.partition, runner);
        queries.open(l.partition);
        await runner.start();
      }),
    );
    metrics.ownedPartitions.set(runners.size);
    // The new partitions' lag and checkpoint age now, not at the next sample (per-partition gauges
    // follow ownership: they appear when a partition is taken).
    void lag.sample();
  };
  const stopPartition = async (p: number, graceful: boolean) => {
    const r = runners.get(p);
    if (!r) return;
    queries.close(p);
    if (!graceful) r.lease.abandon();
    await r.stop();
    runners.delete(p);
    metrics.ownedPartitions.set(runners.size);
  };

  // Health tells the truth: a partition that cannot progress (a publish that never completes, a
  // worker that never answers) fails readiness and shows in a gauge, though the process is up.
  const stallThresholdMs = opts.stallThresholdMs ?? 60_000;
  const stalledPartitions = () => {
    const now = Date.now();
    const stalled = [...runners.values()]
      .filter((r) => r.stalledMs(now) > stallThresholdMs)
      .map((r) => r.partition)
      .sort((a, b) => a - b);
    metrics.partitionsStalled.set(stalled.length);
    return stalled;
  };
  // The gauge follows without a scrape or a probe, for `stopping()` and embedded nodes.
  const stallTimer = setInterval(stalledPartitions, Math.min(5000, Math.max(100, stallThresholdMs / 4)));
  stallTimer.unref();
  let stopStep = '';

  const unrouted = new UnroutedDeadLetterer(
    'ingest',
    js,
    topology.jsm,
    metrics,
    log,
    deps.publisher,
    deps.repeated,
  );
  // A deployment from before the ingest stream: what its work queue still holds, then it goes.
  const retired = (await topology.jsm.streams.info(UNROUTED_STREAM).catch(() => null))
    ? new UnroutedDeadLetterer('retired', js, topology.jsm, metrics, log, deps.publisher, deps.repeated)
    : null;
  let server: MetricsServer | undefined;
  let coordinator: Coordinator | undefined;
  let control: NatsConnection | undefined;
  let schemas: Awaited<ReturnType<typeof startSchemaSync>> | undefined;
  const lag = new LagMonitor(topology.jsm, metrics, () => runners.values(), log);
  let sourcing: ReturnType<typeof startSourceWatchdog> | undefined;
  const auditor = new StateAuditor({
    nc,
    js,
    jsm: topology.jsm,
    store,
    partitions: topology.partitions,
    log,
    metrics,
    owned: () => runners.values(),
    everyMs: opts.stateAuditMs,
  });
  // Replays run on the owner, with the partition paused and its lease held (see replay.ts).
  const replays = serveReplays({
    nodeId: id,
    nc,
    jsm: topology.jsm,
    store,
    actors,
    partitions: topology.partitions,
    maxEventBytes: workerData.maxEventBytes,
    maxAttempts: workerData.maxAttempts,
    maxStateBytes: workerData.maxStateBytes,
    maxEmitBytes: workerData.maxEmitBytes,
    piiSecret: workerData.piiSecret,
    metrics,
    log,
    exclusive: async (p, fn) => {
      if (!coordinator) throw new PartitaError('PARTITA_ERR_NOT_OWNER', `node ${id} is starting`);
      let restartFailed = false;
      const out = await coordinator.exclusive(p, async (lease) => {
        const old = runners.get(p);
        if (old) {
          queries.close(p);
          await old.stop();
          runners.delete(p);
        }
        try {
          return await fn(lease);
        } finally {
          // Resume; its start publishes the outbox the replay committed.
          if (lease.valid() && status === 'RUNNING') {
            const runner = new PartitionRunner(p, deps, lease, true);
            runners.set(p, runner);
            queries.open(p);
            await runner.start().catch((err) => {
              log.error({ partition: p, err: (err as Error).message }, 'resuming after a replay failed');
              restartFailed = true;
            });
          }
          metrics.ownedPartitions.set(runners.size);
        }
      });
      if (restartFailed) coordinator.fenced(p);
      return out;
    },
  });
  try {
    // Schemas in force before the first event: validation and masking never start late.
    // The watches at start are consumers, which the server can refuse for a while (a stream at
    // its consumer limit, no leader yet): waited out as above.
    schemas = await retryRefusals(
      `watching the schema registry (stream KV_${SCHEMAS_BUCKET})`,
      () => startSchemaSync(nc, store, log),
      refusals,
    );
    // Workers load actors and open LMDB meanwhile; batches that come first wait in the pool's queue.
    const warming = dispatcher.warm(threads);
    warming.catch(() => undefined); // awaited below; this only keeps an early failure handled
    await retryRefusals(`consuming ${INGEST_STREAM}`, () => unrouted.start(), refusals);
    // Another node may have drained and deleted it meanwhile.
    if (retired)
      await retryRefusals(`draining ${UNROUTED_STREAM}`, () => retired.start(), refusals).catch(
        () => undefined,
      );
    if (opts.metricsPort !== undefined) {
      server = await startMetricsServer({
        port: opts.metricsPort,
        host: opts.metricsHost,
        registry: metrics.registry,
        notReady: () => {
          if (status !== 'RUNNING') return `node ${status.toLowerCase()}`;
          if (nc.isClosed()) return 'NATS connection closed';
          const stalled = stalledPartitions();
          if (stalled.length === 0) return undefined;
          return `partition${stalled.length > 1 ? 's' : ''} ${stalled.join(', ')}: work waiting and no progress for over ${stallThresholdMs} ms`;
        },
        beforeScrape: () => {
          stalledPartitions();
          lag.refreshAges();
          const now = Date.now();
          for (const r of runners.values()) {
            const wm = r.ticker?.watermark;
            if (wm != null)
              metrics.watermarkLagSeconds.set({ partition: String(r.partition) }, (now - wm) / 1000);
          }
        },
      });
    }
    // Heartbeats and lease renewals get a connection of their own, so they never queue behind a
    // partition's deliveries or a restore's reads: a late renewal would fence a healthy node.
    control = await connect({
      servers: natsUrl.split(','),
      name: `partita-${id}-control`,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
    });
    const controlKv = new Kvm(control);
    const controlNc = control;
    coordinator = new Coordinator({
      nodes: await retryRefusals(`opening KV_${NODES_BUCKET}`, () => controlKv.open(NODES_BUCKET), refusals),
      leases: await retryRefusals(
        `opening KV_${LEASES_BUCKET}`,
        () => controlKv.open(LEASES_BUCKET),
        refusals,
      ),
      connection: controlNc,
      holder: { node: id, instance: randomUUID() },
      partitions: topology.partitions,
      leaseTtlMs: topology.leaseTtlMs,
      log,
      info: { metrics: server?.url },
      start: startPartitions,
      stop: stopPartition,
      onLeaseLost: (p) => metrics.leaseLosses.inc({ partition: String(p) }),
      onRefusal: (code) => metrics.natsRefusals.inc({ code }),
      expiryMarkers: topology.expiryMarkers,
    });
    await coordinator.start();
    await warming;
    lag.start();
    // The bucket is an export of the changelogs, behind the commits by design.
    if (!byChangelog) auditor.start();
    sourcing = startSourceWatchdog(nc, topology.jsm, { owned: () => runners.keys(), metrics, log });
  } catch (err) {
    status = 'FAILED';
    clearInterval(stallTimer);
    schemas?.stop();
    await replays.stop();
    await coordinator?.stop().catch(() => undefined);
    queries.closeAll();
    await Promise.allSettled([...runners.values()].map((r) => r.stop()));
    await unrouted.stop();
    await retired?.stop();
    await server?.close();
    dispatcher.close();
    await pool.destroy();
    await control?.close().catch(() => undefined);
    await nc.close();
    await store.close();
    throw err;
  }
  const drills = opts.allowDrills && control ? serveDrillFaults(control, id, log) : undefined;
  status = 'RUNNING';
  log.info(
    {
      partitions: topology.partitions,
      threads,
      actors: actors.map((a) => a.name),
      server: nc.info?.version,
      expiryMarkers: topology.expiryMarkers,
      ...(opts.atomicStates ? { atomicStates: deps.atomicStates } : {}),
    },
    'node running',
  );

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
    owned: () => [...runners.keys()].sort((a, b) => a - b),
    auditState: () => auditor.audit(),
    schemaRevision: () => schemas?.revision() ?? 0,
    progress: () =>
      [...runners.values()].map((r) => ({
        partition: r.partition,
        committedSeq: r.committedSeq,
        lastCommitAt: r.lastCommitAt,
      })),
    stopping() {
      if (status !== 'DRAINING') return status.toLowerCase();
      const busy = [...runners.values()]
        .filter((r) => r.status !== 'STOPPED')
        .map(
          (r) =>
            `${r.partition} (${r.status.toLowerCase()}${r.stalledMs() > 0 ? `, stalled ${r.stalledMs()} ms` : ''})`,
        );
      return `${stopStep}${busy.length > 0 ? `; partitions not stopped: ${busy.join(', ')}` : ''}`;
    },
    async stop() {
      if (status === 'STOPPED' || status === 'DRAINING') return;
      status = 'DRAINING';
      clearInterval(stallTimer);
      drills?.unsubscribe();
      stopStep = 'stopping replays';
      await replays.stop();
      await lag.stop();
      await sourcing?.stop();
      stopStep = 'stopping the state audit';
      await auditor.stop();
      stopStep = 'stopping unrouted dead-lettering';
      await unrouted.stop();
      await retired?.stop();
      // Checkpoint, publish, release: the next owners start at once.
      stopStep = 'publishing the last batches and releasing the leases';
      await coordinator?.stop();
      queries.closeAll();
      schemas?.stop();
      metrics.ownedPartitions.set(0);
      stopStep = 'closing the metrics server and the worker pool';
      await server?.close();
      dispatcher.close();
      await pool.destroy();
      stopStep = 'draining the NATS connections';
      await control?.drain().catch(() => undefined);
      await nc.drain().catch(() => undefined);
      // The counts of failures that repeated since their last line.
      deps.repeated.flush();
      stopStep = 'closing the store';
      await store.close();
      markStateDirClean(opts.dataDir, durability);
      status = 'STOPPED';
      log.info('node stopped');
    },
  };
}

/** A node's id, kept in its data dir so that a restart is recognised as the same node. */
function nodeIdOf(dataDir: string): string {
  const file = join(dataDir, 'node-id');
  if (existsSync(file)) return readFileSync(file, 'utf8').trim();
  mkdirSync(dataDir, { recursive: true });
  const id = `${hostname().replace(/[^-\w]/g, '-')}-${randomUUID().slice(0, 8)}`;
  writeFileSync(file, `${id}\n`);
  return id;
}

/**
 * A node of one recovery mode cannot see what the other committed (state in the bucket and owner
 * records, or in the changelogs): it refuses a deployment the other mode has run.
 */
async function checkRecoveryMode(topology: Topology, byChangelog: boolean): Promise<void> {
  const logged = (await topology.jsm.streams.info(CHANGELOG_STREAM)).state.messages > 0;
  if (!byChangelog && logged)
    throw new PartitaError(
      'PARTITA_ERR_RECOVERY_MODE',
      'the partitions were run with --recovery changelog (their changelogs hold entries); start this node with it too',
    );
  if (byChangelog && !logged && (await kvKeys(topology.meta, 'owner.*')).length > 0)
    throw new PartitaError(
      'PARTITA_ERR_RECOVERY_MODE',
      'the partitions were run with --recovery bucket (they have owner records and no changelog entries); start this node with it too',
    );
}

/**
 * Recovery by changelog: the state bucket is an export, coalesced per key, so it must not
 * republish: the owner publishes every committed change on `partita.state.*` itself.
 */
async function withoutRepublish(topology: Topology): Promise<void> {
  const stream = `KV_${STATE_BUCKET}`;
  const { config } = await topology.jsm.streams.info(stream);
  if (!config.republish) return;
  await topology.jsm.streams.update(stream, { ...config, republish: undefined });
}
