// The runtime's public face. Other folders import only from here.

export { AckedPublisher, type Outgoing, type Stored } from './acked-publisher.js';
export { builtinActorsDir, findActorFiles, type LoadedActor, loadActors } from './actor-loader.js';
export { type Aggregation, compileAggregation } from './aggregations.js';
export { DLQ_HEADERS, EPOCH_HEADER, PARTITION_HEADER } from './dead-letter.js';
export { type DeadLetterReport, readDeadLetters } from './dead-letter-report.js';
export { DEAD_LETTER_CODES, ERRORS, type ErrorCode, isErrorCode, PartitaError } from './errors.js';
export {
  AGG_PREFIX,
  type Clock,
  DEFAULT_ROLLUPS,
  LATE_PREFIX,
  TICK_TYPE,
  timeFeaturesOf,
} from './event-time.js';
export { compileGovernance, type Govern, type GovernResult, piiSecretFrom } from './governance.js';
export { LINEAGE_DEPTH } from './lineage.js';
export { createLogger, type Logger } from './logger.js';
export { applyMask, maskPlanOf, type PiiAction, piiHash, REDACTED } from './masking.js';
export {
  freePorts,
  MIN_NATS_SERVER,
  type NatsCluster,
  type NatsClusterMember,
  type NatsClusterOptions,
  type NatsClusterStartOptions,
  type NatsServerHandle,
  type NatsServerOptions,
  type NatsServerVersion,
  natsConfig,
  natsServerBinary,
  natsServerVersion,
  startNatsCluster,
  startNatsServer,
  type WaitForJetStreamOptions,
  waitForJetStream,
} from './nats-server.js';
export { defaultNatsUrl, type NodeOptions, type NodeStatus, type PartitaNode, startNode } from './node.js';
export { type ReplayOptions, type ReplayResult, runReplay } from './replay.js';
export {
  COMPAT_MODES,
  type CompatMode,
  compatibilityIssues,
  isCompatMode,
  type SchemaFormat,
} from './schema-compat.js';
export {
  type CheckResult,
  openSchemaRegistry,
  type RegisterOptions,
  SCHEMAS_BUCKET,
  SchemaRegistry,
  type SchemaVersion,
} from './schema-registry.js';
export {
  MAX_QUERY_KEYS,
  queryStates,
  type ScanPage,
  type ScanRequest,
  type StoredStateChange,
  scanStates,
} from './state-query.js';
export type { Durability } from './state-store.js';
export {
  AGG_STREAM,
  DLQ_PREFIX,
  DLQ_STREAM,
  EVENTS_PREFIX,
  IN_PREFIX,
  IN_STREAM_PREFIX,
  INGEST_STREAM,
  inStream,
  keyTooLong,
  kvToken,
  LATE_STREAM,
  MAX_KEY_BYTES,
  META_BUCKET,
  partitionMapping,
  partitionOf,
  partitionTransform,
  QUERY_PREFIX,
  querySubject,
  STATE_BUCKET,
  STATE_PREFIX,
  stateKvKey,
  UNROUTED_STREAM,
} from './subjects.js';
export {
  atomicStatesAvailable,
  DEFAULT_PARTITIONS,
  ensureStateBucket,
  ensureTopology,
  type Topology,
  type TopologyOptions,
} from './topology.js';
export type {
  ActorContext,
  ActorDefinition,
  ActorEvent,
  AggregationSpec,
  Duration,
  Guarantee,
  Reducer,
  RollupSpec,
  StateChange,
  Timer,
  Timers,
  WatermarkSpec,
  WindowKind,
  WindowResult,
  WindowSpec,
} from './types.js';
export { defineActor } from './types.js';
export {
  advance as advanceWindow,
  type CompiledWindow,
  compileWindow,
  emptyWindowState,
  type Firing,
  feed as feedWindow,
  nextFire,
  parseDuration,
  type WindowState,
} from './window.js';
