// Every command and request in README.md's ```sh blocks works as written. They run against what a
// new user has after `npm start`: `partita dev --demo` (a nats-server, a node with the built-in
// actors, the gateway and the demo producer), with its ports substituted for 8080 and 4222.
// Commands that start a server (`partita gateway`, `node`, `nats`, `dev`, or any ending in `&`)
// run until their `partita ready` line, then stop with SIGTERM and must exit 0; the others must
// exit 0 and print something, and the user-facing ones are checked for what they print.
//
// What is not run, and why (each is still checked):
// - `npm ci`, `npm test`, `npm run build|lint|bench` and `npm start` would reinstall, rebuild the
//   tree this test runs from, or run every test including this one: each must name a script of
//   package.json (`npm start` is `partita dev --demo`, which is what this test runs).
// - `nats pub` needs the `nats` CLI: it runs when the CLI is installed, else through a stand-in
//   that publishes the same way (test/helpers/nats-cli.ts).
// - The drill block: its faults kill the node, which must then run under a supervisor;
//   test/chaos/drill-command.test.ts runs that drill against supervised nodes. Here each of its
//   commands must parse (no usage error).
// - The schema block names the user's own files: the test writes an orders.json and a compatible
//   orders-v2.json for it.
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { inStream, partitionOf } from '../runtime/index.js';
import { check } from './helpers/check.js';
import { tempDir as makeTempDir } from './helpers/nats.js';
import { type NodeProcess, PARTITA_BIN, spawnPartita } from './helpers/node-process.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const NATS_STAND_IN = fileURLToPath(new URL('./helpers/nats-cli.js', import.meta.url));
const run = promisify(execFile);
const dirs: string[] = [];
/** A temporary directory, removed when the tests end. */
function tempDir(prefix: string): string {
  const d = makeTempDir(prefix);
  dirs.push(d);
  return d;
}

interface ShBlock {
  /** The line of the block's opening fence. */
  line: number;
  commands: string[];
}

/**
 * The ```sh blocks of README.md as commands: comments (`# …` lines, and two spaces then `#`)
 * removed, lines joined while a single quote is open (a multi-line JSON body).
 */
function readmeBlocks(): ShBlock[] {
  const text = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const blocks: ShBlock[] = [];
  for (const m of text.matchAll(/```sh\n([\s\S]*?)```/g)) {
    const commands: string[] = [];
    let open = '';
    for (const raw of m[1]!.split('\n')) {
      const line = raw.replace(/\s{2,}#.*$/, '').trimEnd();
      if (open === '' && (line.trim() === '' || line.trim().startsWith('#'))) continue;
      open = open === '' ? line.trim() : `${open}\n${line}`;
      if ((open.match(/'/g) ?? []).length % 2 === 0) {
        commands.push(open);
        open = '';
      }
    }
    assert.equal(
      open,
      '',
      `README.md block at line ${text.slice(0, m.index).split('\n').length}: an open quote`,
    );
    blocks.push({ line: text.slice(0, m.index).split('\n').length, commands });
  }
  return blocks;
}

const hasNatsCli = spawnSync('nats', ['--version']).status === 0;

/** Shell functions: `npx partita` is this tree's bin; `nats` is the CLI or its stand-in. */
const PRELUDE = [
  `partita() { "${process.execPath}" "${PARTITA_BIN}" "$@"; }`,
  'npx() { if [ "$1" = partita ]; then shift; partita "$@"; else command npx "$@"; fi; }',
  hasNatsCli ? '' : `nats() { "${process.execPath}" "${NATS_STAND_IN}" "$@"; }`,
  'set -o pipefail',
].join('\n');

/** A command that serves until stopped. */
const LONG_RUNNING = /^npx partita (gateway|node|nats|dev)\b|&$/;

/** Runs a short command in `cwd`; fails the test unless it exits 0. */
async function sh(cmd: string, cwd: string, env: Record<string, string>): Promise<string> {
  const r = await run('bash', ['-c', `${PRELUDE}\n${cmd}`], {
    cwd,
    env: { ...process.env, PARTITA_LOG_LEVEL: 'warn', ...env },
    timeout: 60_000,
  }).catch((err: { code: number; stdout: string; stderr: string }) =>
    assert.fail(`${cmd}\nexited ${err.code}\n${err.stdout}\n${err.stderr}`),
  );
  return r.stdout;
}

/** Starts a long-running `npx partita …` command in `cwd` and waits for its ready line. */
async function serve(cmd: string, cwd: string, extra: string[] = []): Promise<ServedProcess> {
  const words = cmd.replace(/&$/, '').trim().split(/\s+/);
  assert.deepEqual(words.slice(0, 2), ['npx', 'partita'], cmd);
  const args = [...words.slice(2), ...extra];
  const child = spawn(process.execPath, [PARTITA_BIN, ...args], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PARTITA_LOG_LEVEL: 'warn' },
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr!.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-10_000);
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  let code: number | null | undefined;
  void exited.then((c) => {
    code = c;
  });
  const line = await check(
    () => {
      if (code !== undefined) assert.fail(`${cmd}: exited ${code} before ready\n${err}`);
      return out.split('\n').find((l) => l.startsWith('partita ready'));
    },
    30_000,
    `${cmd}: its ready line`,
  ).catch((e: unknown) => {
    child.kill('SIGKILL');
    throw e;
  });
  const ready = Object.fromEntries(
    line
      .split(' ')
      .slice(2)
      .map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]),
  );
  return {
    child,
    ready,
    async stop() {
      if (code === undefined) child.kill('SIGTERM');
      const c = await exited;
      assert.equal(c, 0, `${cmd}: exit code after SIGTERM\n${err}`);
    },
  };
}

interface ServedProcess {
  child: ChildProcess;
  ready: Record<string, string>;
  stop(): Promise<void>;
}

/** The command of `block` that starts with `prefix`. */
function command(block: ShBlock, prefix: string): string {
  const c = block.commands.find((x) => x.startsWith(prefix));
  assert.ok(c, `README.md block at line ${block.line} has a command starting with ${prefix}`);
  return c;
}

describe('README.md examples', () => {
  const blocks = readmeBlocks();
  const block = (first: string) => {
    const b = blocks.find((x) => x.commands[0]?.startsWith(first));
    assert.ok(b, `README.md has a block starting with ${first}`);
    return b;
  };
  const handled = new Set<ShBlock>();
  let dev: NodeProcess;
  let gateway: string;
  let natsUrl: string;
  let env: Record<string, string>;
  const cwd = tempDir('partita-readme-');
  const local = (cmd: string) => cmd.replaceAll('localhost:8080', gateway);

  before(async () => {
    // What `npm start` runs, on free ports.
    dev = await spawnPartita(
      ['dev', '--demo', '--port', '0', '--nats-port', '0', '--data', join(cwd, 'dev')],
      {},
      60_000,
    );
    gateway = new URL(dev.ready.gateway!).host;
    natsUrl = dev.ready.nats!;
    env = { PARTITA_NATS: natsUrl, NATS_URL: natsUrl };
  });
  after(async () => {
    const code = await dev?.kill('SIGTERM');
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
    assert.equal(code, 0, 'partita dev stops cleanly');
  });

  it('npm commands name scripts of package.json', () => {
    const scripts = (
      JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }
    ).scripts;
    for (const b of [block('npm ci'), block('npm run build')]) {
      handled.add(b);
      for (const cmd of b.commands) {
        for (const part of cmd.split('&&').map((p) => p.trim())) {
          const m = /^npm (ci|start|test|run (\S+))$/.exec(part);
          assert.ok(m, `README.md line ${b.line}: ${part}`);
          if (m[1] === 'ci') continue;
          const script = m[2] ?? m[1]!;
          assert.ok(scripts[script], `npm ${m[1]}: package.json has no "${script}" script`);
        }
      }
    }
    assert.match(scripts.start!, /partita\.js dev --demo$/, 'npm start is what this test runs');
    // "npm run format rewrites", in the same block's comment.
    assert.ok(scripts.format);
  });

  it('the quickstart reads: states of the demo actors and partita status', async () => {
    const b = block('curl localhost:8080/v1/actors/warehouse');
    handled.add(b);
    for (const cmd of b.commands.filter((c) => c.startsWith('curl '))) {
      // The demo's keys appear as its events come in (a warehouse with its first exception).
      const body = await check(
        async () => {
          const out = await sh(local(cmd), cwd, env);
          const v = JSON.parse(out) as { state?: unknown; error?: string };
          return v.state ? v : undefined;
        },
        90_000,
        `${cmd}: a state`,
      );
      assert.ok(!('sys' in body), `${cmd}: no runtime internals`);
    }
    const status = await sh(command(b, 'npx partita status'), cwd, env);
    assert.match(status, /\bdev\b/, 'status names the node');
  });

  it('publishing events: nats pub reaches the ledger actor', async () => {
    const b = block('nats pub');
    handled.add(b);
    const cmd = command(b, 'nats pub');
    const [, subject, payload] = /^nats pub (\S+) '(.*)'$/.exec(cmd)!;
    await sh(cmd, cwd, env);
    // The demo publishes to the same account: find this payload in the input stream by content.
    const nc = await connect({ servers: natsUrl });
    try {
      const jsm = await jetstreamManager(nc);
      const stream = inStream(partitionOf(subject!.split('.')[2]!, 16));
      const seq = await check(
        async () => {
          const last = (await jsm.streams.info(stream)).state.last_seq;
          for (let s = last; s > 0 && s > last - 2000; s--) {
            const m = await jsm.streams.getMessage(stream, { seq: s }).catch(() => null);
            // Stored under the partition's subject: partita.in.<partition>.payments.acct-7.
            if (m?.subject.endsWith(subject!.slice('events'.length)) && m.string() === payload) return s;
          }
          return undefined;
        },
        20_000,
        'the published event in its input stream',
      );
      await check(
        async () => {
          const res = await fetch(`http://${gateway}/v1/actors/ledger/acct-7`);
          return res.ok && ((await res.json()) as { seq: number }).seq >= seq;
        },
        20_000,
        'the ledger applied it',
      );
    } finally {
      await nc.close();
    }
  });

  it('the Feast request works as written', async () => {
    const b = block('curl -s localhost:8080/get-online-features');
    handled.add(b);
    const answer = await check(
      async () => {
        const out = await sh(local(b.commands[0]!), cwd, env);
        const v = JSON.parse(out) as {
          metadata: { feature_names: string[] };
          results: { values: unknown[]; statuses: string[]; event_timestamps: string[] }[];
        };
        assert.ok(v.results, out);
        // cmp-1 and cmp-2 appear as the demo's impressions come in.
        return v.results[1]!.statuses.slice(0, 2).every((s) => s === 'PRESENT') ? v : undefined;
      },
      60_000,
      'impressions of cmp-1 and cmp-2',
    );
    assert.deepEqual(answer.metadata.feature_names, ['campaign_id', 'impressions', 'ctr']);
    assert.deepEqual(answer.results[0]!.values, ['cmp-1', 'cmp-2', 'cmp-404']);
    assert.equal(answer.results[1]!.statuses[2], 'NOT_FOUND');
    assert.equal(typeof answer.results[1]!.values[0], 'number');
  });

  it('a gateway with tokens, as in Auth', async () => {
    const b = block('echo \'[{"name":"dashboards"');
    handled.add(b);
    await sh(b.commands[0]!, cwd, env);
    const token = (JSON.parse(readFileSync(join(cwd, 'tokens.json'), 'utf8')) as { token: string }[])[0]!
      .token;
    // The example's NATS address is a placeholder; port 0 keeps 8080 free.
    const cmd = command(b, 'npx partita gateway').replace('nats://10.0.0.5:4222', natsUrl);
    const gw = await serve(cmd, cwd, ['--port', '0']);
    try {
      const port = new URL(gw.ready.gateway!).port;
      const url = `http://127.0.0.1:${port}/v1/actors/ledger/acct-7`;
      assert.equal((await fetch(url)).status, 401);
      assert.equal((await fetch(url, { headers: { authorization: `Bearer ${token}` } })).status, 200);
    } finally {
      await gw.stop();
    }
  });

  it('running several nodes', async () => {
    const b = block('npx partita nats --partitions 16 &');
    handled.add(b);
    const dir = tempDir('partita-readme-nodes-');
    // Another nats-server may hold 4222 on this machine: a free port and a data dir of its own.
    const nats = await serve(b.commands[0]!, dir, ['--port', '0', '--data', join(dir, 'nats')]);
    const url = nats.ready.nats!;
    const nodes: ServedProcess[] = [];
    try {
      for (const cmd of b.commands.slice(1).filter((c) => LONG_RUNNING.test(c)))
        nodes.push(await serve(cmd.replace('nats://127.0.0.1:4222', url), dir));
      assert.equal(nodes.length, 2);
      const status = command(b, 'npx partita status');
      await check(
        async () => {
          const out = await sh(status, dir, { PARTITA_NATS: url });
          return /\bn1\b/.test(out) && /\bn2\b/.test(out);
        },
        60_000,
        'status names both nodes',
      );
    } finally {
      for (const n of nodes) await n.stop();
      await nats.stop();
    }
  });

  it('drill commands parse', () => {
    const b = block('npx partita node --nats $NATS');
    handled.add(b);
    for (const cmd of b.commands) {
      const args = cmd
        .replaceAll('$NATS', 'nats://127.0.0.1:1')
        .split(/\s+/)
        .slice(2)
        .map((a) => (a.startsWith('./') ? join(tempDir('partita-readme-drill-'), a) : a));
      // Nothing listens at port 1: the command gets past its options and fails to connect.
      const r = spawnSync(process.execPath, [PARTITA_BIN, ...args], {
        encoding: 'utf8',
        timeout: 30_000,
        env: { ...process.env, PARTITA_LOG_LEVEL: 'silent', PARTITA_NATS: 'nats://127.0.0.1:1' },
      });
      assert.notEqual(r.status, 2, `${cmd}: ${r.stderr}`);
      assert.doesNotMatch(r.stderr, /unknown option|usage/i, `${cmd}: ${r.stderr}`);
    }
  });

  it('the schema registry', async () => {
    const b = block('npx partita schema add orders orders.json');
    handled.add(b);
    // The user's files; v2 adds an optional field, which FULL compatibility allows.
    const v1 = { type: 'object', properties: { status: { type: 'string' } }, required: ['status'] };
    writeFileSync(join(cwd, 'orders.json'), JSON.stringify(v1));
    writeFileSync(
      join(cwd, 'orders-v2.json'),
      JSON.stringify({ ...v1, properties: { ...v1.properties, note: { type: 'string' } } }),
    );
    const outs: string[] = [];
    for (const cmd of b.commands) outs.push(await sh(cmd, cwd, env));
    assert.match(outs.at(-1)!, /orders/, 'schema list names orders');
    assert.match(outs.at(-1)!, /^orders +v2 /m, `at version 2: ${outs.at(-1)}`);
  });

  it('replay and its audit', async () => {
    const b = block('npx partita replay --actor ledger --from-seq 1');
    handled.add(b);
    const outs: string[] = [];
    for (const cmd of b.commands) outs.push(await sh(cmd, cwd, env));
    assert.match(outs.at(-1)!, /replay/);
  });

  it('every sh block of README.md was checked', () => {
    const left = blocks.filter((b) => !handled.has(b));
    assert.deepEqual(
      left.map((b) => `line ${b.line}: ${b.commands[0]}`),
      [],
      'a new sh block in README.md needs a check here',
    );
  });
});
