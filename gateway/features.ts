// Feast's feature-server wire format over the state bucket, so Feast clients work unchanged:
// `POST /get-online-features` and `GET /health`. A Feast feature view is a Partita actor, a feature
// is a field of its state (`<actor>:<field>`, a dotted path reaches nested fields), and the one
// entity column lists actor keys.
import type { KV } from '@nats-io/kv';
import type { FastifyInstance } from 'fastify';
import { stateKvKey } from '../runtime/index.js';
import { sendError } from './http-error.js';

/** Feast's `FieldStatus` words. */
export type FeastStatus = 'PRESENT' | 'NOT_FOUND' | 'NULL_VALUE' | 'OUTSIDE_MAX_AGE' | 'INVALID';

export interface FeastRequest {
  features?: string[];
  entities: Record<string, (string | number | boolean)[]>;
  full_feature_names?: boolean;
  feature_service?: string;
}

export interface FeastColumn {
  values: unknown[];
  statuses: FeastStatus[];
  event_timestamps: string[];
}

export interface FeastResponse {
  metadata: { feature_names: string[] };
  results: FeastColumn[];
}

export interface FeatureOptions {
  state: KV;
  connected: () => boolean;
  /** Values older than this (by their commit time) are `OUTSIDE_MAX_AGE`, like a Feast view's ttl. */
  maxAgeSeconds?: number;
}

/** Feast prints timestamps as RFC 3339 in UTC, with fractional seconds only when there are some. */
export function feastTimestamp(ms: number): string {
  return new Date(ms).toISOString().replace('.000Z', 'Z');
}
const EPOCH = feastTimestamp(0);

const MAX_LOOKUPS = 20_000;

const requestSchema = {
  type: 'object',
  required: ['entities'],
  properties: {
    features: {
      type: 'array',
      minItems: 1,
      maxItems: 1000,
      items: { type: 'string' },
      description: 'feature references `<actor>:<field>`; a dotted field reads a nested value',
    },
    entities: {
      type: 'object',
      minProperties: 1,
      maxProperties: 1,
      description: 'one entity name mapped to the actor keys to read (one row each)',
      additionalProperties: {
        type: 'array',
        minItems: 1,
        maxItems: 10_000,
        items: { type: ['string', 'number', 'boolean'] },
      },
    },
    full_feature_names: { type: 'boolean', default: false },
    feature_service: { type: 'string', description: 'not supported: name the features instead' },
  },
} as const;

const responseSchema = {
  type: 'object',
  description: "Feast's column-major response: results[i] is the column named feature_names[i]",
  properties: {
    metadata: {
      type: 'object',
      properties: { feature_names: { type: 'array', items: { type: 'string' } } },
    },
    results: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          values: { type: 'array', items: {} },
          statuses: {
            type: 'array',
            items: {
              type: 'string',
              enum: ['PRESENT', 'NOT_FOUND', 'NULL_VALUE', 'OUTSIDE_MAX_AGE', 'INVALID'],
            },
          },
          event_timestamps: { type: 'array', items: { type: 'string', format: 'date-time' } },
        },
      },
    },
  },
} as const;

interface FeatureRef {
  actor: string;
  path: string[];
  name: string;
  fullName: string;
}

function parseRef(ref: string, i: number): FeatureRef | string {
  const at = ref.indexOf(':');
  const actor = ref.slice(0, at);
  const field = ref.slice(at + 1);
  if (at <= 0 || field === '' || field.includes(':')) {
    return `features[${i}] "${ref}" is not a feature reference <actor>:<field>`;
  }
  const path = field.split('.');
  if (path.some((p) => p === '')) return `features[${i}] "${ref}" has an empty field name`;
  return { actor, path, name: field, fullName: `${actor}__${field}` };
}

/** Feast values are scalars or lists of scalars; anything else cannot be served as a feature. */
function servable(v: unknown): boolean {
  const scalar = (x: unknown) =>
    typeof x === 'string' || typeof x === 'number' || typeof x === 'boolean' || x === null;
  return scalar(v) || (Array.isArray(v) && v.every(scalar));
}

interface Stored {
  state: unknown;
  updatedAt: number;
}

export async function featureRoutes(app: FastifyInstance, opts: FeatureOptions): Promise<void> {
  app.get(
    '/health',
    {
      schema: {
        summary: "Feast's health check: 200 while the gateway reaches NATS",
        tags: ['features'],
        response: { 200: { type: 'null', description: 'healthy' }, 503: { type: 'null' } },
      },
    },
    async (_req, reply) => reply.code(opts.connected() ? 200 : 503).send(),
  );

  app.post<{ Body: FeastRequest }>(
    '/get-online-features',
    {
      schema: {
        summary: 'Online features in Feast feature-server format',
        tags: ['features'],
        body: requestSchema,
        response: { 200: responseSchema },
      },
    },
    async (req, reply) => {
      const body = req.body;
      if (body.feature_service !== undefined) {
        return sendError(
          reply,
          'PARTITA_ERR_BAD_REQUEST',
          'feature_service is not supported: list the features as "<actor>:<field>"',
        );
      }
      if (!body.features) {
        return sendError(reply, 'PARTITA_ERR_BAD_REQUEST', "body must have required property 'features'");
      }
      const refs: FeatureRef[] = [];
      for (const [i, f] of body.features.entries()) {
        const r = parseRef(f, i);
        if (typeof r === 'string') return sendError(reply, 'PARTITA_ERR_BAD_REQUEST', r);
        refs.push(r);
      }
      const full = body.full_feature_names === true;
      const seen = new Set<string>();
      for (const r of refs) {
        const n = full ? r.fullName : r.name;
        if (seen.has(n)) {
          return sendError(
            reply,
            'PARTITA_ERR_BAD_REQUEST',
            `feature name "${n}" is requested twice${full ? '' : '; set full_feature_names to tell actors apart'}`,
          );
        }
        seen.add(n);
      }
      const [entityName, entityValues] = Object.entries(body.entities)[0]!;
      const actors = [...new Set(refs.map((r) => r.actor))];
      if (actors.length * entityValues.length > MAX_LOOKUPS) {
        return sendError(
          reply,
          'PARTITA_ERR_BAD_REQUEST',
          `${actors.length} actors × ${entityValues.length} entities is more than ${MAX_LOOKUPS} lookups; split the request`,
        );
      }
      // One read per (actor, key), all in flight at once.
      const stored = new Map<string, Promise<Stored | null>>();
      for (const actor of actors) {
        for (const v of entityValues) {
          const key = String(v);
          const id = `${actor}\u0000${key}`;
          if (stored.has(id)) continue;
          stored.set(
            id,
            opts.state.get(stateKvKey(actor, key)).then((e) => {
              if (e?.operation !== 'PUT' || e.length === 0) return null;
              const v = e.json<{ state: unknown; updatedAt: string }>();
              return { state: v.state, updatedAt: Date.parse(v.updatedAt) };
            }),
          );
        }
      }
      const rows = new Map<string, Stored | null>();
      await Promise.all([...stored].map(async ([id, p]) => rows.set(id, await p)));

      const now = Date.now();
      const maxAgeMs = opts.maxAgeSeconds !== undefined ? opts.maxAgeSeconds * 1000 : Infinity;
      const results: FeastColumn[] = [
        {
          values: entityValues,
          statuses: entityValues.map(() => 'PRESENT'),
          event_timestamps: entityValues.map(() => EPOCH),
        },
      ];
      for (const r of refs) {
        const col: FeastColumn = { values: [], statuses: [], event_timestamps: [] };
        for (const v of entityValues) {
          const row = rows.get(`${r.actor}\u0000${String(v)}`);
          if (!row) {
            col.values.push(null);
            col.statuses.push('NOT_FOUND');
            col.event_timestamps.push(EPOCH);
            continue;
          }
          let value: unknown = row.state;
          for (const p of r.path) {
            value =
              value !== null && typeof value === 'object' && !Array.isArray(value)
                ? (value as Record<string, unknown>)[p]
                : undefined;
          }
          col.event_timestamps.push(feastTimestamp(row.updatedAt));
          if (value === undefined || value === null) {
            col.values.push(null);
            col.statuses.push('NULL_VALUE');
          } else if (now - row.updatedAt > maxAgeMs) {
            col.values.push(null);
            col.statuses.push('OUTSIDE_MAX_AGE');
          } else if (!servable(value)) {
            col.values.push(null);
            col.statuses.push('INVALID');
          } else {
            col.values.push(value);
            col.statuses.push('PRESENT');
          }
        }
        results.push(col);
      }
      const response: FeastResponse = {
        metadata: { feature_names: [entityName, ...refs.map((r) => (full ? r.fullName : r.name))] },
        results,
      };
      reply.header('content-type', 'application/json; charset=utf-8');
      return JSON.stringify(response);
    },
  );
}
