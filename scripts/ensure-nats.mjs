#!/usr/bin/env node
// Makes sure a nats-server >= 2.9 is on PATH (or at $PARTITA_NATS_SERVER).
// As root on Debian it installs the distribution's package; otherwise it stops with one line.
import { execFileSync } from 'node:child_process';

const bin = process.env.PARTITA_NATS_SERVER || 'nats-server';

function version() {
  try {
    const out = execFileSync(bin, ['--version'], { encoding: 'utf8' });
    const m = /v?(\d+)\.(\d+)\.(\d+)/.exec(out);
    return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : null;
  } catch {
    return null;
  }
}

const ok = (v) => v && (v[0] > 2 || (v[0] === 2 && v[1] >= 9));
let v = version();
if (!ok(v)) {
  const root = typeof process.getuid === 'function' && process.getuid() === 0;
  let apt = false;
  try {
    execFileSync('sh', ['-c', 'command -v apt-get'], { stdio: 'ignore' });
    apt = true;
  } catch {}
  if (root && apt) {
    console.error('partita: nats-server >= 2.9 not found; installing Debian package nats-server');
    execFileSync(
      'sh',
      [
        '-c',
        'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null',
      ],
      {
        stdio: 'inherit',
      },
    );
    v = version();
  }
}
if (!ok(v)) {
  console.error(
    'partita: needs nats-server >= 2.9 on PATH: run `sudo apt-get install nats-server` (or set PARTITA_NATS_SERVER)',
  );
  process.exit(1);
}
