// State reads: one actor's latest state, and the cluster's status (partitions, owners, lag).
import type { FastifyInstance } from 'fastify';
import { ERROR_SCHEMA, sendError } from './http-error.js';
import { publicChangeOf } from './public-state.js';
import { STATE_SOURCE_HEADER, STATE_SOURCE_OPENAPI, type StateReader, sourceHeader } from './state-reader.js';

export interface StateRouteOptions {
  /** Reads from the key's owner, else the state bucket. */
  reader: StateReader;
  /** `partita status --json`'s object; absent without a NATS connection. */
  readStatus?: () => Promise<unknown>;
}

/** The public fields of a state change (public-state.ts; docs/state-changes.md). */
const stateChangeSchema = {
  type: 'object',
  description:
    "the latest committed state change of the key: the actor's state and its public metadata (docs/state-changes.md)",
  additionalProperties: false,
  properties: {
    actor: { type: 'string' },
    key: { type: 'string' },
    state: { description: "the actor's state, as its handler returned it" },
    seq: { type: 'integer', description: 'input-stream sequence of the last event applied' },
    updatedAt: { type: 'string', format: 'date-time', description: 'commit time' },
    partition: { type: 'integer', description: 'the partition of the key' },
    epoch: { type: 'integer', description: 'the lease epoch of the node that committed it' },
    cause: {
      type: 'object',
      description: 'the event that made this change (see /v1/actors/{actor}/{key}/lineage)',
      properties: { stream: { type: 'string' }, seq: { type: 'integer' }, msgId: { type: 'string' } },
    },
  },
} as const;

export async function stateRoutes(app: FastifyInstance, opts: StateRouteOptions): Promise<void> {
  app.get<{ Params: { actor: string; key: string } }>(
    '/v1/actors/:actor/:key',
    {
      schema: {
        summary: "An actor's latest state",
        tags: ['state'],
        params: {
          type: 'object',
          required: ['actor', 'key'],
          properties: { actor: { type: 'string', minLength: 1 }, key: { type: 'string', minLength: 1 } },
        },
        response: { 200: stateChangeSchema, 404: ERROR_SCHEMA },
        responseHeaders: STATE_SOURCE_OPENAPI,
      },
    },
    async (req, reply) => {
      const { actor, key } = req.params;
      const { changes, sources } = await opts.reader.read([[actor, key]]);
      reply.header(STATE_SOURCE_HEADER, sourceHeader(sources));
      const stored = changes[0];
      const change = stored ? publicChangeOf(stored) : null;
      if (!change) return sendError(reply, 'PARTITA_ERR_NOT_FOUND', `no state for ${actor}/${key}`);
      reply.header('content-type', 'application/json; charset=utf-8');
      return change.json;
    },
  );

  app.get(
    '/v1/status',
    {
      schema: {
        summary: 'Nodes, partitions with their owners, lag and checkpoint age (as `partita status --json`)',
        tags: ['state'],
        response: {
          200: {
            type: 'object',
            additionalProperties: true,
            properties: {
              nodes: { type: 'array', items: { type: 'string' } },
              partitions: { type: 'array' },
            },
          },
        },
      },
    },
    async (_req, reply) => {
      if (!opts.readStatus) return sendError(reply, 'PARTITA_ERR_NO_NATS', 'status needs it');
      reply.header('content-type', 'application/json; charset=utf-8');
      return JSON.stringify(await opts.readStatus());
    },
  );
}
