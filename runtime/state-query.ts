// Queryable state: a partition's owner answers reads of its committed states over NATS
// request/reply, so a reader is never behind a committed change, whatever the state bucket (an
// asynchronous export) holds yet. Both ends of the protocol live here: the node's `StateQueries`
// (one subscription per partition it runs) and the requester's `queryStates` (the gateway's).
//
// Request on `partita.query.<partition>`: JSON `[[actor, key], ...]`, at most MAX_QUERY_KEYS pairs,
// every key of that partition. Reply: a JSON array with one element per pair, in order: the state
// change exactly as the bucket stores it (state-change.ts) or null when the key has no state. JSON
// rather than msgpack because the answer is made of state changes that are JSON already: the reply
// is their text joined, with nothing to encode on the node, and any NATS client can read it
// (`nats req partita.query.3 '[["ledger","acct-1"]]'`).
//
// A scan (`{"scan":{"actor":"ledger","after":["ledger","acct-1"],"limit":500}}`, every field
// optional) pages through the partition's states in key order, of one actor or of all: the reply
// is `{"changes":[...],"next":[actor, key] | null}`, where `next` is the `after` of the next page
// (null: none left). A page holds at most `limit` changes (MAX_QUERY_KEYS at most) and fits one
// NATS message; it may hold fewer, even none, when the node's store interleaves keys of other
// partitions (a page looks at MAX_SCAN_EXAMINED keys at most, so an answer never takes long).
// An error is an empty reply with the headers `Partita-Error-Code` and `Partita-Error`:
// PARTITA_ERR_NOT_OWNER (this node does not run the partition now: starting, stopping, fenced,
// failed, rebuilding), PARTITA_ERR_QUERY_TOO_LARGE (too many keys, or an answer over the server's
// max_payload: ask for fewer), PARTITA_ERR_BAD_REQUEST. A partition that no node runs has no
// subscriber, so its requesters get "no responders" at once rather than a timeout.
import {
  type Msg,
  type NatsConnection,
  headers as natsHeaders,
  type Subscription,
} from '@nats-io/transport-node';
import { DLQ_HEADERS } from './dead-letter.js';
import { type ErrorCode, isErrorCode, PartitaError } from './errors.js';
import type { Logger } from './logger.js';
import type { NodeMetrics } from './metrics.js';
import { stateChangeJson } from './state-change.js';
import type { StateStore } from './state-store.js';
import { partitionOf, querySubject } from './subjects.js';

/** Keys one state query may ask for: a reply stays well under a megabyte for states of a few hundred bytes. */
export const MAX_QUERY_KEYS = 1000;

/** Keys one scan page looks at, of every partition the node's store holds, before it answers. */
export const MAX_SCAN_EXAMINED = 20_000;

/** One page of a scan: at most `limit` states after `after` in key order, of `actor` or all. */
export interface ScanRequest {
  actor?: string;
  after?: readonly [string, string];
  limit?: number;
}

/** A scan page's answer: `next` is the `after` of the following page, null after the last. */
export interface ScanPage {
  changes: StoredStateChange[];
  next: [string, string] | null;
}

/** The results a node counts in `partita_state_queries_total`. */
export const QUERY_RESULTS = ['answered', 'not_owner', 'too_large', 'bad_request'] as const;
export type QueryResult = (typeof QUERY_RESULTS)[number];

/** What the owner needs of a partition's runner to answer for it. */
export interface QueryableRunner {
  readonly status: string;
  readonly lease: { readonly epoch: number; valid(): boolean };
}

export interface StateQueryHost {
  nc: NatsConnection;
  store: StateStore;
  /** Partitions of the deployment (the key → partition mapping). */
  partitions: number;
  metrics: NodeMetrics;
  log: Logger;
  /** The partition's runner on this node now, if any. */
  runner(partition: number): QueryableRunner | undefined;
}

/** A state change as the bucket stores it (docs/state-changes.md). */
export type StoredStateChange = Record<string, unknown>;

/** Answers state queries for the partitions this node runs. */
export class StateQueries {
  private readonly subs = new Map<number, Subscription>();

  constructor(private readonly host: StateQueryHost) {}

  /** Starts answering for a partition (when its runner is created). */
  open(partition: number): void {
    if (this.subs.has(partition)) return;
    const sub = this.host.nc.subscribe(querySubject(partition), {
      callback: (err, msg) => {
        if (!err) this.answer(partition, msg);
      },
    });
    this.subs.set(partition, sub);
  }

  /** Stops answering for a partition (before its runner stops): its requesters get "no responders". */
  close(partition: number): void {
    this.subs.get(partition)?.unsubscribe();
    this.subs.delete(partition);
  }

  closeAll(): void {
    for (const p of [...this.subs.keys()]) this.close(p);
  }

  private answer(partition: number, msg: Msg): void {
    const out = this.read(partition, msg.string());
    const result = typeof out === 'string' ? 'answered' : out.result;
    this.host.metrics.stateQueries.inc({ result });
    try {
      if (typeof out === 'string') msg.respond(out);
      else {
        const h = natsHeaders();
        h.set(DLQ_HEADERS.code, out.code);
        h.set(DLQ_HEADERS.error, new PartitaError(out.code, out.detail).message);
        msg.respond(new Uint8Array(0), { headers: h });
      }
    } catch (err) {
      this.host.log.warn({ partition, err: (err as Error).message }, 'answering a state query failed');
    }
  }

  /**
   * The context of this node's answers for `partition` (its committed snapshot, taken now), or why
   * it cannot answer.
   */
  private owned(partition: number): { partition: number; epoch: number; partitionKeys?: number } | Refusal {
    const { store } = this.host;
    const runner = this.host.runner(partition);
    // Only a running owner that provably holds the lease: a fenced or paused former owner may be
    // behind the node that runs the partition now.
    if (runner?.status !== 'RUNNING' || !runner.lease.valid())
      return notOwner(`partition ${partition} is not running on this node`);
    // lmdb-js renews the main thread's read snapshot only on a later turn: without this, a read
    // could miss a batch a worker thread committed since. One snapshot serves every key.
    store.root.resetReadTxn();
    // A partition rebuilding from its input stream holds older states than earlier owners stored.
    if (store.meta.get(['rb', partition]) !== undefined)
      return notOwner(`partition ${partition} is rebuilding its state`);
    return { partition, epoch: runner.lease.epoch, partitionKeys: store.checkpoint(partition)?.n };
  }

  private maxReplyBytes(): number {
    return (this.host.nc.info?.max_payload ?? 1024 * 1024) - REPLY_HEADROOM_BYTES;
  }

  /** One page of a scan (see the head of this file). */
  private scan(partition: number, req: unknown): string | Refusal {
    if (typeof req !== 'object' || req === null || Array.isArray(req))
      return badRequest('"scan" is an object: {"actor"?, "after"?, "limit"?}');
    const { actor, after, limit = MAX_QUERY_KEYS } = req as Record<string, unknown>;
    if (actor !== undefined && typeof actor !== 'string') return badRequest('scan.actor is a string');
    if (
      after !== undefined &&
      (!Array.isArray(after) ||
        after.length !== 2 ||
        typeof after[0] !== 'string' ||
        typeof after[1] !== 'string')
    )
      return badRequest('scan.after is [actor, key]');
    if (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 1 || limit > MAX_QUERY_KEYS)
      return badRequest(`scan.limit is a whole number from 1 to ${MAX_QUERY_KEYS}`);
    const ctx = this.owned(partition);
    if ('result' in ctx) return ctx;
    const { store, partitions } = this.host;
    const max = this.maxReplyBytes();
    const from = (after as [string, string] | undefined) ?? (actor !== undefined ? [actor] : undefined);
    let bytes = 32;
    let examined = 0;
    // The last key this page covers, and whether any key may follow it.
    let last: [string, string] | null = null;
    let more = false;
    const parts: string[] = [];
    for (const { key, value } of store.states.getRange(from ? { start: from as [string, string] } : {})) {
      if (after !== undefined && key[0] === after[0] && key[1] === after[1]) continue;
      if (actor !== undefined && key[0] !== actor) break;
      if (parts.length >= limit || examined >= MAX_SCAN_EXAMINED) {
        more = true;
        break;
      }
      examined++;
      if (partitionOf(key[1], partitions) === partition) {
        const json = stateChangeJson(key[0], key[1], value, ctx);
        const size = Buffer.byteLength(json, 'utf8') + 1;
        if (bytes + size > max && parts.length > 0) {
          more = true;
          break;
        }
        bytes += size;
        parts.push(json);
      }
      last = [key[0], key[1]];
    }
    const next = more && last ? JSON.stringify(last) : 'null';
    const reply = `{"changes":[${parts.join(',')}],"next":${next}}`;
    // Only a single state larger than a message gets here (a page stops before the limit).
    if (Buffer.byteLength(reply, 'utf8') > max)
      return {
        result: 'too_large',
        code: 'PARTITA_ERR_QUERY_TOO_LARGE',
        detail: `the state after ${JSON.stringify(after ?? null)} is over the ${max} bytes NATS carries`,
      };
    return reply;
  }

  /** The reply to a query of `partition`: the answers as JSON text, or why there are none. */
  private read(partition: number, body: string): string | Refusal {
    let pairs: unknown;
    try {
      pairs = JSON.parse(body);
    } catch {
      pairs = undefined;
    }
    if (typeof pairs === 'object' && pairs !== null && !Array.isArray(pairs) && 'scan' in pairs)
      return this.scan(partition, (pairs as { scan: unknown }).scan);
    if (!Array.isArray(pairs))
      return badRequest('a state query is a JSON array of [actor, key], or {"scan": {...}}');
    if (pairs.length > MAX_QUERY_KEYS) {
      return {
        result: 'too_large',
        code: 'PARTITA_ERR_QUERY_TOO_LARGE',
        detail: `${pairs.length} keys in one query, at most ${MAX_QUERY_KEYS}; split it`,
      };
    }
    for (const [i, p] of pairs.entries()) {
      if (!Array.isArray(p) || p.length !== 2 || typeof p[0] !== 'string' || typeof p[1] !== 'string')
        return badRequest(`element ${i} is not [actor, key]`);
      // This node may still hold states of partitions it ran before: never answer for those.
      if (partitionOf(p[1], this.host.partitions) !== partition)
        return badRequest(`key ${JSON.stringify(p[1].slice(0, 200))} is not in partition ${partition}`);
    }
    const ctx = this.owned(partition);
    if ('result' in ctx) return ctx;
    const { store } = this.host;
    const parts: string[] = [];
    for (const [actor, key] of pairs as [string, string][]) {
      const rec = store.states.get([actor, key]);
      parts.push(rec ? stateChangeJson(actor, key, rec, ctx) : 'null');
    }
    const reply = `[${parts.join(',')}]`;
    const max = this.maxReplyBytes();
    const bytes = Buffer.byteLength(reply, 'utf8');
    if (bytes > max) {
      return {
        result: 'too_large',
        code: 'PARTITA_ERR_QUERY_TOO_LARGE',
        detail: `the answer to ${pairs.length} keys is ${bytes} bytes, over the ${max} NATS carries; ask for fewer keys`,
      };
    }
    return reply;
  }
}

interface Refusal {
  result: Exclude<QueryResult, 'answered'>;
  code: ErrorCode;
  detail: string;
}

const badRequest = (detail: string): Refusal => ({
  result: 'bad_request',
  code: 'PARTITA_ERR_BAD_REQUEST',
  detail,
});
const notOwner = (detail: string): Refusal => ({
  result: 'not_owner',
  code: 'PARTITA_ERR_NOT_OWNER',
  detail,
});

/** Room left in a reply for its subject and headers, as for a node's other outputs. */
const REPLY_HEADROOM_BYTES = 4096;

/**
 * Asks the owner of `partition` for the states of `keys` (all of that partition, at most
 * MAX_QUERY_KEYS): one element per key, in order, null where the key has no state. Throws the
 * owner's refusal as a PartitaError (its code), and NATS's errors as they are ("no responders"
 * when no node runs the partition, a timeout).
 */
export async function queryStates(
  nc: NatsConnection,
  partition: number,
  keys: readonly (readonly [string, string])[],
  timeoutMs: number,
): Promise<(StoredStateChange | null)[]> {
  const answers = await request(nc, partition, JSON.stringify(keys), timeoutMs);
  if (!Array.isArray(answers) || answers.length !== keys.length)
    throw new PartitaError(
      'PARTITA_ERR_INTERNAL',
      `partition ${partition}'s owner answered another number of keys`,
    );
  return answers as (StoredStateChange | null)[];
}

/**
 * One page of a scan of `partition`'s states by its owner (see the head of this file). Throws as
 * `queryStates` does.
 */
export async function scanStates(
  nc: NatsConnection,
  partition: number,
  scan: ScanRequest,
  timeoutMs: number,
): Promise<ScanPage> {
  const page = (await request(nc, partition, JSON.stringify({ scan }), timeoutMs)) as Partial<ScanPage>;
  if (!Array.isArray(page?.changes) || (page.next !== null && !Array.isArray(page.next)))
    throw new PartitaError(
      'PARTITA_ERR_INTERNAL',
      `partition ${partition}'s owner answered a scan in another form`,
    );
  return page as ScanPage;
}

/** A query's answer, parsed; the owner's refusal thrown as a PartitaError of its code. */
async function request(
  nc: NatsConnection,
  partition: number,
  body: string,
  timeoutMs: number,
): Promise<unknown> {
  const msg = await nc.request(querySubject(partition), body, { timeout: timeoutMs });
  const code = msg.headers?.get(DLQ_HEADERS.code);
  if (code) {
    const detail = msg.headers?.get(DLQ_HEADERS.error) ?? '';
    const known = isErrorCode(code) ? code : 'PARTITA_ERR_INTERNAL';
    const err = new PartitaError(known);
    // The owner's message is whole already (its code's message and the detail).
    err.message = detail || err.message;
    throw err;
  }
  return JSON.parse(msg.string()) as unknown;
}
