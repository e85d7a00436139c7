#!/usr/bin/env node
// The registry this project installs from serves only some platforms' builds of a few optional
// native packages, so `npm install` writes a lockfile without them and `npm ci` then refuses it.
// This adds the missing entries, marked optional with their platform, so `npm ci` skips them.
// Run after `npm install` changes package-lock.json.
import { readFileSync, writeFileSync } from 'node:fs';

const file = new URL('../package-lock.json', import.meta.url);
const lock = JSON.parse(readFileSync(file, 'utf8'));
const pkgs = lock.packages;

function platform(name) {
  const n = name.split('/').pop();
  const os = ['android', 'darwin', 'win32', 'linux', 'freebsd'].find((o) => n.includes(o));
  const cpu = ['arm64', 'x64', 'arm', 'ia32'].find((c) => n.split('-').includes(c));
  const out = {};
  if (os) out.os = [os];
  if (cpu) out.cpu = [cpu];
  if (n.endsWith('-musl')) out.libc = ['musl'];
  return out;
}

let added = 0;
for (const [path, meta] of Object.entries(pkgs)) {
  for (const [dep, range] of Object.entries(meta.optionalDependencies ?? {})) {
    const key = `node_modules/${dep}`;
    const nested = `${path ? `${path}/` : ''}node_modules/${dep}`;
    if (pkgs[key] || pkgs[nested]) continue;
    const p = platform(dep);
    if (!p.os && !p.cpu) continue;
    pkgs[key] = {
      version: range.replace(/^[\^~=]/, ''),
      ...(meta.dev ? { dev: true } : {}),
      optional: true,
      ...p,
    };
    added++;
  }
}
const sorted = Object.fromEntries(
  Object.entries(pkgs).sort(([a], [b]) => (a === '' ? -1 : b === '' ? 1 : a < b ? -1 : 1)),
);
lock.packages = sorted;
writeFileSync(file, `${JSON.stringify(lock, null, 2)}\n`);
console.log(`complete-lockfile: added ${added} platform entries`);
