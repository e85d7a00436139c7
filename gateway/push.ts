// Push routes: Server-Sent Events at `GET /v1/subscribe` and a WebSocket at `GET /v1/ws`. Both take
// the same filter in the query string and send the same JSON frames (see PushHub):
// `snapshot` (chunks of current states), `ready`, then `changes`, with `heartbeat` and, when asked
// for, `status` frames in between.
import type { Socket } from 'node:net';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { WebSocket } from 'ws';
import { sendError } from './http-error.js';
import type { CloseReason, PushFilter, PushHub, PushSink } from './push-hub.js';

export interface PushRouteOptions {
  hub: PushHub | null;
  /** Bytes a WebSocket may buffer in user space before the client counts as slow. @default 262144 */
  wsHighWaterBytes?: number;
}

interface FilterQuery {
  actor?: string;
  key?: string;
  prefix?: string;
  status?: boolean;
  access_token?: string;
}

const filterQuery = {
  type: 'object',
  properties: {
    actor: { type: 'string', minLength: 1, description: 'one actor type (all when absent)' },
    key: { type: 'string', minLength: 1, description: 'one key (exact match)' },
    prefix: { type: 'string', minLength: 1, description: 'keys starting with this' },
    status: {
      type: 'boolean',
      default: false,
      description: 'also send `status` frames: partitions, owners, lag, throughput',
    },
    access_token: { type: 'string', description: 'the bearer token, for clients that cannot set headers' },
  },
  additionalProperties: false,
} as const;

/** How long an ended SSE response may take to reach a client before its socket is destroyed. */
const END_GRACE_MS = 30_000;

function filterOf(q: FilterQuery): PushFilter | string {
  if (q.key !== undefined && q.prefix !== undefined) return 'give key or prefix, not both';
  return { actor: q.actor, key: q.key, prefix: q.prefix, status: q.status === true };
}

/** An unmasked, final WebSocket text frame (RFC 6455 5.2), as a server sends it. */
export function wsTextFrame(json: string): Buffer {
  const len = Buffer.byteLength(json);
  const head = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const buf = Buffer.allocUnsafe(head + len);
  buf[0] = 0x81;
  if (len < 126) buf[1] = len;
  else if (len < 65536) {
    buf[1] = 126;
    buf.writeUInt16BE(len, 2);
  } else {
    buf[1] = 127;
    buf.writeBigUInt64BE(BigInt(len), 2);
  }
  buf.write(json, head);
  return buf;
}

export async function pushRoutes(app: FastifyInstance, opts: PushRouteOptions): Promise<void> {
  const hwm = opts.wsHighWaterBytes ?? 256 * 1024;

  app.get<{ Querystring: FilterQuery }>(
    '/v1/subscribe',
    {
      config: { sameOrigin: true },
      schema: {
        summary: 'Server-Sent Events: a snapshot of the matching states, then every committed change',
        description:
          'Events: `snapshot` and `changes` ({"type","changes":[state change…]}), `ready` ({"snapshot":n}), ' +
          '`heartbeat` ({"at","nats"}), `status` (with ?status=true), `overflow` (then the stream ends).',
        tags: ['push'],
        querystring: filterQuery,
        response: { 200: { type: 'string', description: 'text/event-stream' } },
      },
    },
    async (req, reply) => {
      const filter = filterOf(req.query);
      if (typeof filter === 'string') return sendError(reply, 'PARTITA_ERR_BAD_REQUEST', filter);
      const hub = opts.hub;
      if (!hub) return sendError(reply, 'PARTITA_ERR_NO_NATS', 'push needs it');
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache, no-transform',
        connection: 'keep-alive',
        'x-accel-buffering': 'no',
      });
      res.socket?.setNoDelay(true);
      res.write(': partita\n\n');
      const sink: PushSink = {
        encoding: 'sse',
        encode: (type, json) => `event: ${type}\ndata: ${json}\n\n`,
        send: (frame) => res.write(frame),
        onDrain: (cb) => res.once('drain', cb),
        close: (reason) => {
          if (reason === 'stalled') {
            res.destroy();
            return;
          }
          if (reason === 'overflow') {
            res.write(`event: overflow\ndata: {"type":"overflow","error":"PARTITA_ERR_PUSH_OVERFLOW"}\n\n`);
          }
          res.end();
          // A client that does not read never takes the end: its socket must not outlive it.
          const t = setTimeout(() => res.destroy(), END_GRACE_MS);
          t.unref();
          res.once('close', () => clearTimeout(t));
        },
      };
      const client = hub.add(sink, filter);
      req.raw.socket.once('close', () => client.gone());
    },
  );

  app.get<{ Querystring: FilterQuery }>(
    '/v1/ws',
    {
      websocket: true,
      config: { sameOrigin: true },
      schema: {
        summary: 'WebSocket: a snapshot of the matching states, then every committed change',
        description:
          'Text frames, JSON: {"type":"snapshot"|"changes","changes":[…]}, {"type":"ready","snapshot":n}, ' +
          '{"type":"heartbeat","at","nats"}, {"type":"status",…} (with ?status=true), ' +
          '{"type":"overflow"} before close code 4008.',
        tags: ['push'],
        querystring: filterQuery,
      },
    },
    (socket: WebSocket, req: FastifyRequest<{ Querystring: FilterQuery }>) => {
      const hub = opts.hub;
      if (!hub) {
        socket.close(1011, 'push needs a NATS connection');
        return;
      }
      const filter = filterOf(req.query);
      if (typeof filter === 'string') {
        socket.send(JSON.stringify({ type: 'error', error: 'PARTITA_ERR_BAD_REQUEST', message: filter }));
        socket.close(1008, filter);
        return;
      }
      // The write callback of the last frame sent fires once it left user space.
      let waiting: (() => void)[] = [];
      const sent = () => {
        if (waiting.length > 0 && socket.bufferedAmount < hwm) {
          const w = waiting;
          waiting = [];
          for (const f of w) f();
        }
      };
      const close = (reason: CloseReason) => {
        if (reason === 'stalled') socket.terminate();
        else if (reason === 'overflow') {
          socket.send('{"type":"overflow","error":"PARTITA_ERR_PUSH_OVERFLOW"}');
          socket.close(4008, 'fell behind');
        } else socket.close(1001, 'gateway stopping');
      };
      // Frames go straight to the TCP socket, encoded once for every client of the same run of
      // changes (server frames are unmasked, so they are the same bytes for everyone); ws's own
      // sender would build and write a header per client.
      const tcp = (socket as unknown as { _socket?: Socket })._socket;
      const sink: PushSink = tcp
        ? {
            encoding: 'ws',
            encode: (_type, json) => wsTextFrame(json),
            // false once the socket holds its high-water mark (16 KB) beyond what the kernel took.
            send: (frame) => socket.readyState !== socket.OPEN || tcp.write(frame),
            onDrain: (cb) => tcp.once('drain', cb),
            close,
          }
        : {
            encoding: 'ws-json',
            encode: (_type, json) => json,
            send: (frame) => {
              if (socket.readyState !== socket.OPEN) return true;
              socket.send(frame, sent);
              return socket.bufferedAmount < hwm;
            },
            onDrain: (cb) => waiting.push(cb),
            close,
          };
      const client = hub.add(sink, filter);
      socket.on('close', () => client.gone());
      socket.on('error', () => client.gone());
    },
  );
}
