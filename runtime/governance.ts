// Validation and masking where events enter the runtime. The node follows the schema bucket and
// hands the latest version of every type to its worker threads through LMDB (`['gov', ...]` in
// the meta database): a worker compares a revision on each task (one cheap read) and compiles the
// schemas again only when it changed. Compiling happens in each worker because the validators are
// functions, which cannot cross a thread boundary.
import { readFileSync } from 'node:fs';
import type { NatsConnection } from '@nats-io/transport-node';
import avro from 'avsc';
import type { ErrorCode } from './errors.js';
import type { Logger } from './logger.js';
import { applyMask, type MaskPlan, maskPlanOf, planHashes } from './masking.js';
import { newAjv, openSchemaRegistry, type SchemaVersion, watchSchemas } from './schema-registry.js';
import type { StateStore } from './state-store.js';

/** The payload to hand on (validated, defaults filled in, masked), or why the event is refused. */
export type GovernResult = { data: unknown } | { code: ErrorCode; message: string };
export type Govern = (type: string, data: unknown) => GovernResult;

interface Compiled {
  version: number;
  validate: (data: unknown) => string | null;
  plan: MaskPlan | null;
}

function compileOne(v: SchemaVersion): Compiled {
  let validate: Compiled['validate'];
  if (v.format === 'avro') {
    const t = avro.Type.forSchema(v.schema as avro.Schema);
    validate = (data) => {
      const bad: string[] = [];
      const ok = t.isValid(data, {
        // The value is left out: it may be personal data, and this text goes into the dead letter.
        errorHook: (path, _value, type) => bad.push(`${path.join('.') || '(root)'}: not ${String(type)}`),
      });
      return ok ? null : bad.join('; ');
    };
  } else {
    const ajv = newAjv();
    const fn = ajv.compile(v.schema);
    validate = (data) => (fn(data) ? null : ajv.errorsText(fn.errors, { dataVar: 'event' }));
  }
  return { version: v.version, validate, plan: maskPlanOf(v.format, v.schema) };
}

/**
 * Compiles the latest schema of each type into one function. Types without a schema pass as they
 * are. A type whose schema hashes a field but the process has no secret refuses its events
 * (`PARTITA_ERR_PII_SECRET`) rather than let the field through.
 */
export function compileGovernance(
  schemas: Iterable<SchemaVersion>,
  secret: string | undefined,
  /** false: mask only (the archive keeps invalid events too, masked as far as their shape allows). */
  opts: { validate?: boolean } = {},
): Govern {
  const validating = opts.validate ?? true;
  const byType = new Map<string, Compiled>();
  const broken = new Map<string, string>();
  for (const v of schemas) {
    try {
      byType.set(v.type, compileOne(v));
    } catch (err) {
      broken.set(v.type, (err as Error).message);
    }
  }
  return (type, data) => {
    const c = byType.get(type);
    if (!c) {
      const why = broken.get(type);
      return why === undefined
        ? { data }
        : { code: 'PARTITA_ERR_SCHEMA', message: `schema of "${type}" does not compile: ${why}` };
    }
    const invalid = validating ? c.validate(data) : null;
    if (invalid !== null) return { code: 'PARTITA_ERR_SCHEMA', message: `${type} v${c.version}: ${invalid}` };
    if (!c.plan) return { data };
    if (!secret && planHashes(c.plan))
      return {
        code: 'PARTITA_ERR_PII_SECRET',
        message: `${type} v${c.version} hashes fields (x-pii: hash) and this node has no PII secret`,
      };
    return { data: applyMask(c.plan, data, secret) };
  };
}

const REV_KEY = ['gov', 'rev'];
const SCHEMAS_KEY = ['gov', 'schemas'];

/** In a worker: the compiled schemas, recompiled when the node wrote a new set. */
export class GovernanceCache {
  private rev: unknown;
  private govern: Govern | undefined;

  constructor(private readonly secret: string | undefined) {}

  current(store: StateStore): Govern | undefined {
    const rev = store.meta.get(REV_KEY);
    if (rev !== this.rev) {
      const schemas = store.meta.get(SCHEMAS_KEY) as SchemaVersion[] | undefined;
      this.govern = schemas && schemas.length > 0 ? compileGovernance(schemas, this.secret) : undefined;
      this.rev = rev;
    }
    return this.govern;
  }
}

/**
 * On the node's main thread: loads the registry, writes it for the workers, and follows changes
 * until stopped. Resolves once the current schemas are in place, so no event is handled before.
 */
export async function startSchemaSync(
  nc: NatsConnection,
  store: StateStore,
  log: Logger,
): Promise<{ stop(): void; revision(): number }> {
  const registry = await openSchemaRegistry(nc);
  let n = 0;
  let inForce = 0;
  const w = await watchSchemas(
    registry.kv,
    async (latest) => {
      const schemas = [...latest.values()];
      const rev = `${Date.now()}-${++n}`;
      await store.root.transaction(() => {
        store.meta.put(SCHEMAS_KEY, schemas);
        store.meta.put(REV_KEY, rev);
      });
      inForce++;
      log.info({ schemas: schemas.map((s) => `${s.type}@${s.version}`) }, 'schemas in force');
    },
    (err) => log.error({ err: (err as Error).message }, 'watching the schema registry failed'),
  );
  return { stop: () => w.stop(), revision: () => inForce };
}

/** The PII secret: the file's content (trimmed) if given, else `$PARTITA_PII_SECRET`. */
export function piiSecretFrom(file: string | undefined): string | undefined {
  if (file) return readFileSync(file, 'utf8').trim() || undefined;
  return process.env.PARTITA_PII_SECRET || undefined;
}
