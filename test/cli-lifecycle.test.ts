// The process lifecycle of the commands (issue 17, findings 4 and 10): clear one-line errors at
// start-up, a stop bounded by --shutdown-timeout (and a second signal exits at once), and a
// `partita dev` whose nats-server never outlives it, even on SIGKILL.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { DLQ_STREAM, freePorts } from '../runtime/index.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats, tempDir } from './helpers/nats.js';
import { type NodeProcess, PARTITA_BIN, spawnPartita } from './helpers/node-process.js';

function run(args: string[]) {
  return spawnSync(process.execPath, [PARTITA_BIN, ...args], { encoding: 'utf8', timeout: 30_000 });
}

/** One line on stderr, no stack trace, no server banner. */
function assertOneLine(stderr: string, what: string): string {
  const lines = stderr.trim().split('\n');
  assert.equal(lines.length, 1, `${what}: one line, got:\n${stderr}`);
  assert.doesNotMatch(stderr, /\n\s+at /, `${what}: no stack`);
  return lines[0]!;
}

function listen(port: number): Promise<Server> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(port, '127.0.0.1', () => res(srv));
  });
}

/** A pid that no longer runs (gone, or a zombie only its parent has not reaped). */
function gone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

describe('start-up errors', () => {
  it('node, gateway and status against a NATS that is down: the URL and what to start, exit 1', async () => {
    const [port] = await freePorts(1);
    const url = `nats://127.0.0.1:${port}`;
    for (const args of [
      ['status', '--nats', url],
      ['gateway', '--nats', url, '--port', '0'],
      ['node', '--nats', url, '--data', join(tempDir(), 'node')],
    ]) {
      const r = run(args);
      assert.equal(r.status, 1, `partita ${args[0]}: ${r.stderr}`);
      const line = assertOneLine(r.stderr, `partita ${args[0]}`);
      assert.match(line, /PARTITA_ERR_NATS_UNREACHABLE/);
      assert.ok(line.includes(url), `names the URL: ${line}`);
      assert.match(line, /partita nats.*partita dev.*--nats/);
    }
  });

  it('nats and dev on a port in use: the port and the option that picks another, no banner', async () => {
    const [port] = await freePorts(1);
    const held = await listen(port!);
    try {
      const nats = run(['nats', '--port', String(port), '--data', tempDir()]);
      assert.equal(nats.status, 1);
      assert.match(
        assertOneLine(nats.stderr, 'partita nats'),
        new RegExp(`:${port}: address already in use.*--port N`),
      );
      const dev = run(['dev', '--nats-port', String(port), '--port', '0', '--data', tempDir()]);
      assert.equal(dev.status, 1);
      assert.match(
        assertOneLine(dev.stderr, 'partita dev'),
        new RegExp(`:${port}: address already in use.*--nats-port N`),
      );
    } finally {
      held.close();
    }
  });
});

describe('partita dev', () => {
  it('SIGKILLed, leaves no nats-server behind: its pid is gone and its port free', async () => {
    const data = tempDir();
    const [natsPort] = await freePorts(1);
    const dev = await spawnPartita(
      ['dev', '--data', data, '--nats-port', String(natsPort), '--port', '0'],
      {},
      60_000,
    );
    const portsFile = readdirSync(join(data, 'nats', 'ports')).find((f) => f.endsWith('.ports'));
    assert.ok(portsFile, 'the server wrote its ports file');
    const pid = Number(/_(\d+)\.ports$/.exec(portsFile)![1]);
    assert.equal(gone(pid), false, 'the server runs');
    await dev.kill('SIGKILL');
    await check(() => gone(pid), 15_000, `nats-server ${pid} to go`);
    const srv = await check(() => listen(natsPort!), 15_000, `port ${natsPort} to be free`);
    srv.close();
  });
});

describe('a node whose stop cannot finish', () => {
  let nats: TestNats;
  before(async () => {
    nats = await startTestNats({ partitions: 2 });
  });
  after(async () => {
    await nats?.stop();
  });

  /** A node with a partition stuck publishing: the dead-letter stream is gone, so its dead letter
   * is retried for as long as the node runs, and stopping it would wait for ever. */
  async function stuckNode(shutdownTimeout: string): Promise<NodeProcess> {
    const node = await spawnPartita([
      'node',
      '--nats',
      nats.url,
      '--data',
      join(tempDir(), 'node'),
      '--metrics-port',
      '0',
      '--stall-timeout',
      '100ms',
      '--shutdown-timeout',
      shutdownTimeout,
    ]);
    const nc = await nats.connect();
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(DLQ_STREAM).catch(() => undefined);
    await jetstream(nc).publish('events.nosuchtype.k1', '{}');
    await check(
      async () =>
        /^partita_partitions_stalled 1$/m.test(await (await fetch(`${node.ready.metrics}/metrics`)).text()),
      20_000,
      'the partition to stall',
    );
    return node;
  }

  it('exits 1 after --shutdown-timeout, saying what it waited for', async () => {
    const node = await stuckNode('1s');
    const code = await node.kill('SIGTERM');
    assert.equal(code, 1);
    assert.match(
      node.stderr(),
      /partita node: did not stop within 1000 ms \(waiting for: publishing the last batches.*partitions not stopped: \d/,
    );
  });

  it('a second SIGTERM exits at once', async () => {
    const node = await stuckNode('10m');
    node.child.kill('SIGTERM');
    // Draining: the first signal was taken, and the stop waits for the stuck partition.
    await check(
      async () => /node draining/.test(await (await fetch(`${node.ready.metrics}/readyz`)).text()),
      20_000,
      'the node to drain',
    );
    const code = await node.kill('SIGTERM');
    assert.equal(code, 1);
    assert.match(node.stderr(), /partita node: SIGTERM while stopping/);
  });
});
