// `partita drill` against a running deployment: nodes that accept drill faults, kept alive by a
// supervisor (as systemd or Kubernetes would), crashed, stalled and stopped on request; the drill
// times recovery, verifies its probes, writes a report and records itself in the audit trail.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { NatsConnection } from '@nats-io/transport-node';
import { readAudit } from '../../runtime/audit.js';
import type { DrillReport } from '../../runtime/drill.js';
import { readStatus } from '../../runtime/status.js';
import { check } from '../helpers/check.js';
import { startTestNats, type TestNats, tempDir } from '../helpers/nats.js';
import { type NodeProcess, PARTITA_BIN, spawnPartita } from '../helpers/node-process.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('../fixtures/actors/', import.meta.url));
const PARTITIONS = 4;

/** Runs `partita drill` without blocking this process (the supervisor needs the event loop). */
function drill(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res) => {
    const child = spawn(process.execPath, [PARTITA_BIN, 'drill', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('exit', (code) => res({ code, stdout, stderr }));
  });
}

describe('partita drill', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  const nodes = new Map<string, NodeProcess>();
  let supervising = true;
  const restarts: string[] = [];

  const startNode = async (id: string, drills = true) => {
    const args = [
      'node',
      '--nats',
      nats.url,
      '--actors',
      FIXTURE_ACTORS,
      '--data',
      join(nats.dir, id),
      '--id',
      id,
    ];
    if (drills) args.push('--allow-drills');
    const n = await spawnPartita(args);
    nodes.set(id, n);
    // The supervisor: a node that exits comes back, as under systemd or a StatefulSet.
    n.child.once('exit', () => {
      if (!supervising || nodes.get(id) !== n) return;
      restarts.push(id);
      setTimeout(() => void startNode(id, drills).catch(() => undefined), 300);
    });
  };

  before(async () => {
    nats = await startTestNats({ partitions: PARTITIONS });
    nc = await nats.connect();
  });
  after(async () => {
    supervising = false;
    for (const n of nodes.values()) await n.kill('SIGKILL');
    await nats?.stop();
  });

  it('refuses a deployment whose nodes do not accept drill faults', async () => {
    await startNode('plain', false);
    const r = await drill(['--nats', nats.url, '--count', '1']);
    assert.equal(r.code, 1, r.stderr);
    assert.match(
      r.stderr,
      /PARTITA_ERR_DRILL: .*node plain does not accept drill faults: start it with --allow-drills/,
    );
    supervising = false;
    await nodes.get('plain')!.kill('SIGTERM');
    nodes.delete('plain');
    supervising = true;
    await check(
      async () => !(await readStatus(nc)).nodes.includes('plain'),
      10_000,
      'the stopped node to leave',
    );
  });

  it('crashes, stalls and stops nodes, times the recovery, and records the drill', async () => {
    await Promise.all(['a', 'b'].map((id) => startNode(id)));
    const dir = tempDir('partita-drills-');
    const r = await drill([
      '--nats',
      nats.url,
      '--faults',
      'crash,stall,handoff',
      '--count',
      '3',
      '--seed',
      '7',
      '--stall-ms',
      '3000',
      '--interval-ms',
      '500',
      '--report',
      dir,
    ]);
    console.log(r.stdout);
    assert.equal(r.code, 0, `drill failed:\n${r.stdout}\n${r.stderr}`);
    const file = readdirSync(dir).find((f) => f.endsWith('.json'))!;
    const report = JSON.parse(readFileSync(join(dir, file), 'utf8')) as DrillReport;
    assert.deepEqual(report.faults.map((f) => f.kind).sort(), ['crash', 'handoff', 'stall']);
    for (const f of report.faults) {
      assert.equal(typeof f.recoveryMs, 'number', `${f.kind} recovered`);
      assert.equal(typeof f.healRecoveryMs, 'number', `${f.kind} healed`);
    }
    assert.deepEqual(report.mismatches, []);
    assert.equal(report.events.probes, PARTITIONS * (1 + 2 * 3));
    assert.match(report.reproduce, /partita drill .*--seed 7/);
    assert.ok(
      readdirSync(dir).some((f) => f.endsWith('.txt')),
      'a readable summary beside the JSON',
    );
    // The crash and the handoff ended processes that the supervisor restarted.
    await check(() => restarts.length >= 2, 10_000, 'the supervisor restarted the crashed and stopped nodes');
    const audit = await readAudit(nc, { action: 'drill' });
    assert.equal(audit.length, 1);
    assert.equal(audit[0]!.target, 'seed-7');
    assert.equal(audit[0]!.details?.ok, true);
    assert.ok(audit[0]!.who.length > 0);
    assert.equal((await readAudit(nc, { action: 'drill-start' })).length, 1);
  });
});
