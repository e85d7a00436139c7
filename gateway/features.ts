// Feast's feature-server wire format over actor state, so Feast clients work unchanged:
// `POST /get-online-features` and `GET /health`. A Feast feature view is a Partita actor, a feature
// is a field of its state (`<actor>:<field>`, a dotted path reaches nested fields), and the one
// entity column lists actor keys. States come from their partitions' owners (else the state
// bucket), through the StateReader.
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { FastifyInstance } from 'fastify';
import { sendError } from './http-error.js';
import { tooLongName } from './key-limit.js';
import { STATE_SOURCE_HEADER, STATE_SOURCE_OPENAPI, type StateReader, sourceHeader } from './state-reader.js';

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
  /** Reads from each key's owner, else the state bucket. */
  reader: StateReader;
  connected: () => boolean;
  /** Values older than this (by their commit time) are `OUTSIDE_MAX_AGE`, like a Feast view's ttl. */
  maxAgeSeconds?: number;
  /** Entities × features one request may ask for; above it, 413. @default 100000 */
  maxCells?: number;
}

/** Feast prints timestamps as RFC 3339 in UTC, with fractional seconds only when there are some. */
export function feastTimestamp(ms: number): string {
  return new Date(ms).toISOString().replace('.000Z', 'Z');
}
const EPOCH = feastTimestamp(0);

export const DEFAULT_MAX_FEATURE_CELLS = 100_000;
/** Cells built between two yields to the event loop. */
const CELLS_PER_TURN = 2000;

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
        responseHeaders: STATE_SOURCE_OPENAPI,
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
      const maxCells = opts.maxCells ?? DEFAULT_MAX_FEATURE_CELLS;
      if (entityValues.length * refs.length > maxCells) {
        return sendError(
          reply,
          'PARTITA_ERR_FEATURE_REQUEST_TOO_LARGE',
          `${entityValues.length} entities × ${refs.length} features is more than ${maxCells} cells; split the request`,
        );
      }
      const actors = [...new Set(refs.map((r) => r.actor))];
      const long = tooLongName([
        ...actors.map((a): [string, string] => [`the actor of a feature (${a.slice(0, 32)}…)`, a]),
        ...entityValues.map((v, i): [string, string] => [`entities.${entityName}[${i}]`, String(v)]),
      ]);
      if (long) return sendError(reply, 'PARTITA_ERR_KEY_TOO_LONG', long);

      // One read per (actor, key): the reader asks each partition's owner once for all its keys.
      const lookups = new Map<string, [string, string]>();
      for (const actor of actors) {
        for (const v of entityValues) lookups.set(`${actor}\u0000${String(v)}`, [actor, String(v)]);
      }
      const ids = [...lookups.keys()];
      const { changes, sources } = await opts.reader.read([...lookups.values()]);
      const rows = new Map<string, Stored | null>();
      changes.forEach((c, i) => {
        rows.set(ids[i]!, c ? { state: c.state, updatedAt: Date.parse(c.updatedAt as string) } : null);
      });
      reply.header(STATE_SOURCE_HEADER, sourceHeader(sources));

      const now = Date.now();
      const maxAgeMs = opts.maxAgeSeconds !== undefined ? opts.maxAgeSeconds * 1000 : Infinity;
      // Each column is serialized on its own, yielding between runs of cells.
      const columns: string[] = [
        JSON.stringify({
          values: entityValues,
          statuses: entityValues.map(() => 'PRESENT'),
          event_timestamps: entityValues.map(() => EPOCH),
        }),
      ];
      let built = 0;
      for (const r of refs) {
        const col: FeastColumn = { values: [], statuses: [], event_timestamps: [] };
        for (const v of entityValues) {
          if (++built % CELLS_PER_TURN === 0) await nextTurn();
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
        columns.push(JSON.stringify(col));
        await nextTurn();
      }
      const metadata: FeastResponse['metadata'] = {
        feature_names: [entityName, ...refs.map((r) => (full ? r.fullName : r.name))],
      };
      reply.header('content-type', 'application/json; charset=utf-8');
      return `{"metadata":${JSON.stringify(metadata)},"results":[${columns.join(',')}]}`;
    },
  );
}
