// Push routes: Server-Sent Events at `GET /v1/subscribe` and a WebSocket at `GET /v1/ws`. Both take
// the same filter in the query string and send the same JSON frames (see PushHub):
// `snapshot` (chunks of current states), `ready`, then `changes`, with `heartbeat` and, when asked
// for, `status` frames in between.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { WebSocket } from 'ws';
import { sendError } from './http-error.js';
import type { PushFilter, PushHub, PushSink } from './push-hub.js';

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

function filterOf(q: FilterQuery): PushFilter | string {
  if (q.key !== undefined && q.prefix !== undefined) return 'give key or prefix, not both';
  return { actor: q.actor, key: q.key, prefix: q.prefix, status: q.status === true };
}

export async function pushRoutes(app: FastifyInstance, opts: PushRouteOptions): Promise<void> {
  const hwm = opts.wsHighWaterBytes ?? 256 * 1024;

  app.get<{ Querystring: FilterQuery }>(
    '/v1/subscribe',
    {
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
        write: (type, json) => res.write(`event: ${type}\ndata: ${json}\n\n`),
        onDrain: (cb) => res.once('drain', cb),
        close: (reason) => {
          if (reason === 'overflow') {
            res.write(`event: overflow\ndata: {"type":"overflow","error":"PARTITA_ERR_PUSH_OVERFLOW"}\n\n`);
          }
          res.end();
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
      let waiting: (() => void)[] = [];
      const sent = () => {
        if (waiting.length > 0 && socket.bufferedAmount < hwm) {
          const w = waiting;
          waiting = [];
          for (const f of w) f();
        }
      };
      const sink: PushSink = {
        write: (_type, json) => {
          if (socket.readyState !== socket.OPEN) return true;
          socket.send(json, sent);
          return socket.bufferedAmount < hwm;
        },
        // The callback of the last frame sent fires once it left user space.
        onDrain: (cb) => waiting.push(cb),
        close: (reason) => {
          if (reason === 'overflow') {
            socket.send('{"type":"overflow","error":"PARTITA_ERR_PUSH_OVERFLOW"}');
            socket.close(4008, 'fell behind');
          } else socket.close(1001, 'gateway stopping');
        },
      };
      const client = hub.add(sink, filter);
      socket.on('close', () => client.gone());
      socket.on('error', () => client.gone());
    },
  );
}
