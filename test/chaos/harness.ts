// The chaos harness: a 3-server NATS cluster (R3), three worker nodes, a seeded producer and a
// seeded schedule of faults; at the end every actor's state is checked against a straight fold of
// the events and every dead letter is accounted for. `npm test` runs a short run of it and
// `npm run chaos -- --minutes 30` a long one; both write a report.
import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type JetStreamClient, jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  buildReport,
  type DrillReport,
  type FaultRecord,
  type Mismatch,
  Prober,
  planFaults,
  seededRandom,
} from '../../runtime/drill.js';
import {
  DLQ_HEADERS,
  DLQ_STREAM,
  inStream,
  partitionOf,
  STATE_BUCKET,
  stateKvKey,
} from '../../runtime/index.js';
import { readKvLatest } from '../../runtime/kv-latest.js';
import { consumerOn } from '../../runtime/state-scan.js';
import { readStatus } from '../../runtime/status.js';
import { type Account, chainStep } from '../fixtures/actors/account.js';
import { startTestNatsCluster, type TestNatsCluster } from '../helpers/nats-cluster.js';
import { type NodeProcess, spawnPartita } from '../helpers/node-process.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('../fixtures/actors/', import.meta.url));

/**
 * The kinds the CI run and a soak inject by default; `nats-stall` is a SIGSTOP of a NATS server
 * for 3-7 s, then SIGCONT: a server starved of CPU; its Raft leaderships move meanwhile and it
 * wakes up behind, and its clients' connections hang until it does.
 */
export const FAULT_KINDS = ['kill', 'stall', 'handoff', 'nats-kill', 'join', 'nats-stall'] as const;
/** Every kind the harness can inject. */
export const ALL_FAULT_KINDS = FAULT_KINDS;
export type FaultKind = (typeof ALL_FAULT_KINDS)[number];

export interface ChaosOptions {
  seed: number;
  /** Faults to inject, one after another (each healed before the next). */
  faults: number;
  /** Keep injecting until this long has passed (soak runs), even past `faults`. */
  minDurationMs?: number;
  /** Fault kinds to draw from. @default every kind */
  kinds?: readonly FaultKind[];
  /** Producer rate while faults run, events/s. @default 1500 */
  rate?: number;
  partitions?: number;
  /** Build defects the nodes start with (PARTITA_INJECT_DEFECT), to prove the harness catches them. */
  defect?: string;
  /** Before each fault, publish this many events at once, so the fault hits a backlog. @default 0 */
  burst?: number;
  /** Fixed delay before a killed node restarts; seeded 0.5–4 s when omitted. */
  restartDelayMs?: number;
  /** How long each recovery may take (a NATS election alone can take 9 s). @default 60000 */
  recoveryTimeoutMs?: number;
  /** How long the final check waits for the last events and dead letters. @default 60000 */
  verifyTimeoutMs?: number;
  /** Appends every node's log to `<dir>/<node>.log` (set PARTITA_TEST_LOG_LEVEL=info for more). */
  logDir?: string;
  /** The nodes' log level (PARTITA_LOG_LEVEL). @default PARTITA_TEST_LOG_LEVEL, else 'warn' */
  logLevel?: string;
  /** The command that reproduces this run, for the report. */
  reproduce: string;
  log?: (line: string) => void;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Flaky {
  ok: number;
  touched: number;
}

/**
 * The seeded event set and its straight fold: `tx` (account exactly-once, seen at-least-once) on
 * hot keys and a long tail, `risky` (flaky, which emits to auditor; some throw and dead-letter),
 * and events that must dead-letter: bad JSON, an unknown type, a subject with too many tokens.
 */
export class ChaosWorkload {
  readonly accounts = new Map<string, Account>();
  readonly seenIds = new Map<string, number[]>();
  readonly flaky = new Map<string, Flaky>();
  auditorN = 0;
  /** Marker id → the dead-letter code it must carry. */
  readonly expectedDead = new Map<number, string>();
  published = 0;
  private readonly rnd: () => number;
  private readonly js: JetStreamClient;

  constructor(
    nc: NatsConnection,
    readonly seed: number,
    private readonly keys = 400,
  ) {
    this.rnd = seededRandom(seed ^ 0x5eed);
    this.js = jetstream(nc);
  }

  private next(): [string, string] {
    const id = ++this.published;
    const r = this.rnd();
    const hot = this.rnd() < 0.3;
    const k = hot ? Math.floor(this.rnd() * 5) : Math.floor(this.rnd() * this.keys);
    if (r < 0.78) {
      const key = `k${k}`;
      const amount = Math.floor(this.rnd() * 1000);
      const s = this.accounts.get(key) ?? { count: 0, total: 0, chain: 0 };
      this.accounts.set(key, { count: s.count + 1, total: s.total + amount, chain: chainStep(s.chain, id) });
      const ids = this.seenIds.get(key) ?? [];
      ids.push(id);
      this.seenIds.set(key, ids);
      return [`events.tx.${key}`, JSON.stringify({ id, amount })];
    }
    if (r < 0.9) {
      const key = `r${k % 12}`;
      const fail = this.rnd() < 0.15;
      if (fail) this.expectedDead.set(id, 'PARTITA_ERR_HANDLER');
      else {
        const s = this.flaky.get(key) ?? { ok: 0, touched: 0 };
        this.flaky.set(key, { ok: s.ok + 1, touched: s.ok + 1 });
        this.auditorN++;
      }
      return [`events.risky.${key}`, JSON.stringify({ id, fail })];
    }
    if (r < 0.94) {
      this.expectedDead.set(id, 'PARTITA_ERR_DECODE');
      return [`events.tx.k${k}`, `{"id":${id},bad`];
    }
    if (r < 0.97) {
      this.expectedDead.set(id, 'PARTITA_ERR_UNKNOWN_TYPE');
      return [`events.nosuch.u${k}`, JSON.stringify({ id })];
    }
    this.expectedDead.set(id, 'PARTITA_ERR_UNROUTABLE');
    return [`events.tx.a${k}.extra`, JSON.stringify({ id })];
  }

  /**
   * Publishes `n` events through JetStream, each retried with its id until stored (a server may be
   * down), and never two of one subject in flight, so the stream keeps each key's order.
   */
  async publish(n: number, window = 200): Promise<void> {
    const send = async (subject: string, data: string, msgID: string) => {
      for (let attempt = 1; ; attempt++) {
        try {
          await this.js.publish(subject, data, { msgID, timeout: 3000 });
          return;
        } catch {
          await sleep(Math.min(500, 20 * attempt));
        }
      }
    };
    let inFlight: Promise<void>[] = [];
    const subjects = new Set<string>();
    for (let i = 0; i < n; i++) {
      const [subject, data] = this.next();
      if (subjects.has(subject) || inFlight.length >= window) {
        await Promise.all(inFlight);
        inFlight = [];
        subjects.clear();
      }
      subjects.add(subject);
      inFlight.push(send(subject, data, `chaos-${this.seed}-${this.published}`));
    }
    await Promise.all(inFlight);
  }

  /** Asks the paced producer for `n` events at once (a backlog); resolves when half are stored. */
  async burst(n: number): Promise<void> {
    const target = this.published + n / 2;
    this.burstRequest += n;
    while (this.published < target) await sleep(20);
  }

  private burstRequest = 0;

  /**
   * Publishes at about `perSecond` until `stop()`, plus any burst asked for. One producer loop, so
   * the order of each key's events in the streams is the order of the fold.
   */
  async publishPaced(perSecond: number, stop: () => boolean): Promise<void> {
    const step = Math.max(1, Math.round(perSecond / 20));
    while (!stop()) {
      const t = performance.now();
      if (this.burstRequest > 0) {
        const n = this.burstRequest;
        this.burstRequest = 0;
        await this.publish(n, 1000);
        continue;
      }
      await this.publish(step);
      await sleep(Math.max(0, 50 - (performance.now() - t)));
    }
  }
}

/** Runs one chaos run and returns its report; it throws only when the harness itself fails. */
export async function runChaos(o: ChaosOptions): Promise<DrillReport> {
  const log = o.log ?? ((l: string) => console.log(l));
  const partitions = o.partitions ?? 8;
  const kinds = o.kinds ?? FAULT_KINDS;
  const recoveryTimeout = o.recoveryTimeoutMs ?? 60_000;
  const rnd = seededRandom(o.seed);
  const started = Date.now();
  const notes: string[] = [];
  const cluster: TestNatsCluster = await startTestNatsCluster({ size: 3, partitions });
  const nodes = new Map<string, NodeProcess>();
  let nextNode = 1;
  const env: Record<string, string> = {
    ...(o.defect ? { PARTITA_INJECT_DEFECT: o.defect } : {}),
    ...(o.logLevel ? { PARTITA_LOG_LEVEL: o.logLevel } : {}),
  };
  /** Nodes the harness itself stopped or killed; any other exit is a crash. */
  const stopped = new Set<NodeProcess>();
  const crashes: Mismatch[] = [];
  const startNode = async (id: string) => {
    const args = ['node', '--nats', cluster.servers.join(','), '--actors', FIXTURE_ACTORS];
    args.push('--data', join(cluster.dir, id), '--id', id, '--partitions', String(partitions));
    const n = await spawnPartita(args, env, 60_000);
    if (o.logDir) {
      mkdirSync(o.logDir, { recursive: true });
      // What it logged while starting (the last 20k characters), then everything after.
      appendFileSync(join(o.logDir, `${id}.log`), n.stderr());
      n.child.stderr!.on('data', (d: Buffer) => appendFileSync(join(o.logDir!, `${id}.log`), d));
    }
    nodes.set(id, n);
    // A node that exits when no fault asked it to is a failure of the run, whatever the states say.
    n.child.once('exit', (code, signal) => {
      if (stopped.has(n)) return;
      const tail = n.stderr().trim().split('\n').slice(-8).join('\n');
      crashes.push({
        actor: '(nodes)',
        key: id,
        expected: 'running',
        actual: `exited (${code ?? signal})`,
        reason: `node exited on its own: ${tail}`,
      });
    });
  };

  try {
    for (let i = 0; i < 3; i++) await startNode(`n${nextNode++}`);
    const nc = await cluster.connect({ name: 'chaos-producer' });
    const work = new ChaosWorkload(nc, o.seed);
    const prober = new Prober(nc, partitions, `chaos-${o.seed}`);
    if ((await prober.round(60_000)) === null) throw new Error('the cluster never processed a first probe');
    let stop = false;
    const load = work.publishPaced(o.rate ?? 1500, () => stop);
    const plan = planFaults(rnd, o.faults, kinds);
    const faults: FaultRecord[] = [];
    const between = () => 1000 + Math.floor(rnd() * 2000);
    const pick = () => {
      const live = [...nodes.keys()].sort();
      return live[Math.floor(rnd() * live.length)]!;
    };
    for (let i = 0; i < plan.length || Date.now() - started < (o.minDurationMs ?? 0); i++) {
      const kind = plan[i] ?? planFaults(rnd, 1, kinds)[0]!;
      await sleep(between());
      if (o.burst) await work.burst(o.burst);
      const injectedAt = Date.now();
      const record: FaultRecord = {
        kind,
        target: '',
        at: new Date(injectedAt).toISOString(),
        offsetMs: injectedAt - started,
        recoveryMs: null,
      };
      let heal: () => Promise<void>;
      let healAfterMs: number;
      if (kind === 'kill' || kind === 'handoff') {
        const id = pick();
        record.target = id;
        const n = nodes.get(id)!;
        nodes.delete(id);
        stopped.add(n);
        const code = await n.kill(kind === 'kill' ? 'SIGKILL' : 'SIGTERM');
        if (kind === 'handoff' && code !== 0) record.note = `exit code ${code} after SIGTERM`;
        healAfterMs = o.restartDelayMs ?? 500 + Math.floor(rnd() * 3500);
        heal = () => startNode(id);
      } else if (kind === 'stall') {
        const id = pick();
        record.target = id;
        nodes.get(id)!.child.kill('SIGSTOP');
        // Past the 2 s lease TTL: the others take its partitions, and it wakes up fenced.
        healAfterMs = 3000 + Math.floor(rnd() * 2000);
        heal = async () => {
          nodes.get(id)?.child.kill('SIGCONT');
        };
      } else if (kind === 'nats-stall') {
        const m = cluster.cluster.members[Math.floor(rnd() * cluster.cluster.members.length)]!;
        record.target = m.name;
        const proc = m.server?.process;
        proc?.kill('SIGSTOP');
        healAfterMs = 3000 + Math.floor(rnd() * 4000);
        heal = async () => {
          proc?.kill('SIGCONT');
        };
      } else if (kind === 'nats-kill') {
        const m = cluster.cluster.members[Math.floor(rnd() * cluster.cluster.members.length)]!;
        record.target = m.name;
        await m.kill();
        healAfterMs = 2000 + Math.floor(rnd() * 3000);
        heal = () => m.restart();
      } else {
        if (nodes.size >= 5) {
          // Enough members: a join is replaced by a handoff of the newest one.
          const id = [...nodes.keys()].pop()!;
          record.target = id;
          record.kind = 'handoff';
          const n = nodes.get(id)!;
          nodes.delete(id);
          stopped.add(n);
          await n.kill('SIGTERM');
          healAfterMs = 0;
          heal = async () => undefined;
        } else {
          const id = `n${nextNode++}`;
          record.target = id;
          await startNode(id);
          healAfterMs = 0;
          heal = async () => undefined;
        }
      }
      // Time the recovery while the fault lasts; heal on schedule, whatever the probe says.
      const recovering = prober.round(recoveryTimeout);
      await sleep(Math.max(0, healAfterMs - (Date.now() - injectedAt)));
      const healedAt = Date.now();
      await heal();
      record.recoveryMs = await recovering;
      if (healAfterMs > 0) {
        // Measured from the healing step: a probe round started then.
        const healed = await prober.round(recoveryTimeout);
        record.healRecoveryMs = healed === null ? null : Date.now() - healedAt;
      }
      faults.push(record);
      log(
        `chaos: ${record.kind} ${record.target} at +${(record.offsetMs / 1000).toFixed(1)} s: ` +
          `recovered in ${record.recoveryMs ?? 'none'} ms${record.healRecoveryMs !== undefined ? `, healed in ${record.healRecoveryMs ?? 'none'} ms` : ''}`,
      );
    }
    stop = true;
    await load;
    // Settle: every partition owned by a live node, then verify.
    const settleDeadline = Date.now() + (o.verifyTimeoutMs ?? 60_000);
    for (;;) {
      const s = await readStatus(nc).catch(() => null);
      if (s?.partitions.every((p) => p.owner && nodes.has(p.owner))) break;
      if (Date.now() > settleDeadline) {
        notes.push('partitions were not all owned by live nodes after the last fault');
        break;
      }
      await sleep(200);
    }
    const verified = await verifyChaos(nc, work, partitions, o.verifyTimeoutMs ?? 60_000);
    verified.verified += prober.probes;
    const mismatches = [
      ...crashes,
      ...verified.mismatches,
      ...(await prober.verify(o.verifyTimeoutMs ?? 30_000)),
    ];
    return buildReport({
      kind: 'chaos',
      seed: o.seed,
      reproduce: o.reproduce,
      started,
      faults,
      events: {
        published: work.published,
        verified: verified.verified,
        deadLettered: verified.deadLettered,
        expectedDeadLetters: work.expectedDead.size,
        probes: prober.probes,
      },
      mismatches,
      notes,
    });
  } finally {
    for (const n of [...nodes.values(), ...stopped]) {
      stopped.add(n);
      n.child.kill('SIGCONT');
      await n.kill('SIGKILL');
    }
    await cluster.stop();
  }
}

/** Compares every actor's published state with the fold, and the dead letters with the expected ones. */
async function verifyChaos(
  nc: NatsConnection,
  work: ChaosWorkload,
  partitions: number,
  timeoutMs: number,
): Promise<{ mismatches: Mismatch[]; verified: number; deadLettered: number }> {
  const mismatches: Mismatch[] = [];
  const jsm = await jetstreamManager(nc, { checkAPI: false });
  // Read from the leader: a follower catching up would make a verdict out of an old value.
  // A read that fails (a timeout while the bucket elects a leader) is tried again, not taken for
  // an absent state.
  const get = async <T>(actor: string, key: string): Promise<T | null> => {
    for (let attempt = 1; ; attempt++) {
      try {
        const e = await readKvLatest(jsm, STATE_BUCKET, stateKvKey(actor, key));
        return e ? e.json<{ state: T }>().state : null;
      } catch (err) {
        if (attempt >= 10) throw err;
        await sleep(500);
      }
    }
  };
  // Wait (bounded) for the last events to be applied: the fold's counts are the finish line.
  const deadline = Date.now() + timeoutMs;
  const waitFor = async <T>(
    actor: string,
    key: string,
    done: (s: T | null) => boolean,
  ): Promise<T | null> => {
    for (;;) {
      const s = await get<T>(actor, key);
      if (done(s) || Date.now() > deadline) return s;
      await sleep(100);
    }
  };
  let verified = 0;
  const lost: { key: string; ids: number[] }[] = [];
  for (const [key, want] of work.accounts) {
    const got = await waitFor<Account>('account', key, (s) => (s?.count ?? 0) >= want.count);
    verified += want.count;
    if (!got || got.count !== want.count || got.total !== want.total || got.chain !== want.chain) {
      const reason =
        !got || got.count < want.count
          ? 'events missing'
          : got.count > want.count
            ? 'events doubled'
            : 'state differs (order or content)';
      mismatches.push({ actor: 'account', key, expected: want, actual: got, reason });
    }
    // Its own wait: one batch's state puts land one by one, so `account` may lead `seen`.
    const ids = work.seenIds.get(key) ?? [];
    const seen = await waitFor<{ ids: Record<string, 1> }>('seen', key, (s) =>
      ids.every((id) => s?.ids[String(id)]),
    );
    const missing = ids.filter((id) => !seen?.ids[String(id)]);
    if (missing.length > 0) {
      mismatches.push({
        actor: 'seen',
        key,
        expected: `ids ${missing.slice(0, 10).join(',')}${missing.length > 10 ? ',...' : ''} present`,
        actual: `${missing.length} missing`,
        reason: 'at-least-once events missing',
      });
      lost.push({ key, ids: missing });
    }
  }
  for (const [key, want] of work.flaky) {
    const got = await waitFor<Flaky>('flaky', key, (s) => (s?.ok ?? 0) >= want.ok);
    verified += want.ok;
    if (!got || got.ok !== want.ok || got.touched !== want.touched) {
      mismatches.push({
        actor: 'flaky',
        key,
        expected: want,
        actual: got,
        reason: 'exactly-once state differs',
      });
    }
  }
  if (work.auditorN > 0) {
    const got = await waitFor<{ n: number }>('auditor', 'risky', (s) => (s?.n ?? 0) >= work.auditorN);
    if (got?.n !== work.auditorN) {
      mismatches.push({
        actor: 'auditor',
        key: 'risky',
        expected: { n: work.auditorN },
        actual: got,
        reason: (got?.n ?? 0) < work.auditorN ? 'emitted events missing' : 'emitted events doubled',
      });
    }
  }
  if (lost.length > 0) mismatches.push(...(await whereLost(nc, lost, partitions)));
  // Where exactly-once went wrong, whether the input stream's replicas agree (every event once, at
  // the same sequence on each) tells the server's fault from ours.
  const wrong = new Set(
    mismatches.filter((m) => m.actor === 'account').map((m) => partitionOf(m.key, partitions)),
  );
  if (wrong.size > 0) mismatches.push(...(await inputReplicas(nc, wrong)));
  // Every event that reached NATS is in the input streams or was dead-lettered as unroutable.
  let stored = 0;
  for (let p = 0; p < partitions; p++) stored += (await jsm.streams.info(inStream(p))).state.messages;
  // Dead letters: every expected one present with its code, none unexpected.
  const found = new Map<number, string>();
  const unexpected: string[] = [];
  // A dead letter can come late: an unrouted event fetched by a node that was then killed is
  // redelivered after the consumer's ack wait. Read on until all are in or a deadline passes.
  let deadLettered = 0;
  const missing = () => [...work.expectedDead.keys()].some((id) => !found.has(id));
  const anyDead = work.expectedDead.size > 0 || (await jsm.streams.info(DLQ_STREAM)).state.messages > 0;
  const consumer = await jetstream(nc).consumers.get(DLQ_STREAM);
  const msgs = await consumer.consume();
  const timer = setTimeout(
    () => void msgs.close(),
    anyDead ? Math.max(Math.min(timeoutMs, 15_000), deadline - Date.now()) : 0,
  );
  let caughtUp = false;
  for await (const m of msgs) {
    deadLettered++;
    const text = new TextDecoder().decode(m.data);
    const id = Number(producerId(m.data));
    const code = m.headers?.get(DLQ_HEADERS.code) ?? '';
    if (Number.isFinite(id) && work.expectedDead.has(id)) found.set(id, code);
    else unexpected.push(`${m.subject} ${code} ${text.slice(0, 80)}`);
    if (m.info.pending === 0) caughtUp = true;
    if (caughtUp && !missing()) break;
  }
  clearTimeout(timer);
  await msgs.close();
  const unrouted = [...work.expectedDead.values()].filter((c) => c === 'PARTITA_ERR_UNROUTABLE').length;
  if (stored + unrouted < work.published) {
    mismatches.push({
      actor: '(streams)',
      key: 'input',
      expected: work.published - unrouted,
      actual: stored,
      reason: 'events acknowledged to the producer are missing from the input streams',
    });
  }
  for (const [id, code] of work.expectedDead) {
    const got = found.get(id);
    verified++;
    if (got !== code) {
      mismatches.push({
        actor: '(dead letters)',
        key: `event ${id}`,
        expected: code,
        actual: got ?? null,
        reason: got ? 'dead-lettered with another code' : 'dead letter missing',
      });
    }
  }
  const deadMissing = [...work.expectedDead].filter(
    ([id, code]) => !found.has(id) && code !== 'PARTITA_ERR_UNROUTABLE',
  );
  if (deadMissing.length > 0)
    mismatches.push(
      ...(await whereDeadLost(
        nc,
        deadMissing.map(([id]) => id),
        partitions,
      ).catch((err: Error) => [
        {
          actor: '(forensics)',
          key: 'dead letters',
          expected: 'where the events sit',
          actual: err.message,
          reason: 'could not locate the events of missing dead letters',
        },
      ])),
    );
  for (const u of unexpected.slice(0, 50)) {
    mismatches.push({
      actor: '(dead letters)',
      key: u.split(' ')[0]!,
      expected: null,
      actual: u,
      reason: 'unexpected dead letter',
    });
  }
  return { mismatches, verified, deadLettered };
}

/**
 * For keys with missing events: where the missing events sit in their partition's stream, and
 * what the state bucket's entry says (its sequence, epoch and last sequences), so a report tells
 * which owner and which stretch of the stream lost them.
 */
async function whereLost(
  nc: NatsConnection,
  lost: { key: string; ids: number[] }[],
  partitions: number,
): Promise<Mismatch[]> {
  const out: Mismatch[] = [];
  const byPartition = new Map<number, { key: string; ids: number[] }[]>();
  for (const l of lost) {
    const p = partitionOf(l.key, partitions);
    byPartition.set(p, [...(byPartition.get(p) ?? []), l]);
  }
  const jsm = await jetstreamManager(nc, { checkAPI: false });
  for (const [p, list] of byPartition) {
    const wanted = new Map<number, string>();
    for (const l of list) for (const id of l.ids) wanted.set(id, l.key);
    const seqs = new Map<string, number[]>();
    const info = await jsm.streams.info(inStream(p));
    const consumer = await jetstream(nc).consumers.get(inStream(p));
    const msgs = await consumer.consume();
    for await (const m of msgs) {
      const id = Number(producerId(m.data));
      const key = wanted.get(id);
      if (key !== undefined) seqs.set(key, [...(seqs.get(key) ?? []), m.seq]);
      if (m.seq >= info.state.last_seq) break;
    }
    await msgs.close();
    for (const l of list) {
      const e = await readKvLatest(jsm, STATE_BUCKET, stateKvKey('seen', l.key)).catch(() => undefined);
      const v = e ? e.json<Record<string, unknown>>() : null;
      out.push({
        actor: '(forensics)',
        key: l.key,
        expected: `partition ${p}: missing at stream sequences ${(seqs.get(l.key) ?? []).join(',')}`,
        actual: v ? { seq: v.seq, epoch: v.epoch, lineage: v.lineage, revision: e?.revision } : null,
        reason: 'where the missing events sit',
      });
    }
  }
  return out;
}

/**
 * For the partitions given, each replica of the input stream read on its own server: the events a
 * replica holds at more than one sequence, and the sequences where replicas hold different events.
 * Exactly-once counts events by sequence, so either one is a fault of the stream, not of the fold
 * (nats-server 2.9.10 can reorder a stream's replicas after its leader stalls: ARCHITECTURE.md).
 */
async function inputReplicas(nc: NatsConnection, partitions: ReadonlySet<number>): Promise<Mismatch[]> {
  const out: Mismatch[] = [];
  const jsm = await jetstreamManager(nc, { checkAPI: false });
  const js = jetstream(nc);
  for (const p of partitions) {
    const stream = inStream(p);
    const info = await jsm.streams.info(stream);
    if (info.state.messages === 0) continue;
    const servers = [info.cluster?.leader, ...(info.cluster?.replicas ?? []).map((r) => r.name)];
    const views = new Map<string, Map<number, string>>();
    for (const server of servers) {
      const view = new Map<number, string>();
      try {
        const name = await consumerOn(jsm, stream, server);
        const msgs = await (await js.consumers.get(stream, name)).consume({ max_messages: 5000 });
        const timer = setTimeout(() => msgs.stop(), 30_000);
        for await (const m of msgs) {
          // Producer events carry an id; emitted ones a message id.
          const id = producerId(m.data) ?? m.headers?.get('Nats-Msg-Id');
          view.set(m.seq, `${m.subject} ${id}`);
          if (m.seq >= info.state.last_seq) break;
        }
        clearTimeout(timer);
        msgs.stop();
        await jsm.consumers.delete(stream, name).catch(() => undefined);
      } catch {
        // A replica that cannot be read is left out of the comparison.
      }
      if (view.size > 0 && server) views.set(server, view);
    }
    const notes: string[] = [];
    for (const [server, view] of views) {
      const at = new Map<string, number[]>();
      for (const [seq, what] of view) at.set(what, [...(at.get(what) ?? []), seq]);
      const twice = [...at].filter(([, seqs]) => seqs.length > 1);
      if (twice.length > 0)
        notes.push(
          `${server} holds ${twice.length} events twice (${twice
            .slice(0, 5)
            .map(([what, seqs]) => `${what} at ${seqs.join(',')}`)
            .join('; ')})`,
        );
    }
    const [first, ...others] = [...views];
    for (const [server, view] of others) {
      const differ = [...first![1]].filter(([seq, what]) => view.has(seq) && view.get(seq) !== what);
      if (differ.length > 0)
        notes.push(
          `${first![0]} and ${server} differ at ${differ.length} sequences (${differ
            .slice(0, 5)
            .map(([seq, what]) => `${seq}: ${what} / ${view.get(seq)}`)
            .join('; ')})`,
        );
    }
    out.push({
      actor: '(forensics)',
      key: `partition ${p}`,
      expected: `every event once, at the same sequence on every replica (${views.size} read)`,
      actual: notes.length === 0 ? 'so it is' : notes.join('; '),
      reason: "the input stream's replicas compared",
    });
  }
  return out;
}

/** The id the chaos producer put in an event (JSON or not: bad JSON keeps it too). */
function producerId(data: Uint8Array): string | undefined {
  return /"id":(\d+)/.exec(new TextDecoder().decode(data))?.[1];
}

/**
 * For missing dead letters: where their events sit in the input streams (partition and sequence),
 * so a report can be matched with the owners' logs (`event dead-lettered` carries the sequence).
 */
async function whereDeadLost(nc: NatsConnection, ids: number[], partitions: number): Promise<Mismatch[]> {
  const wanted = new Set(ids.slice(0, 20));
  const at = new Map<number, string>();
  const jsm = await jetstreamManager(nc, { checkAPI: false });
  for (let p = 0; p < partitions && at.size < wanted.size; p++) {
    const info = await jsm.streams.info(inStream(p));
    if (info.state.messages === 0) continue;
    const msgs = await (await jetstream(nc).consumers.get(inStream(p))).consume();
    for await (const m of msgs) {
      const id = Number(producerId(m.data));
      if (wanted.has(id)) at.set(id, `partition ${p}, stream sequence ${m.seq}, subject ${m.subject}`);
      if (m.seq >= info.state.last_seq) break;
    }
    await msgs.close();
  }
  return [...wanted].map((id) => ({
    actor: '(forensics)',
    key: `event ${id}`,
    expected: 'a dead letter',
    actual: at.get(id) ?? 'not in any input stream',
    reason: 'where the event of a missing dead letter sits',
  }));
}

/**
 * What the nodes logged about `partitions` (from the logs a run kept in `logDir`), in time order:
 * each partition's owners, restores, resumes and fences around a loss, for a report read in a CI
 * log. Dead-letter lines are left out; at most `max` lines, the last ones when there are more.
 */
export function partitionTimeline(logDir: string, partitions: ReadonlySet<number>, max = 120): string[] {
  if (!existsSync(logDir)) return [];
  const rows: { time: number; line: string }[] = [];
  for (const f of readdirSync(logDir).filter((n) => n.endsWith('.log'))) {
    for (const text of readFileSync(join(logDir, f), 'utf8').split('\n')) {
      let j: Record<string, unknown>;
      try {
        j = JSON.parse(text) as Record<string, unknown>;
      } catch {
        continue;
      }
      const p = j.partition;
      const ps = j.positions as Record<string, unknown> | undefined;
      const about =
        (typeof p === 'number' && partitions.has(p)) ||
        (Array.isArray(j.partitions) && j.partitions.some((x) => partitions.has(x as number))) ||
        (ps !== undefined && [...partitions].some((x) => String(x) in ps));
      if (!about || j.msg === 'event dead-lettered') continue;
      const { level: _l, time, node, msg, ...rest } = j;
      rows.push({
        time: time as number,
        line: `${new Date(time as number).toISOString().slice(11, 23)} ${node} ${msg} ${JSON.stringify(rest)}`,
      });
    }
  }
  rows.sort((a, b) => a.time - b.time);
  return rows.slice(-max).map((r) => r.line);
}
