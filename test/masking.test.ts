// x-pii masking: hash (keyed HMAC, stable for joins), redact and drop, on nested properties, arrays
// and Avro fields; validation and masking compiled together.
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { describe, it } from 'node:test';
import { compileGovernance } from '../runtime/governance.js';
import { applyMask, maskPlanOf, REDACTED } from '../runtime/masking.js';
import type { SchemaVersion } from '../runtime/schema-registry.js';

const schema = {
  type: 'object',
  properties: {
    userId: { type: 'string', 'x-pii': 'hash' },
    email: { type: 'string', 'x-pii': 'redact' },
    ssn: { type: 'string', 'x-pii': 'drop' },
    address: {
      type: 'object',
      properties: { street: { type: 'string', 'x-pii': 'drop' }, city: { type: 'string' } },
    },
    contacts: {
      type: 'array',
      items: { type: 'object', properties: { phone: { type: 'string', 'x-pii': 'hash' } } },
    },
    amount: { type: 'number' },
  },
  required: ['userId', 'amount'],
};
const hmac = (s: string, v: string) => createHmac('sha256', s).update(v).digest('hex');
const version = (s: object, format: SchemaVersion['format'] = 'json-schema'): SchemaVersion => ({
  type: 'signup',
  version: 1,
  format,
  schema: s,
  compat: 'BACKWARD',
  registeredAt: '',
  who: '',
});

describe('masking', () => {
  it('hashes, redacts and drops along nested properties and arrays', () => {
    const plan = maskPlanOf('json-schema', schema)!;
    const data = {
      userId: 'u-1',
      email: 'a@b.c',
      ssn: '123',
      address: { street: 'Main 1', city: 'Oslo' },
      contacts: [{ phone: '555' }, { phone: '666' }],
      amount: 3,
    };
    const out = applyMask(plan, data, 'k1');
    assert.deepEqual(out, {
      userId: hmac('k1', 'u-1'),
      email: REDACTED,
      address: { city: 'Oslo' },
      contacts: [{ phone: hmac('k1', '555') }, { phone: hmac('k1', '666') }],
      amount: 3,
    });
    // Same secret, same hash: joins on a hashed id work across events and types.
    assert.equal((applyMask(plan, { userId: 'u-1' }, 'k1') as { userId: string }).userId, hmac('k1', 'u-1'));
    assert.notEqual(
      (applyMask(plan, { userId: 'u-1' }, 'k2') as { userId: string }).userId,
      hmac('k1', 'u-1'),
    );
  });

  it('reads x-pii on Avro fields, nested records and arrays', () => {
    const avsc = {
      type: 'record',
      name: 'Signup',
      fields: [
        { name: 'userId', type: 'string', 'x-pii': 'hash' },
        {
          name: 'profile',
          type: { type: 'record', name: 'P', fields: [{ name: 'email', type: 'string', 'x-pii': 'drop' }] },
        },
        { name: 'phones', type: { type: 'array', items: 'string' }, 'x-pii': 'redact' },
      ],
    };
    const out = applyMask(
      maskPlanOf('avro', avsc)!,
      { userId: 'u', profile: { email: 'x' }, phones: ['1'] },
      's',
    );
    assert.deepEqual(out, { userId: hmac('s', 'u'), profile: {}, phones: REDACTED });
  });

  it('validates, then masks; refuses to hash without a secret', () => {
    const govern = compileGovernance([version(schema)], 'k');
    assert.deepEqual(govern('other', { anything: 1 }), { data: { anything: 1 } });
    const bad = govern('signup', { userId: 'u' });
    assert.ok('code' in bad && bad.code === 'PARTITA_ERR_SCHEMA');
    assert.match((bad as { message: string }).message, /signup v1: .*must have required property 'amount'/);
    const ok = govern('signup', { userId: 'u', amount: 1, ssn: 'x' });
    assert.deepEqual(ok, { data: { userId: hmac('k', 'u'), amount: 1 } });
    const noSecret = compileGovernance([version(schema)], undefined)('signup', { userId: 'u', amount: 1 });
    assert.ok('code' in noSecret && noSecret.code === 'PARTITA_ERR_PII_SECRET');
  });

  it('validates Avro payloads', () => {
    const avsc = { type: 'record', name: 'O', fields: [{ name: 'n', type: 'int' }] };
    const govern = compileGovernance([version(avsc, 'avro')], 'k');
    assert.deepEqual(govern('signup', { n: 1 }), { data: { n: 1 } });
    const bad = govern('signup', { n: 'x' });
    assert.ok('code' in bad);
    assert.match((bad as { message: string }).message, /n: not "int"/);
  });
});
