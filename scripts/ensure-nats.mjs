#!/usr/bin/env node
// Makes sure a supported nats-server (2.10 or newer) is there for `npm start`, `npm test` and
// `npm run bench`, without changing the system.
//
//   node scripts/ensure-nats.mjs            the newest: $PARTITA_NATS_SERVER if set (it wins), else
//                                           .partita/bin/nats-server, else `nats-server` on PATH;
//                                           if none is supported, fetches Debian sid's package
//                                           into .partita/bin/nats-server
//   node scripts/ensure-nats.mjs --oldest   the oldest supported line (2.10.x, Debian 13 "trixie")
//                                           in .partita/bin/2.10/nats-server, fetched if absent
//   --fetch                                 fetch even when a supported one is there (CI: the
//                                           newest there is today); keeps the one there if the
//                                           fetch cannot run
//
//   --path                                  print the binary's path on stdout (for scripts)
//
// Prints `partita: nats-server vX.Y.Z (<path>)` on stderr.
// Fetching needs root and apt (a Debian-like system): apt's own download command runs with a
// temporary sources list, lists and cache, so the system's apt configuration and package state
// stay untouched; `dpkg-deb -x` unpacks the package and only its binary is kept. Otherwise the
// script stops with one line saying what to do. runtime/nats-server.ts resolves the binary in the
// same order.
import { execFileSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const oldest = process.argv.includes('--oldest');
const refetch = process.argv.includes('--fetch');
const printPath = process.argv.includes('--path');
const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';

// Sid keeps only its newest version and trixie only 2.10.x: the version is checked after the
// fetch rather than asked for.
const target = oldest
  ? {
      what: 'nats-server 2.10.x',
      file: join(root, '.partita', 'bin', '2.10', 'nats-server'),
      suites: [
        { uri: 'http://deb.debian.org/debian', suites: 'trixie trixie-updates' },
        { uri: 'http://security.debian.org/debian-security', suites: 'trixie-security' },
      ],
      ok: (v) => v && v[0] === 2 && v[1] === 10,
    }
  : {
      what: 'nats-server >= 2.10',
      file: join(root, '.partita', 'bin', 'nats-server'),
      suites: [{ uri: 'http://deb.debian.org/debian', suites: 'sid' }],
      ok: (v) => v && (v[0] > 2 || (v[0] === 2 && v[1] >= 10)),
    };

function version(bin) {
  try {
    const out = execFileSync(bin, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const m = /v?(\d+)\.(\d+)\.(\d+)/.exec(out);
    return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : null;
  } catch {
    return null;
  }
}

function done(bin, v) {
  const shown = bin.startsWith(root) ? relative(process.cwd(), bin) || bin : bin;
  console.error(`partita: nats-server v${v.join('.')} (${shown})`);
  if (printPath) console.log(bin);
  process.exit(0);
}

function stop(found) {
  if (usable) {
    console.error(`partita: could not fetch a newer nats-server; keeping v${usable.v.join('.')}`);
    done(usable.bin, usable.v);
  }
  const had = found ? ` (found v${found.v.join('.')} at ${found.bin})` : '';
  console.error(
    `partita: needs ${target.what}${had}: run as root on Debian or Ubuntu to fetch it into .partita/bin, or set PARTITA_NATS_SERVER to a nats-server from https://github.com/nats-io/nats-server/releases`,
  );
  process.exit(1);
}

const candidates = oldest
  ? [target.file]
  : process.env.PARTITA_NATS_SERVER
    ? [process.env.PARTITA_NATS_SERVER]
    : [target.file, 'nats-server'];
let found = null;
let usable = null;
for (const bin of candidates) {
  const v = version(bin);
  if (target.ok(v) && !refetch) done(bin, v);
  if (target.ok(v) && !usable) usable = { bin, v };
  if (v && !found) found = { bin, v };
}
if (!oldest && process.env.PARTITA_NATS_SERVER) {
  if (usable) done(usable.bin, usable.v);
  console.error(
    `partita: PARTITA_NATS_SERVER=${process.env.PARTITA_NATS_SERVER} is not ${target.what}${found ? ` (v${found.v.join('.')})` : ''}`,
  );
  process.exit(1);
}

const has = (cmd) => {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};
const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
if (!isRoot || !has('apt-get') || !has('dpkg-deb') || !existsSync(KEYRING)) stop(found);

console.error(
  `partita: fetching ${target.what} from Debian (${target.suites.map((s) => s.suites).join(', ')})`,
);
const tmp = mkdtempSync(join(tmpdir(), 'partita-nats-'));
// `process.exit` skips `finally` blocks; an exit handler still runs.
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));
try {
  for (const d of ['sources', 'prefs', 'lists/partial', 'cache/archives/partial', 'deb', 'x']) {
    mkdirSync(join(tmp, d), { recursive: true });
  }
  writeFileSync(
    join(tmp, 'sources', 'partita.sources'),
    target.suites
      .map(
        (s) => `Types: deb\nURIs: ${s.uri}\nSuites: ${s.suites}\nComponents: main\nSigned-By: ${KEYRING}\n`,
      )
      .join('\n'),
  );
  // Everything apt reads or writes for this lives in `tmp`: no system source, pin, list or cache
  // is read or changed. The sandbox user is root because `_apt` cannot write into `tmp`.
  const apt = [
    '-q',
    '-o',
    'Dir::Etc::SourceList=/dev/null',
    '-o',
    `Dir::Etc::SourceParts=${join(tmp, 'sources')}`,
    '-o',
    'Dir::Etc::Preferences=/dev/null',
    '-o',
    `Dir::Etc::PreferencesParts=${join(tmp, 'prefs')}`,
    '-o',
    `Dir::State::Lists=${join(tmp, 'lists')}`,
    '-o',
    `Dir::Cache=${join(tmp, 'cache')}`,
    '-o',
    'APT::Sandbox::User=root',
  ];
  const run = (args, cwd) =>
    execFileSync('apt-get', [...apt, ...args], { cwd, stdio: ['ignore', 'ignore', 'inherit'] });
  run(['update']);
  run(['download', 'nats-server'], join(tmp, 'deb'));
  const deb = readdirSync(join(tmp, 'deb')).find((f) => f.endsWith('.deb'));
  if (!deb) throw new Error('apt-get download left no .deb');
  execFileSync('dpkg-deb', ['-x', join(tmp, 'deb', deb), join(tmp, 'x')]);
  const bin = join(tmp, 'x', 'usr', 'sbin', 'nats-server');
  const v = version(bin);
  if (!target.ok(v)) {
    console.error(`partita: Debian's ${deb} holds nats-server v${v ? v.join('.') : '?'}, not ${target.what}`);
    process.exit(1);
  }
  mkdirSync(dirname(target.file), { recursive: true });
  // Copied beside the target, then renamed: a concurrent run never sees half a binary.
  copyFileSync(bin, `${target.file}.${process.pid}`);
  renameSync(`${target.file}.${process.pid}`, target.file);
  done(target.file, v);
} catch (err) {
  console.error(
    `partita: fetching nats-server failed: ${err instanceof Error ? err.message.split('\n')[0] : err}`,
  );
  stop(found);
}
