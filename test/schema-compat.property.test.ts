// The JSON Schema compatibility check against a reference: ajv itself. Whenever the check finds no
// issue with reading `writer` data through `reader`, every document the writer accepts must be
// accepted by the reader. Documents carry only properties the writer declares (plus one
// undeclared one), the assumption the check states for open content models.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import fc from 'fast-check';
import { jsonSchemaReadIssues } from '../runtime/schema-compat.js';
import { newAjv } from '../runtime/schema-registry.js';
import { testSeed } from './helpers/check.js';

const NAMES = ['a', 'b', 'c'] as const;
const VALUES = ['x', 'yy', '', 0, 1, -3, 2.5, 100, true, false, null] as const;

const leaf = fc.oneof(
  fc.record(
    {
      type: fc.constantFrom('string', 'integer', 'number', 'boolean'),
      minimum: fc.integer({ min: -5, max: 5 }),
      maximum: fc.integer({ min: 0, max: 200 }),
      maxLength: fc.integer({ min: 0, max: 3 }),
    },
    { requiredKeys: ['type'] },
  ),
  fc.record({ enum: fc.uniqueArray(fc.constantFrom(...VALUES), { minLength: 1, maxLength: 4 }) }),
  fc.record({ type: fc.constant(['string', 'null']) }),
);

const objectSchema = fc
  .record({
    props: fc.dictionary(fc.constantFrom(...NAMES), leaf, { maxKeys: 3 }),
    required: fc.subarray([...NAMES]),
    closed: fc.boolean(),
    withDefault: fc.subarray([...NAMES]),
  })
  .map(({ props, required, closed, withDefault }) => {
    const properties: Record<string, Record<string, unknown>> = {};
    for (const [k, v] of Object.entries(props)) {
      properties[k] = { ...v };
      // A default of the property's own kind, so that filling it in keeps the document valid.
      if (withDefault.includes(k as (typeof NAMES)[number]) && 'enum' in v)
        properties[k]!.default = (v.enum as unknown[])[0];
    }
    return {
      type: 'object',
      properties,
      required: required.filter((r) => r in properties),
      ...(closed ? { additionalProperties: false } : {}),
    };
  });

it('a compatible reader accepts every document its writer accepts', () => {
  const seed = testSeed();
  console.log(`schema compatibility property seed=${seed}`);
  const ajv = newAjv();
  fc.assert(
    fc.property(
      objectSchema,
      objectSchema,
      fc.array(fc.dictionary(fc.constantFrom(...NAMES, 'z'), fc.constantFrom(...VALUES), { maxKeys: 4 }), {
        minLength: 20,
        maxLength: 40,
      }),
      (reader, writer, docs) => {
        if (jsonSchemaReadIssues(reader, writer).length > 0) return;
        const r = ajv.compile(structuredClone(reader));
        const w = ajv.compile(structuredClone(writer));
        for (const raw of docs) {
          const doc = Object.fromEntries(
            Object.entries(raw).filter(([k]) => k === 'z' || k in writer.properties),
          );
          if (!w(structuredClone(doc))) continue;
          assert.ok(
            r(structuredClone(doc)),
            `reader ${JSON.stringify(reader)} rejects ${JSON.stringify(doc)} accepted by writer ${JSON.stringify(writer)}`,
          );
        }
      },
    ),
    { seed, numRuns: 3000 },
  );
});
