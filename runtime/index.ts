// The runtime's public face. Other folders import only from here.
export { builtinActorsDir, findActorFiles, type LoadedActor, loadActors } from './actor-loader.js';
export { DLQ_HEADERS, EPOCH_HEADER, PARTITION_HEADER } from './dead-letter.js';
export { ERRORS, type ErrorCode, isErrorCode, PartitaError } from './errors.js';
export { createLogger, type Logger } from './logger.js';
export {
  type NatsCluster,
  type NatsClusterMember,
  type NatsClusterOptions,
  type NatsClusterStartOptions,
  type NatsServerHandle,
  type NatsServerOptions,
  natsConfig,
  startNatsCluster,
  startNatsServer,
  type WaitForJetStreamOptions,
  waitForJetStream,
} from './nats-server.js';
export { defaultNatsUrl, type NodeOptions, type NodeStatus, type PartitaNode, startNode } from './node.js';
export type { Durability } from './state-store.js';
export {
  DLQ_PREFIX,
  DLQ_STREAM,
  EVENTS_PREFIX,
  IN_PREFIX,
  IN_STREAM_PREFIX,
  inStream,
  kvToken,
  META_BUCKET,
  partitionMapping,
  partitionOf,
  STATE_BUCKET,
  STATE_PREFIX,
  stateKvKey,
  UNROUTED_STREAM,
} from './subjects.js';
export {
  DEFAULT_PARTITIONS,
  ensureStateBucket,
  ensureTopology,
  type Topology,
  type TopologyOptions,
} from './topology.js';
export type { ActorContext, ActorDefinition, ActorEvent, Guarantee, StateChange } from './types.js';
export { defineActor } from './types.js';
