#!/usr/bin/env node
// Makes sure a chromium for the dashboard's browser test is at $PARTITA_CHROMIUM or /usr/bin/chromium.
// As root on Debian it installs the distribution's package; otherwise it stops with one line.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';

const bin = process.env.PARTITA_CHROMIUM || '/usr/bin/chromium';
if (!existsSync(bin)) {
  const root = typeof process.getuid === 'function' && process.getuid() === 0;
  let apt = false;
  try {
    execFileSync('sh', ['-c', 'command -v apt-get'], { stdio: 'ignore' });
    apt = true;
  } catch {}
  if (root && apt && !process.env.PARTITA_CHROMIUM) {
    console.error('partita: chromium not found; installing Debian package chromium');
    execFileSync(
      'sh',
      [
        '-c',
        'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null',
      ],
      { stdio: 'inherit' },
    );
  }
}
if (!existsSync(bin)) {
  console.error(
    `partita: the dashboard's browser test needs chromium at ${bin}: run \`sudo apt-get install chromium\` (or set PARTITA_CHROMIUM)`,
  );
  process.exit(1);
}
