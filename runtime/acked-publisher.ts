// Stored publishing for a batch's outputs: every message goes out with its own reply subject and
// counts as published only once its stream's PubAck comes back. A plain publish plus a flush only
// proves the connected server read it; while a stream elects a leader (a NATS server died) the
// server drops such messages without a word, and acknowledging the input after that loses them.
// One subscription and one timer per call, not a request (a promise and a timer) per message.
import {
  createInbox,
  type MsgHdrs,
  type NatsConnection,
  headers as natsHeaders,
  nuid,
  type Subscription,
} from '@nats-io/transport-node';

export interface Outgoing {
  subject: string;
  data: Uint8Array | string;
  headers?: MsgHdrs;
}

export interface Stored {
  /** Indexes (into the items given) that were not stored for now: no PubAck in time, or an error
   * that may pass (no responders, a stream without a leader). Retrying them is safe. */
  failed: number[];
  /** The first error a stream answered with, if any. */
  error?: string;
  /** The stream sequence each stored item got (0 where it failed or was refused). */
  seqs: number[];
  /** Items that can never be stored, with why: retrying them would fail forever. */
  refused: Map<number, string>;
  /** 1 where the stream answered that it already held a message with the item's id. */
  duplicate: Uint8Array;
  /** An atomic batch the stream refused for good (see `publishAtomic`): publish the items one by
   * one instead, which tells the refused item from the others. */
  atomicRefused?: boolean;
}

/** Most messages nats-server (2.12 and later, by default) takes in one atomic batch. */
export const MAX_ATOMIC_BATCH = 1000;
/** Atomic batches one `publishAtomic` call has in flight at once. */
const ATOMIC_BATCHES_IN_FLIGHT = 2;

interface Call {
  seqs: number[];
  answered: Uint8Array;
  duplicate: Uint8Array;
  refused: Map<number, string>;
  left: number;
  error?: string;
  done: () => void;
}

const decoder = new TextDecoder();

/**
 * JetStream errors no retry can cure: the message is larger than the stream's `max_msg_size`
 * (10054) or its headers than the server allows (10097). Limits that free up with time (a full
 * stream with discard new) and every other error are retried.
 */
const PERMANENT_JS_ERRORS = new Set([10054, 10097]);

/**
 * Refusals of an atomic batch that no retry of the same batch can cure (nats-server's
 * `server/errors.json`): a message over the stream's `max_msg_size` (10054) or with headers too
 * large (10097), atomic publishing switched off (10174), a header a batch may not carry (10177), a
 * batch over the server's size limit (10199), and an incomplete batch (10176): the server answers
 * that when a message before the commit was refused (over max_msg_size, say), since that refusal
 * goes to no reply subject and the batch is dropped, so the same batch is incomplete on every
 * retry. It also answers it for a message lost on the way; going one by one then costs that
 * batch's atomicity only (the puts are safe to repeat). Every other error is retried as a batch.
 */
const PERMANENT_ATOMIC_ERRORS = new Set([10054, 10097, 10174, 10176, 10177, 10199]);

/**
 * nats-server closes a connection whose protocol line (`HPUB <subject> <reply> <sizes>`) is
 * longer than `max_control_line` (4096 by default): a subject that long must never be sent, or
 * every output of the node is cut off with it.
 */
export const MAX_CONTROL_LINE = 4096;

export class AckedPublisher {
  private readonly prefix = createInbox();
  private readonly calls = new Map<number, Call>();
  private nextCall = 0;
  private readonly sub: Subscription;

  constructor(private readonly nc: NatsConnection) {
    this.sub = nc.subscribe(`${this.prefix}.>`, {
      callback: (err, m) => {
        if (err) return;
        const tail = m.subject.slice(this.prefix.length + 1);
        const dot = tail.indexOf('.');
        const call = this.calls.get(Number(tail.slice(0, dot)));
        const i = Number(tail.slice(dot + 1));
        if (!call || call.answered[i]) return;
        call.answered[i] = 1;
        call.left--;
        // A 503 (no responders: no stream took the subject) comes as a status header.
        const status = m.headers?.code ?? 0;
        if (status >= 400 || m.data.length === 0) {
          call.error ??= `status ${status || 'empty reply'} ${m.headers?.description ?? ''}`.trim();
        } else {
          const text = decoder.decode(m.data);
          const ack = JSON.parse(text) as {
            seq?: number;
            duplicate?: boolean;
            error?: { description?: string; err_code?: number };
          };
          if (ack.error && PERMANENT_JS_ERRORS.has(ack.error.err_code ?? 0)) {
            call.refused.set(i, ack.error.description ?? text);
          } else if (ack.error || typeof ack.seq !== 'number') call.error ??= ack.error?.description ?? text;
          else {
            call.seqs[i] = ack.seq;
            if (ack.duplicate) call.duplicate[i] = 1;
          }
        }
        if (call.left === 0) call.done();
      },
    });
  }

  /**
   * Publishes every item; resolves once each has an answer or `timeoutMs` has passed, with what was
   * not stored. Retrying those is safe for KV puts of the same value and for messages with an id
   * (the stream drops duplicates).
   */
  publish(items: readonly Outgoing[], timeoutMs: number): Promise<Stored> {
    if (items.length === 0)
      return Promise.resolve({ failed: [], seqs: [], refused: new Map(), duplicate: new Uint8Array(0) });
    const id = this.nextCall++;
    return new Promise<Stored>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const call: Call = {
        seqs: new Array<number>(items.length).fill(0),
        answered: new Uint8Array(items.length),
        duplicate: new Uint8Array(items.length),
        refused: new Map(),
        left: items.length,
        done: () => {
          clearTimeout(timer);
          this.calls.delete(id);
          const failed: number[] = [];
          for (let i = 0; i < items.length; i++)
            if (call.seqs[i] === 0 && !call.refused.has(i)) failed.push(i);
          const error =
            failed.length > 0
              ? (call.error ?? `${failed.length} not acknowledged in ${timeoutMs} ms`)
              : undefined;
          resolve({ failed, seqs: call.seqs, error, refused: call.refused, duplicate: call.duplicate });
        },
      };
      this.calls.set(id, call);
      timer = setTimeout(call.done, timeoutMs);
      const refuse = (i: number, why: string) => {
        call.refused.set(i, why);
        call.answered[i] = 1;
        call.left--;
      };
      for (let i = 0; i < items.length; i++) {
        const it = items[i]!;
        const reply = `${this.prefix}.${id}.${i}`;
        // The sizes and the verb take well under 64 bytes.
        if (Buffer.byteLength(it.subject) + reply.length + 64 > MAX_CONTROL_LINE) {
          refuse(i, `subject of ${Buffer.byteLength(it.subject)} bytes is longer than NATS allows`);
          continue;
        }
        try {
          this.nc.publish(it.subject, it.data, { reply, ...(it.headers ? { headers: it.headers } : {}) });
        } catch (err) {
          const msg = (err as Error).message;
          // nats.js checks the server's max_payload before sending: that item can never go.
          if (/max_payload/.test(msg)) {
            refuse(i, `${msg} (server max_payload ${this.nc.info?.max_payload ?? '?'} bytes)`);
            continue;
          }
          // The connection is closed or draining: nothing more goes out; what went is counted.
          call.error = msg;
          call.done();
          return;
        }
      }
      if (call.left === 0) call.done();
    });
  }

  /**
   * Publishes `items`, all to one stream that allows atomic batches (nats-server 2.12+), as atomic
   * batches of at most `MAX_ATOMIC_BATCH`: the stream stores each batch whole or not at all, and
   * answers once, to its last (commit) message. The others go out without a reply subject. Items
   * that could never be sent (too long a subject, over max_payload) are refused before a batch
   * forms; a batch the stream refuses for good (a JetStream error that does not pass, such as a
   * message over the stream's max_msg_size or atomic publishing switched off) sets
   * `atomicRefused`, and the caller publishes one by one. Everything else fails for now (retried).
   */
  async publishAtomic(items: readonly Outgoing[], timeoutMs: number): Promise<Stored> {
    const seqs = new Array<number>(items.length).fill(0);
    const refused = new Map<number, string>();
    const maxPayload = this.nc.info?.max_payload ?? Number.POSITIVE_INFINITY;
    const send: number[] = [];
    for (let i = 0; i < items.length; i++) {
      const it = items[i]!;
      // Headers (the batch's three, any others) stay well under 1 KiB.
      const size = typeof it.data === 'string' ? Buffer.byteLength(it.data) : it.data.length;
      if (Buffer.byteLength(it.subject) + 128 > MAX_CONTROL_LINE)
        refused.set(i, `subject of ${Buffer.byteLength(it.subject)} bytes is longer than NATS allows`);
      else if (size + 1024 > maxPayload)
        refused.set(i, `payload of ${size} bytes is over the server's max_payload of ${maxPayload} bytes`);
      else send.push(i);
    }
    let error: string | undefined;
    let atomicRefused = false;
    const chunks: number[][] = [];
    for (let c = 0; c < send.length; c += MAX_ATOMIC_BATCH) chunks.push(send.slice(c, c + MAX_ATOMIC_BATCH));
    const sendChunk = async (chunk: number[]) => {
      const id = nuid.next();
      try {
        let reply: Promise<{ data: Uint8Array; headers?: MsgHdrs }> | undefined;
        for (let j = 0; j < chunk.length; j++) {
          const it = items[chunk[j]!]!;
          const h = natsHeaders();
          if (it.headers) for (const [k, v] of it.headers) for (const x of v) h.append(k, x);
          h.set('Nats-Batch-Id', id);
          h.set('Nats-Batch-Sequence', String(j + 1));
          if (j < chunk.length - 1) this.nc.publish(it.subject, it.data, { headers: h });
          else {
            h.set('Nats-Batch-Commit', '1');
            reply = this.nc.request(it.subject, it.data, { headers: h, timeout: timeoutMs });
          }
        }
        const m = await reply!;
        const status = m.headers?.code ?? 0;
        if (status >= 400 || m.data.length === 0) {
          error ??= `status ${status || 'empty reply'} ${m.headers?.description ?? ''}`.trim();
          return;
        }
        const ack = JSON.parse(decoder.decode(m.data)) as {
          seq?: number;
          count?: number;
          error?: { code?: number; description?: string; err_code?: number };
        };
        if (ack.error || typeof ack.seq !== 'number' || ack.count !== chunk.length) {
          error ??= ack.error?.description ?? `batch of ${chunk.length} stored ${ack.count ?? 0}`;
          if (PERMANENT_ATOMIC_ERRORS.has(ack.error?.err_code ?? 0)) atomicRefused = true;
          return;
        }
        // The batch's messages took consecutive sequences, the commit's last.
        for (let j = 0; j < chunk.length; j++) seqs[chunk[j]!] = ack.seq - (chunk.length - 1 - j);
      } catch (err) {
        error ??= (err as Error).message;
      }
    };
    // A few batches in flight per call: a partition publishing its states whole (a rebuild) must not
    // run into the server's limit of atomic batches in flight per stream.
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(ATOMIC_BATCHES_IN_FLIGHT, chunks.length) }, async () => {
        while (next < chunks.length) await sendChunk(chunks[next++]!);
      }),
    );
    const failed = send.filter((i) => seqs[i] === 0);
    return {
      failed,
      seqs,
      refused,
      duplicate: new Uint8Array(items.length),
      ...(failed.length > 0
        ? { error: error ?? `${failed.length} not acknowledged in ${timeoutMs} ms` }
        : {}),
      ...(atomicRefused ? { atomicRefused } : {}),
    };
  }

  close(): void {
    this.sub.unsubscribe();
    for (const c of [...this.calls.values()]) c.done();
  }
}
