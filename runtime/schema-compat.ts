// Schema compatibility, with the modes of Confluent's registry. For JSON Schema the check is
// structural: can a reader schema accept every document a writer schema accepts? For Avro it is
// Avro's own schema resolution (avsc's `createResolver`).
import avro from 'avsc';

export const COMPAT_MODES = [
  'BACKWARD',
  'BACKWARD_TRANSITIVE',
  'FORWARD',
  'FORWARD_TRANSITIVE',
  'FULL',
  'FULL_TRANSITIVE',
  'NONE',
] as const;
/**
 * - `BACKWARD`: the new schema reads data written with the latest one (consumers upgrade first).
 * - `FORWARD`: the latest schema reads data written with the new one (producers upgrade first).
 * - `FULL`: both. `NONE`: no check. `*_TRANSITIVE`: against every earlier version, not only the latest.
 */
export type CompatMode = (typeof COMPAT_MODES)[number];
export const DEFAULT_COMPAT: CompatMode = 'BACKWARD';

export type SchemaFormat = 'json-schema' | 'avro';

export function isCompatMode(v: string): v is CompatMode {
  return (COMPAT_MODES as readonly string[]).includes(v);
}

/** A JSON Schema document (the subset the check understands; anything else is compared verbatim). */
type Json = boolean | { [k: string]: unknown };

const LOWER_BOUNDS = ['minimum', 'exclusiveMinimum', 'minLength', 'minItems', 'minProperties'] as const;
const UPPER_BOUNDS = ['maximum', 'exclusiveMaximum', 'maxLength', 'maxItems', 'maxProperties'] as const;
/** Keywords the check does not reason about: any change to them is reported. */
const OPAQUE = ['pattern', 'format', 'oneOf', 'anyOf', 'allOf', 'not', '$ref', 'if', 'then', 'else'] as const;

const label = (path: string) => (path === '' ? 'the document' : `field "${path}"`);
const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

function typesOf(s: Record<string, unknown>): string[] | undefined {
  if (typeof s.type === 'string') return [s.type];
  if (Array.isArray(s.type)) return s.type as string[];
  if (s.properties !== undefined || s.required !== undefined) return ['object'];
  return undefined;
}

function valuesOf(s: Record<string, unknown>): unknown[] | undefined {
  if (Array.isArray(s.enum)) return s.enum;
  if ('const' in s) return [s.const];
  return undefined;
}

/**
 * Reasons why `reader` may reject a document that `writer` accepts (empty: compatible).
 * Choices: a property the reader declares and an open writer does not is accepted (producers are
 * assumed to send only declared properties, as in Avro); a required property is satisfied by a
 * `default`, which validation fills in.
 */
export function jsonSchemaReadIssues(reader: Json, writer: Json, path = ''): string[] {
  const out: string[] = [];
  if (reader === true || writer === false) return out;
  if (reader === false) return [`${label(path)}: the reader rejects everything`];
  const w: Record<string, unknown> = writer === true ? {} : writer;
  const r = reader;
  const rt = typesOf(r);
  const wt = typesOf(w);
  if (rt) {
    if (!wt) out.push(`${label(path)}: type narrowed to ${rt.join('|')} from any type`);
    else {
      const lost = wt.filter((t) => !(rt.includes(t) || (t === 'integer' && rt.includes('number'))));
      if (lost.length > 0) out.push(`${label(path)}: type ${lost.join('|')} no longer accepted`);
    }
  }
  const rv = valuesOf(r);
  if (rv) {
    const wv = valuesOf(w);
    if (!wv) out.push(`${label(path)}: restricted to an enumeration`);
    else {
      const lost = wv.filter((v) => !rv.some((x) => same(x, v)));
      if (lost.length > 0) out.push(`${label(path)}: values ${JSON.stringify(lost)} no longer accepted`);
    }
  }
  for (const k of LOWER_BOUNDS) {
    const rb = r[k] as number | undefined;
    const wb = w[k] as number | undefined;
    if (rb !== undefined && (wb === undefined || wb < rb))
      out.push(`${label(path)}: ${k} raised to ${rb} (was ${wb ?? 'none'})`);
  }
  for (const k of UPPER_BOUNDS) {
    const rb = r[k] as number | undefined;
    const wb = w[k] as number | undefined;
    if (rb !== undefined && (wb === undefined || wb > rb))
      out.push(`${label(path)}: ${k} lowered to ${rb} (was ${wb ?? 'none'})`);
  }
  if (
    r.multipleOf !== undefined &&
    (w.multipleOf === undefined || (w.multipleOf as number) % (r.multipleOf as number) !== 0)
  )
    out.push(`${label(path)}: multipleOf ${String(r.multipleOf)} added`);
  for (const k of OPAQUE) {
    if (r[k] !== undefined && !same(r[k], w[k])) out.push(`${label(path)}: ${k} changed`);
  }

  // Objects.
  const rp = (r.properties ?? {}) as Record<string, Json>;
  const wp = (w.properties ?? {}) as Record<string, Json>;
  const rReq = new Set((r.required ?? []) as string[]);
  const wReq = new Set((w.required ?? []) as string[]);
  const at = (name: string) => (path === '' ? name : `${path}.${name}`);
  const hasDefault = (prop: Json | undefined) =>
    typeof prop === 'object' && prop !== null && 'default' in prop;
  for (const name of rReq) {
    // The writer guarantees the field only if it requires it without a default (validation fills
    // a default in, so data accepted by the writer may lack the field).
    if (wReq.has(name) && !hasDefault(wp[name])) continue;
    if (!hasDefault(rp[name]))
      out.push(
        `${label(at(name))}: required without a default, and data written with the other schema may lack it`,
      );
  }
  const rAdd = r.additionalProperties as Json | undefined;
  const wAdd = w.additionalProperties as Json | undefined;
  for (const [name, ws] of Object.entries(wp)) {
    const rs = rp[name];
    if (rs !== undefined) out.push(...jsonSchemaReadIssues(rs, ws, at(name)));
    else if (rAdd === false) out.push(`${label(at(name))}: removed from a closed content model`);
    else if (typeof rAdd === 'object') out.push(...jsonSchemaReadIssues(rAdd, ws, at(name)));
  }
  for (const [name, rs] of Object.entries(rp)) {
    if (name in wp) continue;
    // An open writer with a schema for extra properties: those may carry this name.
    if (typeof wAdd === 'object') out.push(...jsonSchemaReadIssues(rs, wAdd, at(name)));
  }
  if (rAdd === false && wAdd !== false)
    out.push(`${label(path)}: content model closed (additionalProperties: false)`);
  else if (typeof rAdd === 'object' && wAdd !== false && wAdd !== undefined)
    out.push(...jsonSchemaReadIssues(rAdd, wAdd, `${path}{*}`));
  else if (typeof rAdd === 'object' && wAdd === undefined)
    out.push(`${label(path)}: additional properties restricted`);

  // Arrays.
  if (r.items !== undefined && !Array.isArray(r.items)) {
    if (w.items === undefined || Array.isArray(w.items)) out.push(`${label(path)}: items restricted`);
    else out.push(...jsonSchemaReadIssues(r.items as Json, w.items as Json, `${path}[]`));
  }
  return out;
}

function avroReadIssues(reader: object, writer: object): string[] {
  try {
    avro.Type.forSchema(reader as avro.Schema).createResolver(avro.Type.forSchema(writer as avro.Schema));
    return [];
  } catch (err) {
    return [(err as Error).message];
  }
}

export interface PreviousVersion {
  version: number;
  format: SchemaFormat;
  schema: object;
}

/**
 * Checks `next` against earlier versions (oldest first) under `mode`. Returns the reasons it is
 * refused, each naming the mode, the version and the field; empty when it is compatible.
 */
export function compatibilityIssues(
  mode: CompatMode,
  format: SchemaFormat,
  next: object,
  previous: readonly PreviousVersion[],
): string[] {
  if (mode === 'NONE' || previous.length === 0) return [];
  const against = mode.endsWith('_TRANSITIVE') ? previous : previous.slice(-1);
  const backward = mode.startsWith('BACKWARD') || mode.startsWith('FULL');
  const forward = mode.startsWith('FORWARD') || mode.startsWith('FULL');
  const out: string[] = [];
  for (const prev of against) {
    if (prev.format !== format) {
      out.push(`${mode}: version ${prev.version} is ${prev.format}, the new schema is ${format}`);
      continue;
    }
    const read = (r: object, w: object) =>
      format === 'avro' ? avroReadIssues(r, w) : jsonSchemaReadIssues(r as Json, w as Json);
    if (backward)
      for (const i of read(next, prev.schema))
        out.push(`${mode}: the new schema cannot read data of version ${prev.version}: ${i}`);
    if (forward)
      for (const i of read(prev.schema, next))
        out.push(`${mode}: version ${prev.version} cannot read data of the new schema: ${i}`);
  }
  return out;
}
