// Every NATS config in deploy/ is accepted by nats-server, needs no partition mapping and fsyncs.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { natsServerBinary } from '../runtime/index.js';

const DEPLOY = fileURLToPath(new URL('../../deploy/', import.meta.url));

/** Every `.conf` under deploy/, as paths relative to it. */
function deployConfs(dir = DEPLOY, prefix = ''): string[] {
  return readdirSync(dir).flatMap((f) => {
    if (statSync(join(dir, f)).isDirectory()) return deployConfs(join(dir, f), `${prefix}${f}/`);
    return f.endsWith('.conf') ? [`${prefix}${f}`] : [];
  });
}

it('nats-server -t accepts every deploy/**/*.conf, none maps events (Partita partitions in its ingest stream), each fsyncs every write', () => {
  const confs = deployConfs();
  assert.ok(confs.includes('compose/nats-1.conf'), confs.join());
  assert.ok(confs.length > 0);
  for (const f of confs) {
    const r = spawnSync(natsServerBinary(), ['-c', join(DEPLOY, f), '-t'], {
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, `${f}: ${r.stderr}`);
    const text = readFileSync(join(DEPLOY, f), 'utf8');
    assert.doesNotMatch(text, /mappings|partition\(/, `${f}: no server-side mapping`);
    assert.match(text, /jetstream \{[^}]*\n\s*sync_interval: always\n[^}]*\}/, `${f}: sync_interval: always`);
  }
});
