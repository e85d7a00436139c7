#!/usr/bin/env node
// The tests' outside tools: chromium (the dashboard's browser test, through playwright-core) and
// promtool (the alert rules' unit tests). As root on Debian it installs the distribution's
// packages; otherwise it stops with one line saying what to install. PARTITA_CHROMIUM and
// PARTITA_PROMTOOL point at other binaries.
import { execFileSync } from 'node:child_process';

const tools = [
  { bin: process.env.PARTITA_CHROMIUM || 'chromium', pkg: 'chromium', args: ['--version'] },
  { bin: process.env.PARTITA_PROMTOOL || 'promtool', pkg: 'prometheus', args: ['--version'] },
];

const works = (t) => {
  try {
    execFileSync(t.bin, t.args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

let missing = tools.filter((t) => !works(t));
if (missing.length > 0) {
  const root = typeof process.getuid === 'function' && process.getuid() === 0;
  let apt = false;
  try {
    execFileSync('sh', ['-c', 'command -v apt-get'], { stdio: 'ignore' });
    apt = true;
  } catch {}
  const pkgs = missing.map((t) => t.pkg).join(' ');
  if (root && apt) {
    console.error(`partita: installing Debian packages for the tests: ${pkgs}`);
    execFileSync(
      'sh',
      [
        '-c',
        `apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${pkgs} >/dev/null`,
      ],
      { stdio: 'inherit' },
    );
    missing = tools.filter((t) => !works(t));
  }
}
if (missing.length > 0) {
  console.error(
    `partita: the tests need ${missing.map((t) => t.bin).join(' and ')}: run \`sudo apt-get install ${missing.map((t) => t.pkg).join(' ')}\``,
  );
  process.exit(1);
}
