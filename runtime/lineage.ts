// Lineage: every state change names the event that caused it, and the state record keeps the
// sequences of the last LINEAGE_DEPTH events applied to it. The list travels inside the state
// change (KV bucket and `partita.state.*`), so the gateway can show it without reading LMDB, and
// a partition restored on another node keeps it. The events themselves stay in the input stream
// (`PARTITA_IN_<partition>`), where the gateway fetches them by sequence.
import type { StateRecord } from './state-store.js';
import { inStream } from './subjects.js';

/** Events remembered per actor instance. */
export const LINEAGE_DEPTH = 20;
export const MSG_ID_HEADER = 'Nats-Msg-Id';

/** The record fields (`l`: sequences, oldest first; `m`: the last event's Nats-Msg-Id). */
export function nextLineage(
  base: Pick<StateRecord, 'l'> | undefined,
  applied: readonly { seq: number; headers: Readonly<Record<string, string>> }[],
): Pick<StateRecord, 'l' | 'm'> {
  if (applied.length === 0) return base?.l ? { l: base.l } : {};
  const l = [...(base?.l ?? []), ...applied.map((e) => e.seq)].slice(-LINEAGE_DEPTH);
  const m = applied[applied.length - 1]!.headers[MSG_ID_HEADER];
  return m === undefined ? { l } : { l, m };
}

/** The state change's lineage fields as a JSON fragment (`,"cause":{...},"lineage":[...]`), or ''. */
export function lineageJson(partition: number, rec: Pick<StateRecord, 'q' | 'l' | 'm'>): string {
  if (!rec.l || rec.l.length === 0) return '';
  const msgId = rec.m === undefined ? '' : `,"msgId":${JSON.stringify(rec.m)}`;
  return `,"cause":{"stream":"${inStream(partition)}","seq":${rec.q}${msgId}},"lineage":[${rec.l.join(',')}]`;
}

/** The record fields back from a published state change (restore). */
export function lineageOfChange(change: {
  lineage?: unknown;
  cause?: { msgId?: unknown };
}): Pick<StateRecord, 'l' | 'm'> {
  const out: Pick<StateRecord, 'l' | 'm'> = {};
  if (Array.isArray(change.lineage)) out.l = change.lineage.filter((s): s is number => typeof s === 'number');
  if (typeof change.cause?.msgId === 'string') out.m = change.cause.msgId;
  return out;
}

/** The state change's lineage fields as an object (same content as `lineageJson`). */
export function lineageOfRecord(
  partition: number,
  rec: Pick<StateRecord, 'q' | 'l' | 'm'>,
): { cause?: { stream: string; seq: number; msgId?: string }; lineage?: number[] } {
  if (!rec.l || rec.l.length === 0) return {};
  const cause = { stream: inStream(partition), seq: rec.q, ...(rec.m === undefined ? {} : { msgId: rec.m }) };
  return { cause, lineage: rec.l };
}
