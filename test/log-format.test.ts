// What a person sees in a terminal: `partita node` (as `partita dev` and the other long-running
// commands) prints readable log lines on a TTY and JSON elsewhere, and `--log-format` decides
// either way. The TTY is a real pseudo-terminal, from util-linux `script`.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, it } from 'node:test';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { PARTITA_BIN } from './helpers/node-process.js';

let nats: TestNats;
const children = new Set<ChildProcess>();
let runs = 0;

before(async () => {
  assert.equal(
    spawnSync('script', ['--version']).status,
    0,
    'util-linux script is needed for a pseudo-terminal',
  );
  nats = await startTestNats({ partitions: 2 });
});
after(async () => {
  // A run that failed before its clean stop: closing the terminal hangs its node up.
  for (const c of children) c.kill('SIGKILL');
  await nats?.stop();
});

const PRETTY = /^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] INFO: node running \{.*"node":"log-\d+"/;
const READY = /^partita ready node=log-\d+ metrics=http:\/\/127\.0\.0\.1:\d+ nats=nats:\/\/\S+$/;

// biome-ignore lint/suspicious/noControlCharactersInRegex: ANSI colour sequences
const ANSI = /\u001b\[[0-9;]*m/g;

/** Lines of output, terminal colours and carriage returns taken out. */
const linesOf = (text: string) =>
  text
    .replace(ANSI, '')
    .split(/\r?\n/)
    .map((l) => l.replace(/\r/g, ''));

const shellQuote = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;

const isJsonLine = (l: string, msg: string) => {
  try {
    return (JSON.parse(l) as { msg?: string }).msg === msg;
  } catch {
    return false;
  }
};

/**
 * Runs `partita node` until its "node running" line, then stops it with Ctrl-C (on a terminal,
 * through the terminal) or SIGINT, and returns what it printed: `out` (the terminal, or stdout) and
 * `err` (stderr; empty on a terminal, where both streams are the same).
 */
async function runNode(opts: {
  tty: boolean;
  args?: string[];
  /** The output after which it is stopped. @default "node running" */
  stopOn?: RegExp;
}): Promise<{ out: string; err: string }> {
  const id = `log-${++runs}`;
  const args = [
    PARTITA_BIN,
    'node',
    '--nats',
    nats.url,
    '--data',
    join(nats.dir, id),
    '--id',
    id,
    '--threads',
    '1',
    ...(opts.args ?? []),
  ];
  const env: NodeJS.ProcessEnv = { ...process.env, PARTITA_LOG_LEVEL: 'info', NO_COLOR: '' };
  delete env.PARTITA_LOG_FORMAT;
  // `script` runs the command through $SHELL -c. `exec` leaves no shell between the terminal and
  // the node: a shell that stayed (dash does) would take the Ctrl-C itself and exit with 130.
  const command = `exec ${[process.execPath, ...args].map(shellQuote).join(' ')}`;
  const child = opts.tty
    ? spawn('script', ['-qfec', command, '/dev/null'], { env })
    : spawn(process.execPath, args, { env });
  children.add(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  try {
    const stopOn = opts.stopOn ?? /node running/;
    await check(
      () => stopOn.test(out + err),
      30_000,
      `${stopOn} from ${id} (out: ${out.slice(-500)} err: ${err.slice(-500)})`,
    );
  } finally {
    if (opts.tty) child.stdin!.write('\u0003');
    else child.kill('SIGINT');
  }
  const code = await exited;
  children.delete(child);
  assert.equal(code, 0, `${id} exited with ${code}: ${out.slice(-1000)} ${err.slice(-1000)}`);
  return { out, err };
}

it('on a terminal: readable lines with time, level and message; the ready line as it was', async () => {
  const { out } = await runNode({ tty: true });
  const lines = linesOf(out);
  assert.ok(
    lines.some((l) => PRETTY.test(l)),
    `no pretty "node running" line in:\n${lines.join('\n')}`,
  );
  assert.ok(
    lines.some((l) => READY.test(l)),
    `no ready line in:\n${lines.join('\n')}`,
  );
  assert.ok(!lines.some((l) => l.startsWith('{"level"')), 'a JSON line on the terminal');
  // Colours on a terminal (NO_COLOR is empty here).
  assert.ok(out.includes('\u001b[32mINFO'), 'no colours');
});

it('on a terminal with --log-format json: JSON lines', async () => {
  const { out } = await runNode({ tty: true, args: ['--log-format', 'json'] });
  const lines = linesOf(out);
  assert.ok(
    lines.some((l) => isJsonLine(l, 'node running')),
    `no JSON "node running" line in:\n${lines.join('\n')}`,
  );
  assert.ok(lines.some((l) => READY.test(l)));
  assert.ok(!lines.some((l) => PRETTY.test(l)));
});

it('not on a terminal: JSON on stderr, the ready line alone on stdout', async () => {
  const { out, err } = await runNode({ tty: false });
  assert.ok(
    linesOf(err).some((l) => isJsonLine(l, 'node running')),
    `no JSON "node running" line in:\n${err}`,
  );
  assert.deepEqual(
    linesOf(out).filter((l) => l !== ''),
    linesOf(out).filter((l) => READY.test(l)),
  );
  assert.equal(linesOf(out).filter((l) => READY.test(l)).length, 1);
});

it('not on a terminal with --log-format pretty: readable lines, without colours', async () => {
  const { err } = await runNode({ tty: false, args: ['--log-format', 'pretty'] });
  assert.ok(
    linesOf(err).some((l) => PRETTY.test(l)),
    `no pretty "node running" line in:\n${err}`,
  );
  assert.ok(!err.includes('\u001b['), 'colours off a terminal');
});

it('stopped by SIGINT while starting: starts, then stops cleanly and exits 0', async () => {
  // Its first log line comes well before the start ends. Without a listener for the signal by
  // then, SIGINT kills the node half-started (no exit code).
  const { err } = await runNode({ tty: false, stopOn: /schemas in force/ });
  const lines = linesOf(err);
  assert.ok(
    lines.some((l) => isJsonLine(l, 'node running')),
    `it went on starting:\n${err}`,
  );
  assert.ok(
    lines.some((l) => isJsonLine(l, 'node stopped')),
    `then stopped cleanly:\n${err}`,
  );
});
