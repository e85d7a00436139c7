// Refusals of the JetStream API that pass: a node waits them out instead of failing.
import { JetStreamApiError } from '@nats-io/jetstream';
import type { Logger } from './logger.js';

/**
 * The JetStream API error codes a node retries, with the reason each one passes.
 * - 10026 "maximum consumers limit reached": the stream's limit, or since nats-server 2.15 the
 *   server's default of 1000 consumers per stream; room comes back as consumers are deleted or
 *   an inactive one reaches its inactive threshold.
 * - 10008 "JetStream system temporarily unavailable": no meta leader yet (an election, a restart).
 * - 10023 "insufficient resources": a server of the placement is down or catching up.
 * - 10163: a new stream leader that has not applied its log yet (2.11+, nats-server #6485).
 * - 10005 "no suitable peers for placement": a restarted server not yet seen as current.
 * Any other refusal with status 503 is taken as passing too.
 */
export const NATS_REFUSAL_CODES = ['10026', '10008', '10023', '10163', '10005'] as const;

/** The codes of `partita_nats_refusals_total`: the refusals, and "timeout" (`requestTimeout`). */
export const NATS_RETRY_CODES = [...NATS_REFUSAL_CODES, 'timeout'] as const;

/** The JetStream error code of a refusal a node waits out, or undefined for any other error. */
export function passingRefusal(err: unknown): string | undefined {
  if (!(err instanceof JetStreamApiError)) return undefined;
  const code = String(err.code);
  if ((NATS_REFUSAL_CODES as readonly string[]).includes(code) || err.status === 503) return code;
  return undefined;
}

/**
 * "timeout" for a request that got no answer in time or found no responders: what a JetStream API
 * request gets while a stream or the meta layer elects a leader (after a server kill or restart,
 * or while the servers have no quorum). Undefined for any other error.
 */
export function requestTimeout(err: unknown): 'timeout' | undefined {
  return causes(err).some(
    (e) =>
      e.name === 'TimeoutError' ||
      e.name === 'NoResponders' ||
      e.name === 'JetStreamNotEnabled' || // the client's name for "no responders" on the API
      (e.name === 'RequestError' && e.isNoResponders?.()) ||
      /^timeout$|no responders/i.test(String(e.message)),
  )
    ? 'timeout'
    : undefined;
}

/** A request that got no answer in time (not "no responders"). */
export function timedOut(err: unknown): boolean {
  return causes(err).some((e) => e.name === 'TimeoutError' || /^timeout$/i.test(String(e.message)));
}

function causes(err: unknown): (Error & { isNoResponders?: () => boolean })[] {
  const out: (Error & { isNoResponders?: () => boolean })[] = [];
  for (let e = err; e instanceof Error && out.length < 5; e = e.cause) out.push(e);
  return out;
}

export interface RefusalRetry {
  log: Logger;
  /**
   * While this connection is up, a request that times out or finds no responders is retried too,
   * counted as "timeout". Only for operations that are safe to send again (an info, a create of
   * the same config, a watch, a put of the same value); a connection that closes ends the wait.
   */
  nc?: { isClosed(): boolean };
  /** Counts each refusal, by code (`partita_nats_refusals_total`). */
  count?: (code: string) => void;
  /** Gives up (rethrows the refusal) once this is false: the node or partition is stopping. */
  going?: () => boolean;
  /** @default 250 */
  firstDelayMs?: number;
  /** @default 10000 */
  maxDelayMs?: number;
}

/**
 * Runs `op` until it succeeds, waiting out passing refusals with a growing, jittered delay; any
 * other error is thrown at once. `what` names the operation and the stream it asks of, for the log.
 */
export async function retryRefusals<T>(what: string, op: () => Promise<T>, r: RefusalRetry): Promise<T> {
  let delay = r.firstDelayMs ?? 250;
  const max = r.maxDelayMs ?? 10_000;
  for (let attempt = 1; ; attempt++) {
    try {
      return await op();
    } catch (err) {
      const code = passingRefusal(err) ?? (r.nc && !r.nc.isClosed() ? requestTimeout(err) : undefined);
      if (code === undefined || (r.going && !r.going())) throw err;
      r.count?.(code);
      const wait = Math.round(delay * (0.5 + Math.random() / 2));
      r.log.error(
        { code, attempt, retryInMs: wait, err: (err as Error).message },
        code === 'timeout'
          ? `${what}: no answer from JetStream (${(err as Error).message}; a leader election?); retrying`
          : `${what}: the NATS server refused (${code}: ${(err as Error).message}); retrying`,
      );
      await new Promise((res) => setTimeout(res, wait));
      delay = Math.min(max, delay * 2);
    }
  }
}
