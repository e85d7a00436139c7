// `partita drill`: a chaos drill against a running deployment. It injects the faults it can reach
// over NATS (nodes started with --allow-drills crash, stall or hand over on request), times the
// recovery with probe events on every partition, checks the probes were applied exactly once,
// writes a report (JSON and text) and records the drill in the audit trail.
import { setTimeout as sleep } from 'node:timers/promises';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { recordAudit } from './audit.js';
import { type Command, connectCli, int, natsUrlOf, UsageError } from './cli-kit.js';
import {
  buildReport,
  type DrillReport,
  type FaultRecord,
  formatReport,
  type Mismatch,
  Prober,
  planFaults,
  seededRandom,
  writeReport,
} from './drill.js';
import { DRILL_FAULT_KINDS, type DrillFault, type DrillFaultKind, drillSubject } from './drill-faults.js';
import { PartitaError } from './errors.js';
import { readStatus } from './status.js';
import { DLQ_STREAM, NODES_BUCKET } from './subjects.js';

export interface DrillOptions {
  seed: number;
  faults: readonly DrillFaultKind[];
  count: number;
  /** How long a stall blocks a node. @default 4000 (past the default 2 s lease TTL) */
  stallMs: number;
  /** Pause between faults. */
  intervalMs: number;
  recoveryTimeoutMs: number;
  reproduce: string;
  log: (line: string) => void;
}

async function deadLetters(nc: NatsConnection): Promise<number> {
  const jsm = await jetstreamManager(nc);
  return (await jsm.streams.info(DLQ_STREAM).catch(() => null))?.state.messages ?? 0;
}

/** The instance id in a node's heartbeat: it changes when the node restarts. */
async function instanceOf(nc: NatsConnection, node: string): Promise<string | null> {
  const kv = await new Kvm(nc).open(NODES_BUCKET);
  const e = await kv.get(node).catch(() => null);
  return e?.operation === 'PUT' ? (e.json<{ instance?: string }>().instance ?? null) : null;
}

/** Runs a drill; the report says whether it passed. Throws when the deployment cannot be drilled. */
export async function runDrill(nc: NatsConnection, o: DrillOptions): Promise<DrillReport> {
  const started = Date.now();
  const rnd = seededRandom(o.seed);
  const notes: string[] = [];
  const status = await readStatus(nc);
  const partitions = status.partitions.length;
  if (partitions === 0)
    throw new PartitaError(
      'PARTITA_ERR_DRILL',
      'no Partita deployment on this NATS (no partitions recorded)',
    );
  const liveNodes = async () => (await readStatus(nc)).nodes;
  const nodes = await liveNodes();
  if (nodes.length === 0) throw new PartitaError('PARTITA_ERR_DRILL', 'no node is running');
  for (const node of nodes) {
    const ok = await nc
      .request(drillSubject(node), JSON.stringify({ fault: 'ping' } satisfies DrillFault), { timeout: 2000 })
      .then((m) => m.json<{ ok: boolean }>().ok)
      .catch(() => false);
    if (!ok)
      throw new PartitaError(
        'PARTITA_ERR_DRILL',
        `node ${node} does not accept drill faults: start it with --allow-drills (or PARTITA_ALLOW_DRILLS=1)`,
      );
  }
  if (nodes.length < 2)
    notes.push('one node only: after a crash or handoff no other node can take over until it restarts');
  const prober = new Prober(nc, partitions, `drill-${o.seed}-${started.toString(36)}`);
  if ((await prober.round(o.recoveryTimeoutMs)) === null)
    throw new PartitaError(
      'PARTITA_ERR_DRILL',
      'the deployment does not process probe events before any fault',
    );
  const dlqBefore = await deadLetters(nc);
  await recordAudit(nc, {
    action: 'drill-start',
    target: `seed-${o.seed}`,
    details: { faults: o.faults, count: o.count },
  });
  const faults: FaultRecord[] = [];
  for (const kind of planFaults(rnd, o.count, o.faults)) {
    await sleep(o.intervalMs);
    const live = await liveNodes();
    const target = live[Math.floor(rnd() * live.length)];
    if (!target) {
      notes.push(`no live node for a ${kind} fault`);
      break;
    }
    const before = await instanceOf(nc, target);
    const injectedAt = Date.now();
    const record: FaultRecord = {
      kind,
      target,
      at: new Date(injectedAt).toISOString(),
      offsetMs: injectedAt - started,
      recoveryMs: null,
    };
    const fault: DrillFault = kind === 'stall' ? { fault: 'stall', ms: o.stallMs } : { fault: kind };
    const reply = await nc
      .request(drillSubject(target), JSON.stringify(fault), { timeout: 5000 })
      .then((m) => m.json<{ ok: boolean; error?: string }>())
      .catch((err: Error) => ({ ok: false, error: err.message }));
    if (!reply.ok) {
      record.note = `not injected: ${reply.error}`;
      faults.push(record);
      continue;
    }
    record.recoveryMs = await prober.round(o.recoveryTimeoutMs);
    // Healing: a stalled node wakes by itself; a crashed or stopped one needs its supervisor.
    const healStart = kind === 'stall' ? injectedAt + o.stallMs : injectedAt;
    if (kind === 'stall') await sleep(Math.max(0, healStart - Date.now()));
    else {
      // Back when its heartbeat names another instance (a restart), whatever the supervisor.
      const deadline = Date.now() + o.recoveryTimeoutMs;
      let back = false;
      while (Date.now() < deadline) {
        const now = await instanceOf(nc, target);
        if (now && now !== before) {
          back = true;
          break;
        }
        await sleep(200);
      }
      if (!back) {
        record.note = 'not restarted within the recovery timeout (no supervisor?)';
        faults.push(record);
        o.log(`drill: ${kind} ${target}: recovered in ${record.recoveryMs ?? 'none'} ms; ${record.note}`);
        continue;
      }
    }
    const healed = await prober.round(o.recoveryTimeoutMs);
    record.healRecoveryMs = healed === null ? null : Date.now() - healStart;
    faults.push(record);
    o.log(
      `drill: ${kind} ${target}: recovered in ${record.recoveryMs ?? 'none'} ms, back to normal ${record.healRecoveryMs ?? 'never'} ms after healing`,
    );
  }
  const mismatches: Mismatch[] = await prober.verify(o.recoveryTimeoutMs);
  const after = await readStatus(nc);
  for (const p of after.partitions) {
    if (!p.owner)
      mismatches.push({
        actor: '(ownership)',
        key: `p${p.partition}`,
        expected: 'an owner',
        actual: null,
        reason: 'no owner after the drill',
      });
  }
  const dlqDelta = (await deadLetters(nc)) - dlqBefore;
  if (dlqDelta > 0)
    notes.push(
      `${dlqDelta} dead letters written during the drill (by the deployment's own traffic; none are probes)`,
    );
  return buildReport({
    kind: 'drill',
    seed: o.seed,
    reproduce: o.reproduce,
    started,
    faults,
    events: {
      published: prober.probes,
      verified: prober.probes,
      deadLettered: dlqDelta,
      expectedDeadLetters: 0,
      probes: prober.probes,
    },
    mismatches,
    notes,
    ok: faults.every((f) => !f.note?.startsWith('not injected')),
  });
}

export const drillCommand: Command = {
  options: {
    nats: { type: 'string' },
    faults: { type: 'string' },
    count: { type: 'string' },
    seed: { type: 'string' },
    'stall-ms': { type: 'string' },
    'interval-ms': { type: 'string' },
    'recovery-timeout-ms': { type: 'string' },
    report: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run(v) {
    const faults = ((v.faults as string | undefined) ?? DRILL_FAULT_KINDS.join(',')).split(
      ',',
    ) as DrillFaultKind[];
    for (const f of faults) {
      if (!DRILL_FAULT_KINDS.includes(f))
        throw new UsageError(`--faults: unknown fault "${f}" (known: ${DRILL_FAULT_KINDS.join(', ')})`);
    }
    const seed = int(v.seed as string | undefined, 'seed') ?? Math.floor(Math.random() * 2 ** 31);
    const count = int(v.count as string | undefined, 'count') ?? faults.length;
    const servers = natsUrlOf(v);
    const nc = await connectCli(servers, { name: 'partita-drill', maxReconnectAttempts: -1 });
    try {
      const report = await runDrill(nc, {
        seed,
        faults,
        count,
        stallMs: int(v['stall-ms'] as string | undefined, 'stall-ms') ?? 4000,
        intervalMs: int(v['interval-ms'] as string | undefined, 'interval-ms') ?? 2000,
        recoveryTimeoutMs:
          int(v['recovery-timeout-ms'] as string | undefined, 'recovery-timeout-ms') ?? 60_000,
        reproduce: `partita drill --nats ${servers.join(',')} --faults ${faults.join(',')} --count ${count} --seed ${seed}`,
        log: (l) => process.stderr.write(`${l}\n`),
      });
      const paths = writeReport(report, (v.report as string | undefined) ?? 'partita-drills');
      await recordAudit(nc, {
        action: 'drill',
        target: `seed-${seed}`,
        details: {
          ok: report.ok,
          faults: report.faults.length,
          recoveryP50Ms: report.recovery.p50Ms,
          recoveryMaxMs: report.recovery.maxMs,
          mismatches: report.mismatches.length,
          report: paths.json,
        },
      });
      process.stdout.write(
        v.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatReport(report)}\nreport: ${paths.json}\n`,
      );
      return report.ok ? 0 : 1;
    } finally {
      await nc.close();
    }
  },
};
