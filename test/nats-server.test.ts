// The nats-server Partita starts: which binary, which version, and the config it writes.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  MIN_NATS_SERVER,
  natsConfig,
  natsServerBinary,
  natsServerVersion,
  PartitaError,
  startNatsServer,
} from '../runtime/index.js';
import { tempDir } from './helpers/nats.js';
import { spawnPartita } from './helpers/node-process.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

it('the binary: PARTITA_NATS_SERVER, else the project .partita/bin (whatever the cwd), else PATH', () => {
  const saved = { env: process.env.PARTITA_NATS_SERVER, cwd: process.cwd() };
  try {
    process.env.PARTITA_NATS_SERVER = '/opt/elsewhere/nats-server';
    assert.equal(natsServerBinary(), '/opt/elsewhere/nats-server');
    delete process.env.PARTITA_NATS_SERVER;
    const dir = tempDir();
    dirs.push(dir);
    process.chdir(dir);
    const local = join(ROOT, '.partita', 'bin', 'nats-server');
    assert.equal(natsServerBinary(), existsSync(local) ? local : 'nats-server');
  } finally {
    process.chdir(saved.cwd);
    if (saved.env === undefined) delete process.env.PARTITA_NATS_SERVER;
    else process.env.PARTITA_NATS_SERVER = saved.env;
  }
});

it('the tests run a supported server, and its version is the one --version prints', () => {
  const v = natsServerVersion();
  assert.ok(
    v.supported,
    `nats-server ${v.text} is older than ${MIN_NATS_SERVER.major}.${MIN_NATS_SERVER.minor}`,
  );
  const out = execFileSync(natsServerBinary(), ['--version'], { encoding: 'utf8' });
  assert.ok(out.includes(v.text), `${out} names ${v.text}`);
});

it('the config fsyncs every write (sync_interval: always) unless told, and nats-server accepts it', () => {
  const dir = tempDir();
  dirs.push(dir);
  const conf = natsConfig({ dataDir: dir, partitions: 4 });
  assert.match(conf, /jetstream \{[^}]*\n {2}sync_interval: always\n\}/);
  assert.match(natsConfig({ dataDir: dir, syncInterval: '2m' }), /sync_interval: 2m\n/);
  assert.throws(
    () => natsConfig({ dataDir: dir, syncInterval: 'always }' }),
    /PARTITA_ERR_USAGE|sync interval/,
  );
  const file = join(dir, 'nats.conf');
  writeFileSync(file, conf);
  const r = spawnSync(natsServerBinary(), ['-c', file, '-t'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
});

it('refuses to start a nats-server older than 2.10, naming it and how to get a newer one', async (t) => {
  // A real old server when the machine has one on PATH (Debian 12's 2.9.10); skipped otherwise.
  const old = (() => {
    try {
      return natsServerVersion('nats-server');
    } catch {
      return undefined;
    }
  })();
  if (!old || old.supported) {
    t.skip('no nats-server older than 2.10 on PATH');
    return;
  }
  const saved = process.env.PARTITA_NATS_SERVER;
  process.env.PARTITA_NATS_SERVER = 'nats-server';
  try {
    const dir = tempDir();
    dirs.push(dir);
    await assert.rejects(startNatsServer({ port: 0, dataDir: dir }), (err: unknown) => {
      assert.ok(err instanceof PartitaError);
      assert.equal(err.code, 'PARTITA_ERR_NATS_SERVER');
      assert.match(
        err.message,
        new RegExp(`nats-server ${old.text.replace(/\./g, '\\.')}; Partita needs 2\\.10`),
      );
      assert.match(err.message, /ensure-nats/);
      return true;
    });
  } finally {
    if (saved === undefined) delete process.env.PARTITA_NATS_SERVER;
    else process.env.PARTITA_NATS_SERVER = saved;
  }
});

it('partita nats logs the version of the server it runs', async () => {
  const dir = tempDir();
  dirs.push(dir);
  const p = await spawnPartita(['nats', '--port', '0', '--data', dir, '--log-format', 'json'], {
    PARTITA_LOG_LEVEL: 'info',
  });
  try {
    const line = p
      .stderr()
      .split('\n')
      .find((l) => l.includes('"component":"nats-server"'));
    assert.ok(line, p.stderr());
    const rec = JSON.parse(line) as { version: string; binary: string; msg: string };
    assert.equal(rec.version, natsServerVersion().text);
    assert.equal(rec.binary, natsServerBinary());
    assert.equal(rec.msg, `nats-server ${rec.version}`);
  } finally {
    await p.kill('SIGTERM');
  }
});
