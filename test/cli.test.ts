// The command line: usage errors, ready lines, --actors with TypeScript modules, and a clean stop.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Kvm } from '@nats-io/kv';
import { findActorFiles, loadActors, STATE_BUCKET } from '../runtime/index.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats, tempDir } from './helpers/nats.js';
import { PARTITA_BIN, spawnPartita } from './helpers/node-process.js';

const TS_ACTORS = fileURLToPath(new URL('../../test/fixtures/ts-actors/', import.meta.url));

describe('partita command line', () => {
  let nats: TestNats;
  before(async () => {
    nats = await startTestNats({ partitions: 4 });
  });
  after(async () => {
    await nats?.stop();
  });

  it('exits 2 with usage on a bad command line', () => {
    for (const args of [
      [],
      ['frobnicate'],
      ['node', '--bogus'],
      ['node', '--threads', 'many'],
      ['node', '--handler-timeout', 'forever'],
      ['node', '--recovery', 'snapshots'],
    ]) {
      const r = spawnSync(process.execPath, [PARTITA_BIN, ...args], { encoding: 'utf8' });
      assert.equal(r.status, 2, `partita ${args.join(' ')}: ${r.stderr}`);
      assert.match(
        r.stdout + r.stderr,
        /usage|must be a whole number|must be a duration|must be bucket or changelog/,
      );
    }
  });

  it('exits 1 with the error code when actors are invalid', () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'bad.mjs'), 'export default { name: "bad" };\n');
    const r = spawnSync(
      process.execPath,
      [PARTITA_BIN, 'node', '--nats', nats.url, '--actors', dir, '--data', join(dir, 'd')],
      {
        encoding: 'utf8',
        timeout: 20_000,
      },
    );
    assert.equal(r.status, 1);
    assert.match(r.stderr, /PARTITA_ERR_ACTOR_INVALID/);
    assert.match(r.stderr, /`events` must be a non-empty list/);
  });

  it('loads only .js, .mjs and .ts modules from --actors, TypeScript without a build', async () => {
    const dir = tempDir();
    copyFileSync(join(TS_ACTORS, 'greeter.ts'), join(dir, 'greeter.ts'));
    writeFileSync(
      join(dir, 'counter.mjs'),
      "export default { name: 'counter', events: ['hello'], initial: () => ({ n: 0 }), handle(s) { s.n++; } };\n",
    );
    writeFileSync(join(dir, 'notes.txt'), 'not an actor');
    writeFileSync(join(dir, 'types.d.ts'), 'export {};');
    mkdirSync(join(dir, 'nested'));
    writeFileSync(join(dir, 'nested', 'x.js'), 'throw new Error("must not be loaded")');
    const files = findActorFiles(dir).map((f) => f.slice(dir.length + 1));
    assert.deepEqual(files, ['counter.mjs', 'greeter.ts']);
    const actors = await loadActors(findActorFiles(dir));
    assert.deepEqual(
      actors.map((a) => [a.name, a.guarantee]),
      [
        ['counter', 'exactly-once'],
        ['greeter', 'exactly-once'],
      ],
    );

    const node = await spawnPartita([
      'node',
      '--nats',
      nats.url,
      '--actors',
      dir,
      '--data',
      join(dir, 'data'),
      '--id',
      'ts-node',
      '--handler-timeout',
      '2s',
    ]);
    try {
      assert.equal(node.ready.node, 'ts-node');
      assert.match(node.ready.metrics ?? '', /^http:\/\/127\.0\.0\.1:\d+$/);
      const nc = await nats.connect();
      nc.publish('events.hello.world', JSON.stringify({ name: 'Ada' }));
      const kv = await new Kvm(nc).open(STATE_BUCKET);
      const v = await check(
        async () => (await kv.get('greeter.world'))?.json<{ state: unknown }>(),
        20_000,
        'greeter state',
      );
      assert.deepEqual(v.state, { greetings: 1, last: 'Ada' });
      const metrics = await (await fetch(`${node.ready.metrics}/metrics`)).text();
      assert.match(metrics, /partita_events_applied_total\{partition="\d+"\} 1/);
      const health = await fetch(`${node.ready.metrics}/healthz`);
      assert.equal(health.status, 200);
    } finally {
      assert.equal(await node.kill('SIGTERM'), 0, 'SIGTERM stops cleanly with exit code 0');
    }
  });

  it('status --json names the owner of every partition', async () => {
    const dir = tempDir();
    const node = await spawnPartita([
      'node',
      '--nats',
      nats.url,
      '--data',
      join(dir, 'data'),
      '--id',
      'owner-1',
    ]);
    try {
      const r = spawnSync(process.execPath, [PARTITA_BIN, 'status', '--json', '--nats', nats.url], {
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, r.stderr);
      const s = JSON.parse(r.stdout) as { partitions: { partition: number; owner: string | null }[] };
      assert.equal(s.partitions.length, 4);
      for (const p of s.partitions) assert.equal(p.owner, 'owner-1');
    } finally {
      await node.kill('SIGTERM');
    }
  });

  it('dev --demo serves state that changes as the demo publishes', async () => {
    const dir = tempDir();
    const dev = await spawnPartita(
      ['dev', '--demo', '--data', dir, '--port', '0', '--nats-port', '0'],
      {},
      30_000,
    );
    try {
      const gw = dev.ready.gateway!;
      assert.match(gw, /^http:\/\/127\.0\.0\.1:\d+$/);
      assert.match(dev.ready.nats ?? '', /^nats:\/\//);
      const read = async () => {
        const r = await fetch(`${gw}/v1/actors/campaign/cmp-1`);
        return r.status === 200
          ? ((await r.json()) as { seq: number; state: { impressions: number } })
          : undefined;
      };
      const first = await check(read, 20_000, 'demo state');
      const later = await check(
        async () => {
          const v = await read();
          return v && v.seq > first.seq ? v : undefined;
        },
        20_000,
        'a later demo state',
      );
      assert.ok(later.state.impressions >= first.state.impressions);
      const ready = await fetch(`${gw}/readyz`);
      assert.equal(ready.status, 200);
    } finally {
      assert.equal(await dev.kill('SIGINT'), 0);
    }
  });
});
