// The audit trail: records are stored on their own stream, read back in order, filtered by action,
// and listed by `partita audit`.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import type { NatsConnection } from '@nats-io/transport-node';
import { readAudit, recordAudit } from '../runtime/audit.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { PARTITA_BIN } from './helpers/node-process.js';

describe('audit trail', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  before(async () => {
    nats = await startTestNats({ partitions: 2 });
    nc = await nats.connect();
  });
  after(async () => {
    await nats?.stop();
  });

  it('stores who did what and when, and reads it back filtered', async () => {
    assert.deepEqual(await readAudit(nc), []);
    const a = await recordAudit(nc, {
      action: 'schema-add',
      who: 'alice',
      target: 'orders',
      details: { v: 1 },
    });
    await recordAudit(nc, { action: 'drill', who: 'bob', target: 'seed-7' });
    await recordAudit(nc, { action: 'schema-add', who: 'carol', target: 'payments' });
    assert.ok(a.seq! > 0);
    const all = await readAudit(nc);
    assert.deepEqual(
      all.map((r) => [r.action, r.who, r.target]),
      [
        ['schema-add', 'alice', 'orders'],
        ['drill', 'bob', 'seed-7'],
        ['schema-add', 'carol', 'payments'],
      ],
    );
    assert.ok(!Number.isNaN(Date.parse(all[0]!.at)));
    assert.deepEqual(all[0]!.details, { v: 1 });
    const schema = await readAudit(nc, { action: 'schema-add' });
    assert.deepEqual(
      schema.map((r) => r.who),
      ['alice', 'carol'],
    );
    assert.deepEqual(
      (await readAudit(nc, { limit: 1 })).map((r) => r.who),
      ['carol'],
    );
  });

  it('is listed by partita audit, as text and JSON', () => {
    const text = spawnSync(
      process.execPath,
      [PARTITA_BIN, 'audit', '--nats', nats.url, '--action', 'drill'],
      {
        encoding: 'utf8',
      },
    );
    assert.equal(text.status, 0, text.stderr);
    assert.match(text.stdout, /bob {2}drill seed-7/);
    assert.doesNotMatch(text.stdout, /alice/);
    const json = spawnSync(process.execPath, [PARTITA_BIN, 'audit', '--nats', nats.url, '--json'], {
      encoding: 'utf8',
    });
    assert.equal(json.status, 0, json.stderr);
    assert.equal(JSON.parse(json.stdout).length, 3);
  });
});
