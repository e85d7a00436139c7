// The node's Prometheus metrics. Worker threads report through their batch results, so one
// registry on the main thread holds every observation of the process.
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { DEAD_LETTER_CODES } from './errors.js';
import { NATS_RETRY_CODES } from './nats-refusal.js';
import { QUERY_RESULTS } from './state-query.js';

export interface NodeMetrics {
  readonly registry: Registry;
  readonly eventsIn: Counter<'partition'>;
  readonly eventsApplied: Counter<'partition'>;
  readonly deadLetters: Counter<'code'>;
  readonly eventsOut: Counter<string>;
  readonly stateChanges: Counter<string>;
  readonly batchSize: Histogram<string>;
  readonly handlerSeconds: Histogram<string>;
  readonly endToEndSeconds: Histogram<string>;
  readonly checkpointSeconds: Histogram<string>;
  readonly consumerLagMessages: Gauge<'partition'>;
  readonly consumerLagSeconds: Gauge<'partition'>;
  readonly checkpointAgeSeconds: Gauge<'partition'>;
  readonly ownedPartitions: Gauge<string>;
  readonly actors: Gauge<string>;
  readonly batchFailures: Counter<'partition'>;
  readonly handlerTimeouts: Counter<'actor'>;
  readonly fencedBatches: Counter<'partition'>;
  readonly leaseLosses: Counter<'partition'>;
  /** Refusals of the JetStream API that the node waited out (nats-refusal.ts), by error code. */
  readonly natsRefusals: Counter<'code'>;
  readonly restoreSeconds: Histogram<string>;
  readonly retentionGaps: Counter<'partition'>;
  readonly deliveryResumes: Counter<'partition'>;
  readonly sourceRestarts: Counter<'partition'>;
  readonly zombieStates: Counter;
  readonly stateRebuilds: Counter;
  readonly stateAudits: Counter;
  readonly stateRepairs: Counter<'kind'>;
  /** The deployment's partition count, so `sum(owned) < max(partitions)` finds unowned ones. */
  readonly partitions: Gauge<string>;
  /** 1, labelled with the node id: maps a scrape target to a node of `partita status`. */
  readonly nodeInfo: Gauge<'node'>;
  readonly replays: Counter<'actor' | 'result'>;
  readonly replayEvents: Counter<'actor'>;
  readonly lateEvents: Counter<'actor'>;
  readonly watermarkLagSeconds: Gauge<'partition'>;
  /** Partitions with work waiting and no progress for longer than the stall threshold. */
  readonly partitionsStalled: Gauge<string>;
  /** State queries this node was asked as a partition's owner (state-query.ts), by result. */
  readonly stateQueries: Counter<'result'>;
}

const LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60];

export function createNodeMetrics(registry = new Registry()): NodeMetrics {
  const r = [registry];
  // CPU, memory, event-loop lag and GC of the process (worker threads share its CPU and RSS).
  collectDefaultMetrics({ register: registry, prefix: 'partita_node_' });
  return {
    registry,
    eventsIn: new Counter({
      name: 'partita_events_in_total',
      help: 'Events taken from the input stream',
      labelNames: ['partition'],
      registers: r,
    }),
    eventsApplied: new Counter({
      name: 'partita_events_applied_total',
      help: 'Events applied to at least one actor and committed',
      labelNames: ['partition'],
      registers: r,
    }),
    deadLetters: new Counter({
      name: 'partita_events_dead_lettered_total',
      help: 'Events written to the dead-letter stream, by error code',
      labelNames: ['code'],
      registers: r,
    }),
    eventsOut: new Counter({
      name: 'partita_events_out_total',
      help: 'Events emitted by actors (ctx.emit) and published',
      registers: r,
    }),
    stateChanges: new Counter({
      name: 'partita_state_changes_total',
      help: 'Committed state changes published',
      registers: r,
    }),
    batchSize: new Histogram({
      name: 'partita_batch_size',
      help: 'Events per batch handed to a worker',
      buckets: [1, 2, 5, 10, 50, 100, 500, 1000, 2000, 5000],
      registers: r,
    }),
    handlerSeconds: new Histogram({
      name: 'partita_handler_seconds',
      help: 'Time spent in actor handlers per batch',
      buckets: LATENCY_BUCKETS,
      registers: r,
    }),
    endToEndSeconds: new Histogram({
      name: 'partita_end_to_end_seconds',
      help: 'From JetStream publish to committed and published state, per event',
      buckets: LATENCY_BUCKETS,
      registers: r,
    }),
    checkpointSeconds: new Histogram({
      name: 'partita_checkpoint_seconds',
      help: 'Duration of the LMDB commit of a batch (states, checkpoint, outbox)',
      buckets: LATENCY_BUCKETS,
      registers: r,
    }),
    consumerLagMessages: new Gauge({
      name: 'partita_consumer_lag_messages',
      help: 'Events of the partition in the stream not yet taken',
      labelNames: ['partition'],
      registers: r,
    }),
    consumerLagSeconds: new Gauge({
      name: 'partita_consumer_lag_seconds',
      help: 'Age of the last committed event when the partition is behind, else 0',
      labelNames: ['partition'],
      registers: r,
    }),
    checkpointAgeSeconds: new Gauge({
      name: 'partita_checkpoint_age_seconds',
      help: 'Seconds since the partition last committed a checkpoint',
      labelNames: ['partition'],
      registers: r,
    }),
    ownedPartitions: new Gauge({
      name: 'partita_owned_partitions',
      help: 'Partitions this node runs',
      registers: r,
    }),
    actors: new Gauge({
      name: 'partita_actors',
      help: 'Actor instances (actor, key) with state on this node',
      registers: r,
    }),
    fencedBatches: new Counter({
      name: 'partita_fenced_batches_total',
      help: 'Committed batches whose outputs were not published because the lease was no longer provably held',
      labelNames: ['partition'],
      registers: r,
    }),
    leaseLosses: new Counter({
      name: 'partita_lease_losses_total',
      help: 'Partition leases lost without a graceful release (renewal failed or expired)',
      labelNames: ['partition'],
      registers: r,
    }),
    natsRefusals: new Counter({
      name: 'partita_nats_refusals_total',
      help: 'Requests the NATS server refused for a while (a consumer limit, no leader yet) or left unanswered during an election (timeout), retried with backoff',
      labelNames: ['code'],
      registers: r,
    }),
    retentionGaps: new Counter({
      name: 'partita_retention_gaps_total',
      help: 'Partitions stopped because the stream no longer holds events their state needs (PARTITA_ERR_RETENTION_GAP)',
      labelNames: ['partition'],
      registers: r,
    }),
    deliveryResumes: new Counter({
      name: 'partita_delivery_resumes_total',
      help: 'Times a partition consumed again from its checkpoint after a delivery gap or an ended consume',
      labelNames: ['partition'],
      registers: r,
    }),
    sourceRestarts: new Counter({
      name: 'partita_source_restarts_total',
      help: 'Times this node stepped a partition stream down whose sourcing of PARTITA_EVENTS had stalled, so that its new leader set the source up again',
      labelNames: ['partition'],
      registers: r,
    }),
    zombieStates: new Counter({
      name: 'partita_zombie_states_total',
      help: 'States found in a restore that a former owner stored after losing its lease; the partition resumed after each',
      registers: r,
    }),
    stateRebuilds: new Counter({
      name: 'partita_state_rebuilds_total',
      help: 'Restores that found keys missing from the state bucket (or an unfinished rebuild) and rebuilt the partition from its input stream',
      labelNames: ['partition'],
      registers: r,
    }),
    stateAudits: new Counter({
      name: 'partita_state_audits_total',
      help: 'State audits: the state bucket compared with the states this node owns',
      registers: r,
    }),
    stateRepairs: new Counter({
      name: 'partita_state_repairs_total',
      help: 'States the state bucket lacked (kind=missing) or served older (kind=stale) found by a state audit and stored again, or that a restore took from a follower newer than the leader (kind=restore)',
      labelNames: ['kind'],
      registers: r,
    }),
    restoreSeconds: new Histogram({
      name: 'partita_restore_seconds',
      help: 'Time to restore partitions that moved to this node from the state bucket',
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60],
      registers: r,
    }),
    partitions: new Gauge({
      name: 'partita_partitions',
      help: 'Partitions of the deployment (fixed when it was created)',
      registers: r,
    }),
    nodeInfo: new Gauge({
      name: 'partita_node_info',
      help: 'Always 1; the node label is the node id of partita status',
      labelNames: ['node'],
      registers: r,
    }),
    replays: new Counter({
      name: 'partita_replays_total',
      help: 'Replays of an actor on a partition this node owns (partita replay), by result',
      labelNames: ['actor', 'result'],
      registers: r,
    }),
    replayEvents: new Counter({
      name: 'partita_replay_events_total',
      help: 'Events folded again by replays',
      labelNames: ['actor'],
      registers: r,
    }),
    lateEvents: new Counter({
      name: 'partita_late_events_total',
      help: 'Events behind the watermark minus allowed lateness: fed to no window, sent to partita.late.<actor>.<key>',
      labelNames: ['actor'],
      registers: r,
    }),
    watermarkLagSeconds: new Gauge({
      name: 'partita_watermark_lag_seconds',
      help: "Wall clock minus the partition's watermark (its lowest over time-aware actors)",
      labelNames: ['partition'],
      registers: r,
    }),
    handlerTimeouts: new Counter({
      name: 'partita_handler_timeouts_total',
      help: 'Calls into actor code stopped at the handler time limit (their worker thread replaced)',
      labelNames: ['actor'],
      registers: r,
    }),
    partitionsStalled: new Gauge({
      name: 'partita_partitions_stalled',
      help: 'Partitions of this node with work waiting and no progress for longer than the stall threshold',
      registers: r,
    }),
    stateQueries: new Counter({
      name: 'partita_state_queries_total',
      help: "State queries answered or refused as a partition's owner, by result",
      labelNames: ['result'],
      registers: r,
    }),
    batchFailures: new Counter({
      name: 'partita_batch_failures_total',
      help: 'Batches that failed before commit and were retried',
      labelNames: ['partition'],
      registers: r,
    }),
  };
}

/** What a node knows at start that its labelled series are about. */
export interface SeriesScope {
  /** Partitions of the deployment. */
  partitions: number;
  /** The actors the node loaded; `timeAware` for those with windows, rollups or timers. */
  actors: readonly { name: string; timeAware: boolean }[];
}

/**
 * Gives every labelled counter whose label values are known at start a series at 0, so that
 * `rate()`, `increase()` and `absent()` see 0 rather than nothing before the first increment, and
 * the first increment is counted (a series that appears at 1 has no rate). The rules are in
 * docs/metrics.md, "Series from the start". Per-partition gauges are not here: they follow
 * ownership (lag-monitor.ts), and a counter by partition covers every partition of the deployment,
 * since counters stay when a partition moves.
 */
export function initialiseSeries(m: NodeMetrics, scope: SeriesScope): void {
  for (const code of DEAD_LETTER_CODES) m.deadLetters.inc({ code }, 0);
  for (const code of NATS_RETRY_CODES) m.natsRefusals.inc({ code }, 0);
  for (const kind of ['missing', 'stale', 'restore']) m.stateRepairs.inc({ kind }, 0);
  for (const result of QUERY_RESULTS) m.stateQueries.inc({ result }, 0);
  for (const { name: actor, timeAware } of scope.actors) {
    m.handlerTimeouts.inc({ actor }, 0);
    m.replayEvents.inc({ actor }, 0);
    for (const result of ['ok', 'failed']) m.replays.inc({ actor, result }, 0);
    // Only an actor with windows, rollups or timers has a watermark to be late for.
    if (timeAware) m.lateEvents.inc({ actor }, 0);
  }
  const byPartition = [
    m.eventsIn,
    m.eventsApplied,
    m.batchFailures,
    m.fencedBatches,
    m.leaseLosses,
    m.retentionGaps,
    m.deliveryResumes,
    m.sourceRestarts,
    m.stateRebuilds,
  ];
  for (let p = 0; p < scope.partitions; p++) for (const c of byPartition) c.inc({ partition: String(p) }, 0);
}
