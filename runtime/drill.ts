// What a drill and the chaos harness share: the probe that times recovery, the seeded fault plan,
// and the report (JSON for machines and auditors, a readable summary for people).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { readKvLatest } from './kv-latest.js';
import { PROBE_ACTOR, type ProbeState } from './probe-actor.js';
import { EVENTS_PREFIX, partitionOf, STATE_BUCKET, stateKvKey } from './subjects.js';

export interface FaultRecord {
  /** kill, stall, handoff, nats-kill, join, nats-stall (harness); crash, stall, handoff (drill). */
  kind: string;
  /** The node or server it hit. */
  target: string;
  /** When it was injected (ISO 8601) and how long after the run started. */
  at: string;
  offsetMs: number;
  /**
   * From the fault until every partition applies a probe published right after it, in ms; null
   * when that did not happen within the recovery timeout.
   */
  recoveryMs: number | null;
  /** From the healing step (restart, SIGCONT) until every partition applies a probe again. */
  healRecoveryMs?: number | null;
  note?: string;
}

export interface Mismatch {
  actor: string;
  key: string;
  expected: unknown;
  actual: unknown;
  /** What the difference means: missing events, doubled events, an unaccounted dead letter... */
  reason: string;
}

export interface RecoveryStats {
  count: number;
  p50Ms: number | null;
  maxMs: number | null;
  /** Faults after which the deployment did not recover within the timeout. */
  unrecovered: number;
}

export interface DrillReport {
  kind: 'chaos' | 'drill';
  seed: number;
  /** The command that runs this same drill again. */
  reproduce: string;
  startedAt: string;
  finishedAt: string;
  durationMs: number;
  faults: FaultRecord[];
  recovery: RecoveryStats & { byKind: Record<string, RecoveryStats> };
  events: {
    published: number;
    verified: number;
    deadLettered: number;
    expectedDeadLetters: number;
    probes: number;
  };
  mismatches: Mismatch[];
  /** No mismatch, and every fault recovered. */
  ok: boolean;
  notes: string[];
}

/** mulberry32: a small seeded generator, so a run is reproduced from its seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `count` fault kinds in a seeded order; every kind appears once before any repeats. */
export function planFaults<K extends string>(rnd: () => number, count: number, kinds: readonly K[]): K[] {
  const out: K[] = [];
  while (out.length < count) {
    const round = [...kinds];
    for (let i = round.length - 1; i > 0; i--) {
      const j = Math.floor(rnd() * (i + 1));
      [round[i], round[j]] = [round[j]!, round[i]!];
    }
    out.push(...round.slice(0, count - out.length));
  }
  return out;
}

function percentile(sorted: number[], q: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}

function statsOf(values: (number | null | undefined)[]): RecoveryStats {
  const ok = values.filter((v): v is number => typeof v === 'number').sort((a, b) => a - b);
  return {
    count: values.length,
    p50Ms: percentile(ok, 0.5),
    maxMs: ok.length ? ok[ok.length - 1]! : null,
    unrecovered: values.filter((v) => v === null).length,
  };
}

export function recoveryOf(faults: readonly FaultRecord[]): DrillReport['recovery'] {
  const byKind: Record<string, RecoveryStats> = {};
  for (const kind of new Set(faults.map((f) => f.kind))) {
    byKind[kind] = statsOf(faults.filter((f) => f.kind === kind).map((f) => f.recoveryMs));
  }
  return { ...statsOf(faults.map((f) => f.recoveryMs)), byKind };
}

/** Assembles a report; `ok` also needs every fault recovered and nothing mismatched. */
export function buildReport(r: {
  kind: DrillReport['kind'];
  seed: number;
  reproduce: string;
  started: number;
  faults: FaultRecord[];
  events: DrillReport['events'];
  mismatches: Mismatch[];
  notes: string[];
  /** Anything else that fails the run. @default true */
  ok?: boolean;
}): DrillReport {
  const recovery = recoveryOf(r.faults);
  const finished = Date.now();
  return {
    kind: r.kind,
    seed: r.seed,
    reproduce: r.reproduce,
    startedAt: new Date(r.started).toISOString(),
    finishedAt: new Date(finished).toISOString(),
    durationMs: finished - r.started,
    faults: r.faults,
    recovery,
    events: r.events,
    mismatches: r.mismatches,
    ok: (r.ok ?? true) && r.mismatches.length === 0 && recovery.unrecovered === 0,
    notes: r.notes,
  };
}

const ms = (v: number | null | undefined) => (v === null || v === undefined ? 'none' : `${v} ms`);

/** The readable summary: what was done, how fast it recovered, what was verified, what broke. */
export function formatReport(r: DrillReport): string {
  const lines: string[] = [];
  lines.push(
    `partita ${r.kind} report: ${r.ok ? 'PASSED' : 'FAILED'} (seed ${r.seed}, ${(r.durationMs / 1000).toFixed(1)} s)`,
  );
  lines.push(`  reproduce: ${r.reproduce}`);
  lines.push(`  faults injected: ${r.faults.length}`);
  for (const f of r.faults) {
    const heal = f.healRecoveryMs !== undefined ? `, after healing ${ms(f.healRecoveryMs)}` : '';
    lines.push(
      `    +${(f.offsetMs / 1000).toFixed(1).padStart(6)} s  ${f.kind.padEnd(9)} ${f.target.padEnd(8)} recovered in ${ms(f.recoveryMs)}${heal}${f.note ? `  (${f.note})` : ''}`,
    );
  }
  lines.push(
    `  recovery: p50 ${ms(r.recovery.p50Ms)}, max ${ms(r.recovery.maxMs)}, unrecovered ${r.recovery.unrecovered}`,
  );
  for (const [kind, s] of Object.entries(r.recovery.byKind)) {
    lines.push(`    ${kind.padEnd(9)} ×${s.count}: p50 ${ms(s.p50Ms)}, max ${ms(s.maxMs)}`);
  }
  const e = r.events;
  lines.push(
    `  events: ${e.published} published, ${e.verified} verified against a straight fold, ` +
      `${e.deadLettered} dead letters (${e.expectedDeadLetters} expected), ${e.probes} probes`,
  );
  if (r.mismatches.length === 0) lines.push('  mismatches: none');
  else {
    lines.push(`  mismatches: ${r.mismatches.length}`);
    for (const m of r.mismatches.slice(0, 20)) {
      lines.push(
        `    ${m.actor}/${m.key}: ${m.reason}; expected ${JSON.stringify(m.expected)}, got ${JSON.stringify(m.actual)}`,
      );
    }
    if (r.mismatches.length > 20) lines.push(`    ... ${r.mismatches.length - 20} more in the JSON report`);
  }
  for (const n of r.notes) lines.push(`  note: ${n}`);
  return lines.join('\n');
}

/** Writes `<dir>/<kind>-<seed>-<time>.json` and `.txt`; returns both paths. */
export function writeReport(r: DrillReport, dir: string): { json: string; text: string } {
  mkdirSync(dir, { recursive: true });
  const base = join(dir, `${r.kind}-${r.seed}-${r.startedAt.replace(/[:.]/g, '-')}`);
  writeFileSync(`${base}.json`, `${JSON.stringify(r, null, 2)}\n`);
  writeFileSync(`${base}.txt`, `${formatReport(r)}\n`);
  return { json: `${base}.json`, text: `${base}.txt` };
}

const sleep = (t: number) => new Promise((r) => setTimeout(r, t));

/**
 * Times recovery with the probe actor: one probe key per partition; a round publishes a numbered
 * probe to each and waits until every one is applied. Probes are exactly-once, so at the end each
 * key's count must equal what was sent.
 */
export class Prober {
  readonly keys: string[];
  private readonly sent = new Map<string, number>();
  private readonly run: string;

  constructor(
    private readonly nc: NatsConnection,
    partitions: number,
    /** Tells apart the probe keys of two drills on one deployment. */
    runId: string,
  ) {
    this.run = runId.replace(/[^-\w]/g, '-');
    this.keys = [];
    for (let p = 0; p < partitions; p++) {
      let i = 0;
      while (partitionOf(`${this.run}-${p}-${i}`, partitions) !== p) i++;
      this.keys.push(`${this.run}-${p}-${i}`);
    }
  }

  get probes(): number {
    let n = 0;
    for (const v of this.sent.values()) n += v;
    return n;
  }

  /** Publishes one probe per partition; resolves with the ms until all applied, or null on timeout. */
  async round(timeoutMs: number): Promise<number | null> {
    const started = performance.now();
    const deadline = started + timeoutMs;
    const js = jetstream(this.nc);
    // Each publish is retried with its id until stored, so a server failover neither loses nor doubles it.
    await Promise.all(
      this.keys.map(async (key) => {
        const i = (this.sent.get(key) ?? 0) + 1;
        this.sent.set(key, i);
        for (let attempt = 1; ; attempt++) {
          try {
            await js.publish(`${EVENTS_PREFIX}.${PROBE_ACTOR}.${key}`, JSON.stringify({ i }), {
              msgID: `probe-${key}-${i}`,
              timeout: 2000,
            });
            return;
          } catch (err) {
            if (performance.now() > deadline) throw err;
            await sleep(Math.min(500, 25 * attempt));
          }
        }
      }),
    ).catch(() => undefined);
    const jsm = await jetstreamManager(this.nc, { checkAPI: false });
    const waiting = new Set(this.keys);
    while (waiting.size > 0) {
      if (performance.now() > deadline) return null;
      for (const key of [...waiting]) {
        const e = await readKvLatest(jsm, STATE_BUCKET, stateKvKey(PROBE_ACTOR, key)).catch(() => null);
        const s = e ? e.json<{ state: ProbeState }>().state : null;
        if (s && s.n >= (this.sent.get(key) ?? 0)) waiting.delete(key);
      }
      if (waiting.size > 0) await sleep(50);
    }
    return Math.round(performance.now() - started);
  }

  /** Every probe applied exactly once, in order. */
  async verify(timeoutMs = 30_000): Promise<Mismatch[]> {
    const jsm = await jetstreamManager(this.nc, { checkAPI: false });
    const deadline = performance.now() + timeoutMs;
    const out: Mismatch[] = [];
    for (const key of this.keys) {
      const want = this.sent.get(key) ?? 0;
      let got: ProbeState | null = null;
      do {
        const e = await readKvLatest(jsm, STATE_BUCKET, stateKvKey(PROBE_ACTOR, key)).catch(() => null);
        got = e ? e.json<{ state: ProbeState }>().state : null;
        if (got && got.n >= want) break;
        await sleep(100);
      } while (performance.now() < deadline);
      const expected = { n: want, last: want, outOfOrder: 0 };
      const actual = got ?? { n: 0, last: 0, outOfOrder: 0 };
      if (actual.n !== want || actual.last !== want || actual.outOfOrder !== 0) {
        out.push({
          actor: PROBE_ACTOR,
          key,
          expected,
          actual,
          reason:
            actual.n < want ? 'probes missing' : actual.n > want ? 'probes doubled' : 'probes out of order',
        });
      }
    }
    return out;
  }
}
