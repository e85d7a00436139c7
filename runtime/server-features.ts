// What the connected nats-server can do beyond 2.10, from the version it announced. Each feature
// here has a 2.10 path beside it (ARCHITECTURE.md, "Server features by version"); a cluster in a
// rolling upgrade can announce a newer version than the stream's leader runs, so callers fall back
// to that path when the server refuses.
import type { NatsConnection } from '@nats-io/transport-node';

export interface ServerFeatures {
  /** 2.11: subject delete markers (`subject_delete_marker_ttl`, needs `allow_msg_ttl`). */
  expiryMarkers: boolean;
  /** 2.14: `$JS.API.CONSUMER.RESET` moves a consumer to a sequence (ADR-60). */
  consumerReset: boolean;
  /** 2.12: atomic batch publish (`allow_atomic`); see `atomicStatesAvailable`. */
  atomicBatches: boolean;
}

/** True when the server `nc` is connected to announced `major.minor` or later. */
export function serverAtLeast(nc: NatsConnection, major: number, minor: number): boolean {
  const m = /^v?(\d+)\.(\d+)/.exec(nc.info?.version ?? '');
  if (!m) return false;
  const [have, haveMinor] = [Number(m[1]), Number(m[2])];
  return have > major || (have === major && haveMinor >= minor);
}

export function serverFeatures(nc: NatsConnection): ServerFeatures {
  return {
    expiryMarkers: serverAtLeast(nc, 2, 11),
    consumerReset: serverAtLeast(nc, 2, 14),
    atomicBatches: serverAtLeast(nc, 2, 12),
  };
}
