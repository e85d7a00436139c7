// The audit trail: admin actions (schema changes, replays, drills) as JSON records on the
// `PARTITA_AUDIT` stream, subject `partita.audit.<action>`, each with who did it and when.
import { hostname, userInfo } from 'node:os';
import { DeliverPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { defaultReplicas } from './topology.js';

export const AUDIT_STREAM = 'PARTITA_AUDIT';
export const AUDIT_PREFIX = 'partita.audit';

export interface AuditRecord {
  /** A single subject token: `schema.add` is written `schema-add`. */
  action: string;
  /** The operator: `$PARTITA_OPERATOR`, a gateway token's name, else user@host. */
  who: string;
  /** ISO 8601. */
  at: string;
  /** What was acted on: a schema type, an actor, a drill's seed. */
  target?: string;
  details?: Record<string, unknown>;
  /** The audit stream's sequence, set when read back. */
  seq?: number;
}

/** Who runs this process, for the audit trail. */
export function operator(): string {
  if (process.env.PARTITA_OPERATOR) return process.env.PARTITA_OPERATOR;
  let user = 'unknown';
  try {
    user = userInfo().username;
  } catch {}
  return `${user}@${hostname()}`;
}

const DAY_NS = 86_400_000_000_000;

export async function ensureAuditStream(nc: NatsConnection, replicas = defaultReplicas(nc)): Promise<void> {
  const jsm = await jetstreamManager(nc);
  try {
    await jsm.streams.info(AUDIT_STREAM);
  } catch {
    await jsm.streams
      .add({
        name: AUDIT_STREAM,
        subjects: [`${AUDIT_PREFIX}.>`],
        storage: StorageType.File,
        retention: RetentionPolicy.Limits,
        // Kept two years, like aggregates: an auditor asks about last year's drills.
        max_age: 730 * DAY_NS,
        num_replicas: replicas,
      })
      .catch(async (err) => {
        await jsm.streams.info(AUDIT_STREAM).catch(() => {
          throw err;
        });
      });
  }
}

/** Appends a record; resolves once JetStream has stored it. */
export async function recordAudit(
  nc: NatsConnection,
  entry: Omit<AuditRecord, 'at' | 'who' | 'seq'> & { who?: string },
): Promise<AuditRecord> {
  await ensureAuditStream(nc);
  const rec: AuditRecord = { ...entry, who: entry.who ?? operator(), at: new Date().toISOString() };
  const token = rec.action.replace(/[^-\w]/g, '-');
  const ack = await jetstream(nc).publish(`${AUDIT_PREFIX}.${token}`, JSON.stringify(rec));
  return { ...rec, seq: ack.seq };
}

/** Reads the trail, oldest first; `action` filters on the action token. */
export async function readAudit(
  nc: NatsConnection,
  opts: { action?: string; limit?: number } = {},
): Promise<AuditRecord[]> {
  await ensureAuditStream(nc);
  const jsm = await jetstreamManager(nc);
  const filter = `${AUDIT_PREFIX}.${opts.action ? opts.action.replace(/[^-\w]/g, '-') : '>'}`;
  const info = await jsm.streams.info(AUDIT_STREAM, { subjects_filter: filter });
  const total = opts.action ? (info.state.subjects?.[filter] ?? 0) : info.state.messages;
  if (total === 0) return [];
  const consumer = await jetstream(nc).consumers.get(AUDIT_STREAM, {
    filter_subjects: filter,
    deliver_policy: DeliverPolicy.All,
  });
  const out: AuditRecord[] = [];
  const it = await consumer.consume();
  for await (const m of it) {
    out.push({ ...m.json<AuditRecord>(), seq: m.seq });
    if (m.info.pending === 0) break;
  }
  await it.close();
  const limit = opts.limit ?? Number.POSITIVE_INFINITY;
  return out.slice(Math.max(0, out.length - limit));
}
