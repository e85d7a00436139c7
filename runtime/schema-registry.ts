// The schema registry: one JSON Schema (or Avro schema) per event type, with versions and a
// compatibility mode checked on registration, kept in the JetStream KV bucket `partita_schemas`
// under `<type>.<version>`. Versions are immutable: a registration is a `create` of the next key,
// so two racing registrations cannot both become version N.
import { type KV, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { Ajv2020 } from 'ajv/dist/2020.js';
import avro from 'avsc';
import { operator, recordAudit } from './audit.js';
import { PartitaError } from './errors.js';
import { kvKeys } from './kv-keys.js';
import { invalidPiiDeclarations, PII_KEYWORD } from './masking.js';
import { type CompatMode, compatibilityIssues, DEFAULT_COMPAT, type SchemaFormat } from './schema-compat.js';
import { kvToken } from './subjects.js';
import { defaultReplicas } from './topology.js';

export const SCHEMAS_BUCKET = 'partita_schemas';

/** One registered version of an event type's schema, as stored in the bucket. */
export interface SchemaVersion {
  /** The event type: `<type>` of `events.<type>.<key>`. */
  type: string;
  /** 1, 2, ... per type. */
  version: number;
  format: SchemaFormat;
  schema: object;
  /** The mode this version was checked under; the type's mode for the next registration. */
  compat: CompatMode;
  /** ISO 8601. */
  registeredAt: string;
  who: string;
}

export interface RegisterOptions {
  /** @default the type's current mode, else BACKWARD */
  compat?: CompatMode;
  /** @default detected: an Avro record (`"type": "record"` with `fields`) or JSON Schema */
  format?: SchemaFormat;
  /** For the audit trail. @default the process's operator */
  who?: string;
}

export interface CheckResult {
  compatible: boolean;
  mode: CompatMode;
  /** The version the new schema would get. */
  version: number;
  issues: string[];
}

/** Avro when it looks like an Avro record, else JSON Schema. */
export function detectFormat(schema: unknown): SchemaFormat {
  const s = schema as { type?: unknown; fields?: unknown } | null;
  return s && s.type === 'record' && Array.isArray(s.fields) ? 'avro' : 'json-schema';
}

/** A JSON Schema compiler that knows the `x-pii` keyword; `default`s fill missing fields. */
export function newAjv(): Ajv2020 {
  const ajv = new Ajv2020({ allErrors: false, strict: false, useDefaults: true });
  ajv.addKeyword({ keyword: PII_KEYWORD, schemaType: 'string' });
  return ajv;
}

/** Throws PARTITA_ERR_SCHEMA_INVALID when the schema does not compile or misuses `x-pii`. */
export function assertValidSchema(format: SchemaFormat, schema: unknown): void {
  if (schema === null || typeof schema !== 'object' || Array.isArray(schema))
    throw new PartitaError('PARTITA_ERR_SCHEMA_INVALID', 'a schema is a JSON object');
  try {
    if (format === 'avro') avro.Type.forSchema(schema as avro.Schema);
    else newAjv().compile(schema);
  } catch (err) {
    throw new PartitaError('PARTITA_ERR_SCHEMA_INVALID', (err as Error).message, { cause: err });
  }
  const bad = invalidPiiDeclarations(format, schema);
  if (bad.length > 0)
    throw new PartitaError(
      'PARTITA_ERR_SCHEMA_INVALID',
      `x-pii must be "hash", "redact" or "drop": ${bad.join(', ')}`,
    );
}

const TYPE_OK = /^[^.*>\s]+$/;

export class SchemaRegistry {
  constructor(
    readonly kv: KV,
    private readonly nc: NatsConnection,
  ) {}

  /** Every version of `type`, oldest first. */
  async versions(type: string): Promise<SchemaVersion[]> {
    const keys = await kvKeys(this.kv, `${kvToken(type)}.*`);
    const out: SchemaVersion[] = [];
    for (const k of keys) {
      const e = await this.kv.get(k);
      if (e?.operation === 'PUT') out.push(e.json<SchemaVersion>());
    }
    return out.sort((a, b) => a.version - b.version);
  }

  async latest(type: string): Promise<SchemaVersion | undefined> {
    return (await this.versions(type)).at(-1);
  }

  /** The latest version of every type, sorted by type. */
  async list(): Promise<SchemaVersion[]> {
    const latest = new Map<string, SchemaVersion>();
    for (const k of await kvKeys(this.kv)) {
      const e = await this.kv.get(k);
      if (e?.operation !== 'PUT') continue;
      const v = e.json<SchemaVersion>();
      const cur = latest.get(v.type);
      if (!cur || cur.version < v.version) latest.set(v.type, v);
    }
    return [...latest.values()].sort((a, b) => a.type.localeCompare(b.type));
  }

  /** Would `schema` be accepted as the next version of `type`? Throws only for an invalid schema. */
  async check(type: string, schema: unknown, opts: RegisterOptions = {}): Promise<CheckResult> {
    if (!TYPE_OK.test(type))
      throw new PartitaError('PARTITA_ERR_SCHEMA_INVALID', `"${type}" is not a single subject token`);
    const format = opts.format ?? detectFormat(schema);
    assertValidSchema(format, schema);
    const previous = await this.versions(type);
    const mode = opts.compat ?? previous.at(-1)?.compat ?? DEFAULT_COMPAT;
    const issues = compatibilityIssues(mode, format, schema as object, previous);
    return { compatible: issues.length === 0, mode, version: (previous.at(-1)?.version ?? 0) + 1, issues };
  }

  /**
   * Registers `schema` as the next version of `type` after checking it under the compatibility
   * mode; throws PARTITA_ERR_SCHEMA_INCOMPATIBLE naming the fields that break it. A schema equal
   * to the latest version is not registered again: the latest is returned.
   */
  async register(type: string, schema: unknown, opts: RegisterOptions = {}): Promise<SchemaVersion> {
    for (let attempt = 1; ; attempt++) {
      const latest = await this.latest(type);
      const format = opts.format ?? detectFormat(schema);
      if (
        latest &&
        latest.format === format &&
        JSON.stringify(latest.schema) === JSON.stringify(schema) &&
        (!opts.compat || opts.compat === latest.compat)
      )
        return latest;
      const res = await this.check(type, schema, { ...opts, format });
      if (!res.compatible)
        throw new PartitaError('PARTITA_ERR_SCHEMA_INCOMPATIBLE', `${type}: ${res.issues.join('; ')}`);
      const rec: SchemaVersion = {
        type,
        version: res.version,
        format,
        schema: schema as object,
        compat: res.mode,
        registeredAt: new Date().toISOString(),
        who: opts.who || operator(),
      };
      try {
        await this.kv.create(`${kvToken(type)}.${rec.version}`, JSON.stringify(rec));
      } catch (err) {
        // Another registration took this version number: check again against it.
        if (attempt < 5) continue;
        throw err;
      }
      await recordAudit(this.nc, {
        action: 'schema-add',
        target: type,
        details: { version: rec.version, compat: rec.compat, format },
        who: rec.who,
      });
      return rec;
    }
  }
}

export async function ensureSchemaBucket(nc: NatsConnection): Promise<KV> {
  return new Kvm(nc).create(SCHEMAS_BUCKET, { history: 1, replicas: defaultReplicas(nc) });
}

export async function openSchemaRegistry(nc: NatsConnection): Promise<SchemaRegistry> {
  return new SchemaRegistry(await ensureSchemaBucket(nc), nc);
}

/**
 * Follows the bucket: calls `onChange` with the latest version of every type once the current
 * content is loaded (before this resolves) and again after every registration.
 */
export async function watchSchemas(
  kv: KV,
  onChange: (latest: ReadonlyMap<string, SchemaVersion>) => void | Promise<void>,
  onError: (err: unknown) => void = () => {},
): Promise<{ stop(): void }> {
  const latest = new Map<string, SchemaVersion>();
  const merge = (v: SchemaVersion): boolean => {
    const cur = latest.get(v.type);
    if (cur && cur.version >= v.version) return false;
    latest.set(v.type, v);
    return true;
  };
  for (const k of await kvKeys(kv)) {
    const e = await kv.get(k);
    if (e?.operation === 'PUT') merge(e.json<SchemaVersion>());
  }
  await onChange(latest);
  // The watch replays the current values (merged idempotently) and then follows updates.
  const w = await kv.watch({ key: '>', ignoreDeletes: true });
  void (async () => {
    try {
      for await (const e of w) {
        if (e.operation !== 'PUT') continue;
        if (merge(e.json<SchemaVersion>())) await onChange(latest);
      }
    } catch (err) {
      onError(err);
    }
  })();
  return { stop: () => w.stop() };
}
