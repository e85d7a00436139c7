// Every NATS config in deploy/ is accepted by nats-server and maps partitions as the runtime does.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { natsServerBinary, partitionMapping } from '../runtime/index.js';

const DEPLOY = fileURLToPath(new URL('../../deploy/', import.meta.url));

/** Every `.conf` under deploy/, as paths relative to it. */
function deployConfs(dir = DEPLOY, prefix = ''): string[] {
  return readdirSync(dir).flatMap((f) => {
    if (statSync(join(dir, f)).isDirectory()) return deployConfs(join(dir, f), `${prefix}${f}/`);
    return f.endsWith('.conf') ? [`${prefix}${f}`] : [];
  });
}

it('nats-server -t accepts every deploy/**/*.conf, each maps events like the runtime and fsyncs every write', () => {
  const confs = deployConfs();
  assert.ok(confs.includes('compose/nats-1.conf'), confs.join());
  assert.ok(confs.length > 0);
  for (const f of confs) {
    const r = spawnSync(natsServerBinary(), ['-c', join(DEPLOY, f), '-t'], {
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, `${f}: ${r.stderr}`);
    const text = readFileSync(join(DEPLOY, f), 'utf8');
    const n = Number(/partition\((\d+),2\)/.exec(text)?.[1]);
    const [[from, to]] = Object.entries(partitionMapping(n)) as [[string, string]];
    assert.ok(text.includes(`"${from}": "${to}"`), `${f} maps ${from} to ${to}`);
    assert.match(text, /jetstream \{[^}]*\n\s*sync_interval: always\n[^}]*\}/, `${f}: sync_interval: always`);
  }
});
