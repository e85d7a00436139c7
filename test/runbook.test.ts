// Every command in RUNBOOK.md's shell blocks that runs against Partita (`partita ...`, `curl` of a
// node's /metrics) works: it is run as written, against a real node with the built-in actors.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { jetstream } from '@nats-io/jetstream';
import { pino } from 'pino';
import { type PartitaNode, startNode } from '../runtime/index.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { PARTITA_BIN } from './helpers/node-process.js';

const RUNBOOK = fileURLToPath(new URL('../../RUNBOOK.md', import.meta.url));

/** Lines of the ```sh blocks that start with one of `prefixes`, trailing comments removed. */
function runbookCommands(prefixes: string[]): string[] {
  const text = readFileSync(RUNBOOK, 'utf8');
  const out: string[] = [];
  for (const block of text.matchAll(/```sh\n([\s\S]*?)```/g)) {
    for (const line of block[1]!.split('\n')) {
      const cmd = line.replace(/\s{2,}#.*$/, '').trim();
      if (prefixes.some((p) => cmd.startsWith(p))) out.push(cmd);
    }
  }
  return out;
}

let nats: TestNats;
let node: PartitaNode;

before(async () => {
  // Four partitions: the runbook replays partition 3.
  nats = await startTestNats({ partitions: 4 });
  node = await startNode({
    natsUrl: nats.url,
    dataDir: join(nats.dir, 'node'),
    metricsPort: 0,
    threads: 1,
    logger: pino({ level: 'silent' }),
  });
  const nc = await nats.connect();
  const js = jetstream(nc);
  for (let i = 0; i < 40; i++)
    await js.publish(`events.payments.acct-${i % 8}`, JSON.stringify({ amount: i }));
  await js.publish('events.orders.o-1', 'not json');
  await check(
    () => node.progress().reduce((a, p) => a + p.committedSeq, 0) >= 40,
    15_000,
    'the events committed',
  );
});
after(async () => {
  await node?.stop();
  await nats?.stop();
});

it('every partita and curl command of RUNBOOK.md runs and exits 0', async () => {
  const commands = runbookCommands(['partita ', 'curl ']);
  assert.ok(commands.length >= 10, commands.join('\n'));
  assert.ok(commands.some((c) => c.startsWith('partita replay')));
  const metrics = new URL(node.metricsUrl!).host;
  // Asynchronously: the node runs in this process and must answer (/metrics, replays) meanwhile.
  const run = promisify(execFile);
  for (const cmd of commands) {
    const script = `partita() { "${process.execPath}" "${PARTITA_BIN}" "$@"; }\nset -o pipefail\n${cmd.replaceAll('<node>:9464', metrics)}`;
    const r = await run('bash', ['-c', script], {
      env: { ...process.env, PARTITA_NATS: nats.url },
      timeout: 60_000,
    }).catch((err: { code: number; stdout: string; stderr: string }) => {
      assert.fail(`${cmd} exited ${err.code}\n${err.stdout}\n${err.stderr}`);
    });
    // An empty audit trail prints nothing; everything else has something to say.
    if (!cmd.startsWith('partita audit')) assert.ok(r.stdout.trim().length > 0, `${cmd}: printed nothing`);
  }
});
