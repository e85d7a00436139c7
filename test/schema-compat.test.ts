// Compatibility modes of the schema registry, as in Confluent's: each mode accepts the changes it
// should and refuses the others with a message naming the field that broke it.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type CompatMode, compatibilityIssues, type PreviousVersion } from '../runtime/schema-compat.js';

const v1 = {
  type: 'object',
  properties: { id: { type: 'string' }, amount: { type: 'number' }, note: { type: 'string' } },
  required: ['id', 'amount'],
};
const prev = (schema: object, version = 1): PreviousVersion => ({ version, format: 'json-schema', schema });
const issues = (mode: CompatMode, next: object, previous: PreviousVersion[] = [prev(v1)]) =>
  compatibilityIssues(mode, 'json-schema', next, previous);

// Changes, and whether each mode accepts them.
const addRequired = {
  ...v1,
  properties: { ...v1.properties, email: { type: 'string' } },
  required: ['id', 'amount', 'email'],
};
const addRequiredWithDefault = {
  ...v1,
  properties: { ...v1.properties, email: { type: 'string', default: '' } },
  required: ['id', 'amount', 'email'],
};
const addOptional = { ...v1, properties: { ...v1.properties, email: { type: 'string' } } };
const removeRequired = {
  ...v1,
  properties: { id: { type: 'string' }, note: { type: 'string' } },
  required: ['id'],
};
const narrowType = { ...v1, properties: { ...v1.properties, amount: { type: 'integer' } } };
const widenType = { ...v1, properties: { ...v1.properties, note: { type: ['string', 'null'] } } };

describe('schema compatibility (JSON Schema)', () => {
  it('BACKWARD: the new schema reads old data', () => {
    assert.deepEqual(issues('BACKWARD', addOptional), []);
    assert.deepEqual(issues('BACKWARD', addRequiredWithDefault), []);
    assert.deepEqual(issues('BACKWARD', removeRequired), []);
    assert.deepEqual(issues('BACKWARD', widenType), []);
    const [added] = issues('BACKWARD', addRequired);
    assert.match(added!, /^BACKWARD: .*version 1.*field "email": required without a default/);
    assert.match(issues('BACKWARD', narrowType)[0]!, /field "amount": type number no longer accepted/);
  });

  it('FORWARD: the old schema reads new data', () => {
    assert.deepEqual(issues('FORWARD', addRequired), []);
    assert.deepEqual(issues('FORWARD', narrowType), []);
    assert.match(
      issues('FORWARD', removeRequired)[0]!,
      /^FORWARD: version 1 cannot read .*field "amount": required/,
    );
    assert.match(issues('FORWARD', widenType)[0]!, /field "note": type null no longer accepted/);
  });

  it('FULL: both directions', () => {
    assert.deepEqual(issues('FULL', addOptional), []);
    assert.match(issues('FULL', addRequired).join('\n'), /field "email"/);
    assert.match(issues('FULL', removeRequired).join('\n'), /field "amount"/);
    assert.match(issues('FULL', narrowType).join('\n'), /field "amount"/);
  });

  it('NONE: anything goes', () => {
    assert.deepEqual(issues('NONE', addRequired), []);
    assert.deepEqual(issues('NONE', { type: 'string' }), []);
  });

  it('TRANSITIVE modes check every earlier version, the plain ones only the latest', () => {
    // v1 had "n" as a string, v2 dropped it (open content), v3 brings it back as an integer: fine
    // against v2, not against v1.
    const a = { type: 'object', properties: { id: { type: 'string' }, n: { type: 'string' } } };
    const b = { type: 'object', properties: { id: { type: 'string' } } };
    const c = { type: 'object', properties: { id: { type: 'string' }, n: { type: 'integer' } } };
    const history = [prev(a, 1), prev(b, 2)];
    assert.deepEqual(issues('BACKWARD', c, history), []);
    const t = issues('BACKWARD_TRANSITIVE', c, history);
    assert.equal(t.length, 1);
    assert.match(t[0]!, /version 1: field "n": type string no longer accepted/);
    assert.match(issues('FULL_TRANSITIVE', c, history).join('\n'), /version 1/);
    assert.deepEqual(issues('FORWARD', c, history), []);
    assert.match(issues('FORWARD_TRANSITIVE', c, history)[0]!, /version 1 cannot read .*field "n"/);
    // A default in the writer does not guarantee the field: validation may have filled it in.
    const withDefault = {
      type: 'object',
      properties: { n: { type: 'integer', default: 0 } },
      required: ['n'],
    };
    const without = { type: 'object', properties: { n: { type: 'integer' } }, required: ['n'] };
    assert.match(
      issues('BACKWARD', without, [prev(withDefault)])[0]!,
      /field "n": required without a default/,
    );
  });

  it('closed content models, enums, bounds and nested fields', () => {
    const closed = { ...v1, additionalProperties: false };
    assert.match(
      issues('BACKWARD', { ...closed, properties: { id: { type: 'string' }, amount: { type: 'number' } } }, [
        prev(closed),
      ])[0]!,
      /field "note": removed from a closed content model/,
    );
    assert.match(issues('BACKWARD', closed)[0]!, /content model closed/);
    const e1 = { type: 'object', properties: { s: { enum: ['a', 'b'] } } };
    const e2 = { type: 'object', properties: { s: { enum: ['a'] } } };
    assert.match(issues('BACKWARD', e2, [prev(e1)])[0]!, /field "s": values \["b"\] no longer accepted/);
    assert.deepEqual(issues('BACKWARD', e1, [prev(e2)]), []);
    const b1 = { type: 'object', properties: { q: { type: 'integer', maximum: 10 } } };
    const b2 = { type: 'object', properties: { q: { type: 'integer', maximum: 5 } } };
    assert.match(issues('BACKWARD', b2, [prev(b1)])[0]!, /field "q": maximum lowered to 5/);
    const n1 = {
      type: 'object',
      properties: {
        customer: { type: 'object', properties: { tags: { type: 'array', items: { type: 'string' } } } },
      },
    };
    const n2 = {
      type: 'object',
      properties: {
        customer: { type: 'object', properties: { tags: { type: 'array', items: { type: 'integer' } } } },
      },
    };
    assert.match(
      issues('BACKWARD', n2, [prev(n1)])[0]!,
      /field "customer.tags\[\]": type string no longer accepted/,
    );
  });
});

describe('schema compatibility (Avro)', () => {
  const a1 = { type: 'record', name: 'Order', fields: [{ name: 'id', type: 'string' }] };
  const withDefault = { ...a1, fields: [...a1.fields, { name: 'qty', type: 'int', default: 1 }] };
  const noDefault = { ...a1, fields: [...a1.fields, { name: 'qty', type: 'int' }] };
  const avroIssues = (mode: CompatMode, next: object) =>
    compatibilityIssues(mode, 'avro', next, [{ version: 1, format: 'avro', schema: a1 }]);
  it('uses Avro schema resolution, naming the field', () => {
    assert.deepEqual(avroIssues('BACKWARD', withDefault), []);
    assert.match(avroIssues('BACKWARD', noDefault)[0]!, /BACKWARD: .*Order\.qty/);
    assert.deepEqual(avroIssues('FORWARD', noDefault), []);
    assert.deepEqual(avroIssues('FULL', withDefault), []);
    assert.match(avroIssues('FULL', noDefault).join('\n'), /qty/);
  });
  it('refuses a change of format', () => {
    assert.match(
      compatibilityIssues('BACKWARD', 'json-schema', v1, [{ version: 1, format: 'avro', schema: a1 }])[0]!,
      /version 1 is avro/,
    );
  });
});
