// What `partita dead-letters` shows on call: how many events were dead-lettered over a recent
// window, by error code, type and actor, and the latest few with their reasons. It reads headers
// only (no payloads, which may carry personal data), through an ordered consumer from a start time.
import { DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { DLQ_HEADERS } from './dead-letter.js';
import { DLQ_PREFIX, DLQ_STREAM } from './subjects.js';

export interface DeadLetterEntry {
  seq: number;
  at: string;
  type: string;
  code: string;
  error: string;
  subject: string;
  actor: string | null;
}

export interface DeadLetterReport {
  since: string;
  total: number;
  byCode: Record<string, number>;
  byType: Record<string, number>;
  byActor: Record<string, number>;
  /** The latest `limit` entries, oldest first. */
  latest: DeadLetterEntry[];
}

export async function readDeadLetters(
  nc: NatsConnection,
  o: { sinceMs: number; type?: string; limit?: number },
): Promise<DeadLetterReport> {
  const since = new Date(Date.now() - o.sinceMs).toISOString();
  const report: DeadLetterReport = { since, total: 0, byCode: {}, byType: {}, byActor: {}, latest: [] };
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(DLQ_STREAM).catch(() => null);
  if (!info || info.state.messages === 0) return report;
  const filter = `${DLQ_PREFIX}.${o.type ?? '>'}`;
  const consumer = await jetstream(nc).consumers.get(DLQ_STREAM, {
    filter_subjects: filter,
    deliver_policy: DeliverPolicy.StartTime,
    opt_start_time: since,
    headers_only: true,
  });
  const limit = o.limit ?? 10;
  const lastSeq = info.state.last_seq;
  for (;;) {
    // A fetch that ends empty means nothing (more) matches: the window is read.
    const batch = await consumer.fetch({ max_messages: 1000, expires: 1000 });
    let got = 0;
    let done = false;
    for await (const m of batch) {
      got++;
      const h = (k: string) => m.headers?.get(k) ?? '';
      const e: DeadLetterEntry = {
        seq: m.seq,
        at: new Date(Math.floor(m.info.timestampNanos / 1_000_000)).toISOString(),
        type: m.subject.slice(DLQ_PREFIX.length + 1),
        code: h(DLQ_HEADERS.code),
        error: h(DLQ_HEADERS.error),
        subject: h(DLQ_HEADERS.subject),
        actor: h(DLQ_HEADERS.actor) || null,
      };
      report.total++;
      report.byCode[e.code] = (report.byCode[e.code] ?? 0) + 1;
      report.byType[e.type] = (report.byType[e.type] ?? 0) + 1;
      if (e.actor) report.byActor[e.actor] = (report.byActor[e.actor] ?? 0) + 1;
      report.latest.push(e);
      if (report.latest.length > limit) report.latest.shift();
      if (m.info.pending === 0 || m.seq >= lastSeq) done = true;
    }
    if (done || got === 0) break;
  }
  return report;
}

export function formatDeadLetters(r: DeadLetterReport): string {
  const counts = (o: Record<string, number>) =>
    Object.entries(o)
      .sort((a, b) => b[1] - a[1])
      .map(([k, n]) => `${k} ${n}`)
      .join(', ') || '-';
  const lines = [
    `dead letters since ${r.since}: ${r.total}`,
    `  by code:  ${counts(r.byCode)}`,
    `  by type:  ${counts(r.byType)}`,
    `  by actor: ${counts(r.byActor)}`,
  ];
  if (r.latest.length > 0) lines.push('latest:');
  for (const e of r.latest) {
    lines.push(`  ${e.at}  #${e.seq}  ${e.code}  ${e.subject}${e.actor ? `  [${e.actor}]` : ''}  ${e.error}`);
  }
  return lines.join('\n');
}
