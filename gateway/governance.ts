// Governance routes: the schema registry's admin API and the lineage of an actor's state.
// Routes carry `config.scope` ('read' or 'admin'), for the gateway's authorisation hook to enforce.
import { jetstreamManager } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import {
  type CompatMode,
  inStream,
  isCompatMode,
  openSchemaRegistry,
  PartitaError,
  type SchemaFormat,
  stateKvKey,
} from '../runtime/index.js';
import { sendError } from './http-error.js';

export interface GovernanceRoutesOptions {
  nc: NatsConnection;
  state: KV;
}

interface SchemaBody {
  schema?: unknown;
  compat?: string;
  format?: string;
}

/** Who made an admin request, for the audit trail: the token's name (auth.ts), and the address. */
function who(req: FastifyRequest): string {
  const name = req.principal?.name;
  return name && name !== 'anonymous' ? `token:${name}@${req.ip}` : `gateway:${req.ip}`;
}

function fail(reply: FastifyReply, err: unknown) {
  if (err instanceof PartitaError)
    return reply.code(err.status).send({ error: err.code, message: err.message, statusCode: err.status });
  throw err;
}

function optionsOf(body: SchemaBody): { compat?: CompatMode; format?: SchemaFormat } {
  if (body.compat !== undefined && !isCompatMode(body.compat))
    throw new PartitaError(
      'PARTITA_ERR_BAD_REQUEST',
      `compat must be one of BACKWARD, FORWARD, FULL, NONE (or *_TRANSITIVE)`,
    );
  if (body.format !== undefined && body.format !== 'json-schema' && body.format !== 'avro')
    throw new PartitaError('PARTITA_ERR_BAD_REQUEST', 'format must be json-schema or avro');
  if (body.schema === undefined) throw new PartitaError('PARTITA_ERR_BAD_REQUEST', 'body needs a "schema"');
  return { compat: body.compat as CompatMode | undefined, format: body.format as SchemaFormat | undefined };
}

export const governanceRoutes: FastifyPluginAsync<GovernanceRoutesOptions> = async (app, opts) => {
  const registry = await openSchemaRegistry(opts.nc);
  const jsm = await jetstreamManager(opts.nc);

  app.get('/v1/schemas', { config: { scope: 'read' } }, async () => ({
    schemas: (await registry.list()).map((v) => ({
      type: v.type,
      version: v.version,
      format: v.format,
      compat: v.compat,
      registeredAt: v.registeredAt,
      who: v.who,
    })),
  }));

  app.get<{ Params: { type: string } }>(
    '/v1/schemas/:type',
    { config: { scope: 'read' } },
    async (req, reply) => {
      const versions = await registry.versions(req.params.type);
      if (versions.length === 0)
        return sendError(reply, 'PARTITA_ERR_NOT_FOUND', `no schema for type "${req.params.type}"`);
      return { type: req.params.type, versions };
    },
  );

  app.post<{ Params: { type: string }; Body: SchemaBody }>(
    '/v1/schemas/:type',
    { config: { scope: 'admin' } },
    async (req, reply) => {
      try {
        const v = await registry.register(req.params.type, req.body?.schema, {
          ...optionsOf(req.body ?? {}),
          who: who(req),
        });
        return reply.code(201).send({ type: v.type, version: v.version, format: v.format, compat: v.compat });
      } catch (err) {
        return fail(reply, err);
      }
    },
  );

  app.post<{ Params: { type: string }; Body: SchemaBody }>(
    '/v1/schemas/:type/check',
    { config: { scope: 'admin' } },
    async (req, reply) => {
      try {
        return await registry.check(req.params.type, req.body?.schema, optionsOf(req.body ?? {}));
      } catch (err) {
        return fail(reply, err);
      }
    },
  );

  // The events that made an actor's state, newest first: the lineage carried in the state change
  // names their sequences; the events are read from the partition's input stream. Payloads are not
  // returned: the input stream holds them before masking.
  app.get<{ Params: { actor: string; key: string } }>(
    '/v1/actors/:actor/:key/lineage',
    { config: { scope: 'read' } },
    async (req, reply) => {
      const { actor, key } = req.params;
      const entry = await opts.state.get(stateKvKey(actor, key));
      if (entry?.operation !== 'PUT')
        return sendError(reply, 'PARTITA_ERR_NOT_FOUND', `no state for ${actor}/${key}`);
      const change = entry.json<{ seq: number; partition: number; cause?: unknown; lineage?: number[] }>();
      const stream = inStream(change.partition);
      const seqs = [...(change.lineage ?? [])].reverse();
      const events = await Promise.all(
        seqs.map(async (seq) => {
          const m = await jsm.streams.getMessage(stream, { seq }).catch(() => null);
          if (!m) return { stream, seq, missing: true };
          const t = m.subject.split('.');
          return {
            stream,
            seq,
            subject: m.subject,
            type: t[3],
            key: t[4],
            msgId: m.header?.get('Nats-Msg-Id') || undefined,
            publishedAt: m.time.toISOString(),
          };
        }),
      );
      return { actor, key, seq: change.seq, cause: change.cause ?? null, events };
    },
  );
};
