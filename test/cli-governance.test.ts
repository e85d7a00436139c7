// `partita schema add|list|check` and `--events-max-age`, as a user runs them.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { inStream } from '../runtime/index.js';
import { startTestNats, type TestNats, tempDir } from './helpers/nats.js';
import { PARTITA_BIN, spawnPartita } from './helpers/node-process.js';

describe('partita schema', () => {
  let nats: TestNats;
  let dir: string;
  before(async () => {
    nats = await startTestNats({ partitions: 2 });
    dir = tempDir('partita-schemas-');
  });
  after(async () => {
    await nats?.stop();
  });

  const run = (...args: string[]) =>
    spawnSync(process.execPath, [PARTITA_BIN, 'schema', ...args, '--nats', nats.url], {
      encoding: 'utf8',
      env: { ...process.env, PARTITA_OPERATOR: 'cli-test' },
    });
  const file = (name: string, schema: object) => {
    const p = join(dir, name);
    writeFileSync(p, JSON.stringify(schema));
    return p;
  };

  it('adds, lists and checks schemas, refusing an incompatible change with the field', () => {
    const v1 = file('v1.json', {
      type: 'object',
      properties: { sku: { type: 'string' } },
      required: ['sku'],
    });
    const v2 = file('v2.json', {
      type: 'object',
      properties: { sku: { type: 'string' }, qty: { type: 'integer' } },
      required: ['sku', 'qty'],
    });
    const add = run('add', 'orders', v1);
    assert.equal(add.status, 0, add.stderr);
    assert.match(add.stdout, /registered orders v1 \(json-schema, BACKWARD\)/);
    const check = run('check', 'orders', v2);
    assert.equal(check.status, 1);
    assert.match(check.stdout, /incompatible \(BACKWARD\):\n.*field "qty": required without a default/);
    const refused = run('add', 'orders', v2);
    assert.equal(refused.status, 1);
    assert.match(refused.stderr, /PARTITA_ERR_SCHEMA_INCOMPATIBLE: .*field "qty"/);
    const fwd = run('check', 'orders', v2, '--compat', 'forward');
    assert.equal(fwd.status, 0, fwd.stdout);
    assert.match(fwd.stdout, /compatible: orders would become v2 \(FORWARD\)/);
    const forced = run('add', 'orders', v2, '--compat', 'NONE');
    assert.equal(forced.status, 0, forced.stderr);
    assert.match(forced.stdout, /registered orders v2 \(json-schema, NONE\)/);
    const avsc = join(dir, 'payment.avsc');
    writeFileSync(
      avsc,
      JSON.stringify({ type: 'record', name: 'Payment', fields: [{ name: 'amount', type: 'double' }] }),
    );
    const avro = run('add', 'payments', avsc);
    assert.equal(avro.status, 0, avro.stderr);
    assert.match(avro.stdout, /registered payments v1 \(avro, BACKWARD\)/);
    const list = run('list');
    assert.equal(list.status, 0, list.stderr);
    const lines = list.stdout.trim().split('\n');
    assert.equal(lines.length, 2);
    assert.match(lines[0]!, /^orders {2}v2 {2}json-schema {2}NONE {2}\S+ {2}cli-test$/);
    assert.match(lines[1]!, /^payments {2}v1 {2}avro {2}BACKWARD/);
    const json = JSON.parse(run('list', '--json').stdout) as { type: string; version: number }[];
    assert.deepEqual(
      json.map((s) => [s.type, s.version]),
      [
        ['orders', 2],
        ['payments', 1],
      ],
    );
    const audit = spawnSync(
      process.execPath,
      [PARTITA_BIN, 'audit', '--action', 'schema-add', '--nats', nats.url],
      {
        encoding: 'utf8',
      },
    );
    assert.equal(audit.stdout.trim().split('\n').length, 3);
    assert.match(audit.stdout, /cli-test {2}schema-add orders/);
  });

  it('refuses bad usage and invalid schemas', () => {
    assert.equal(run().status, 2);
    assert.equal(run('add', 'orders').status, 2);
    assert.equal(run('add', 'orders', join(dir, 'v1.json'), '--compat', 'SIDEWAYS').status, 2);
    assert.equal(run('add', 'orders', join(dir, 'missing.json')).status, 2);
    const invalid = run(
      'add',
      'orders',
      file('bad.json', { type: 'object', properties: { a: { 'x-pii': 'encrypt' } } }),
    );
    assert.equal(invalid.status, 1);
    assert.match(invalid.stderr, /PARTITA_ERR_SCHEMA_INVALID: .*x-pii.*a: "encrypt"/);
  });
});

describe('raw-event retention', () => {
  it('partita nats --events-max-age sets the input streams max age', async () => {
    const dir = tempDir();
    const p = await spawnPartita([
      'nats',
      '--port',
      '0',
      '--data',
      dir,
      '--partitions',
      '2',
      '--events-max-age',
      '36h',
    ]);
    try {
      const nc = await connect({ servers: p.ready.nats! });
      const jsm = await jetstreamManager(nc);
      for (const s of [inStream(0), inStream(1)])
        assert.equal((await jsm.streams.info(s)).config.max_age, 36 * 3_600_000 * 1_000_000);
      await nc.close();
    } finally {
      await p.kill('SIGTERM');
    }
  });
});
