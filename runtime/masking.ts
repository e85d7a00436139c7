// Field-level masking of personal data, declared in a schema with `"x-pii": "hash" | "redact" |
// "drop"` on a property (JSON Schema) or a field (Avro). Applied to an event's payload before any
// actor, state, output or archive sees it.
import { createHmac } from 'node:crypto';
import type { SchemaFormat } from './schema-compat.js';

export const PII_KEYWORD = 'x-pii';
export const PII_ACTIONS = ['hash', 'redact', 'drop'] as const;
/**
 * - `hash`: HMAC-SHA256 of the value under the deployment's secret, as hex: equal inputs give equal
 *   outputs, so joins and keys on a hashed id still work, and without the secret it cannot be
 *   reversed by hashing guesses.
 * - `redact`: replaced by `"[redacted]"` (the field stays, its value goes).
 * - `drop`: removed.
 */
export type PiiAction = (typeof PII_ACTIONS)[number];
export const REDACTED = '[redacted]';

/** Where the masked fields are: a tree mirroring the schema, only along paths that lead to one. */
export interface MaskPlan {
  action?: PiiAction;
  props?: Record<string, MaskPlan>;
  /** Elements of an array. */
  items?: MaskPlan;
}

export function piiHash(secret: string, value: unknown): string {
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return createHmac('sha256', secret).update(text).digest('hex');
}

// Hashed fields are mostly ids that repeat (that is why they are hashed rather than dropped): a
// bounded cache of recent results saves the HMAC (measured: a third of the batch's cost without it).
const CACHE_MAX = 50_000;
let cacheSecret: string | undefined;
const cache = new Map<string, string>();

function cachedHash(secret: string, value: unknown): string {
  if (secret !== cacheSecret) {
    cache.clear();
    cacheSecret = secret;
  }
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  let h = cache.get(text);
  if (h === undefined) {
    h = createHmac('sha256', secret).update(text).digest('hex');
    if (cache.size >= CACHE_MAX) cache.clear();
    cache.set(text, h);
  }
  return h;
}

function isAction(v: unknown): v is PiiAction {
  return typeof v === 'string' && (PII_ACTIONS as readonly string[]).includes(v);
}

/** The `x-pii` values a schema declares that are not actions, as `path: value`. */
export function invalidPiiDeclarations(format: SchemaFormat, schema: unknown): string[] {
  const out: string[] = [];
  walk(format, schema, '', (path, v) => {
    if (!isAction(v)) out.push(`${path || '(root)'}: ${JSON.stringify(v)}`);
  });
  return out;
}

/** The mask plan of a schema, or null when it declares no personal data. */
export function maskPlanOf(format: SchemaFormat, schema: unknown): MaskPlan | null {
  let plan: MaskPlan | null = null;
  walk(format, schema, '', (_path, v, trail) => {
    if (!isAction(v)) return;
    plan ??= {};
    let node: MaskPlan = plan;
    for (const step of trail) {
      if (step === '[]') node = node.items ??= {};
      else {
        node.props ??= {};
        node = node.props[step] ??= {};
      }
    }
    node.action = v;
  });
  return plan;
}

/** Calls `visit` for every `x-pii` declaration with its path (`a.b[]`) and steps. */
function walk(
  format: SchemaFormat,
  schema: unknown,
  path: string,
  visit: (path: string, value: unknown, trail: string[]) => void,
  trail: string[] = [],
  depth = 0,
): void {
  if (depth > 32 || schema === null || typeof schema !== 'object') return;
  const s = schema as Record<string, unknown>;
  if (format === 'json-schema') {
    if (PII_KEYWORD in s && trail.length > 0) visit(path, s[PII_KEYWORD], trail);
    if (s.properties && typeof s.properties === 'object') {
      for (const [name, sub] of Object.entries(s.properties as Record<string, unknown>))
        walk(format, sub, path ? `${path}.${name}` : name, visit, [...trail, name], depth + 1);
    }
    if (s.items && typeof s.items === 'object' && !Array.isArray(s.items))
      walk(format, s.items, `${path}[]`, visit, [...trail, '[]'], depth + 1);
    return;
  }
  // Avro: a record's fields carry the attribute; a field's type may be a record, an array or a union.
  const avroType = (t: unknown, p: string, tr: string[], d: number) => {
    if (Array.isArray(t)) for (const u of t) avroType(u, p, tr, d + 1);
    else if (t && typeof t === 'object') {
      const o = t as Record<string, unknown>;
      if (o.type === 'array') avroType(o.items, `${p}[]`, [...tr, '[]'], d + 1);
      else walk(format, o, p, visit, tr, d + 1);
    }
  };
  if (s.type === 'record' && Array.isArray(s.fields)) {
    for (const f of s.fields as Record<string, unknown>[]) {
      const name = String(f.name);
      const p = path ? `${path}.${name}` : name;
      if (PII_KEYWORD in f) visit(p, f[PII_KEYWORD], [...trail, name]);
      avroType(f.type, p, [...trail, name], depth + 1);
    }
  }
}

/** Masks `data` in place along `plan` and returns it (a masked root is replaced). */
export function applyMask(plan: MaskPlan, data: unknown, secret: string | undefined): unknown {
  if (plan.action) return maskValue(plan.action, data, secret);
  if (plan.items && Array.isArray(data)) {
    for (let i = 0; i < data.length; i++) {
      const item = plan.items;
      if (item.action === 'drop') {
        data.splice(i, 1);
        i--;
      } else data[i] = applyMask(item, data[i], secret);
    }
  }
  if (plan.props && data !== null && typeof data === 'object' && !Array.isArray(data)) {
    let o = data as Record<string, unknown>;
    let drops = false;
    for (const name in plan.props) {
      if (!Object.hasOwn(o, name)) continue;
      const sub = plan.props[name]!;
      if (sub.action === 'drop') drops = true;
      else o[name] = applyMask(sub, o[name], secret);
    }
    // A copy without the dropped fields: `delete` turns an object into a slow dictionary
    // (measured: ten times the cost of the copy).
    if (drops) {
      const kept: Record<string, unknown> = {};
      for (const k in o) if (Object.hasOwn(o, k) && plan.props[k]?.action !== 'drop') kept[k] = o[k];
      o = kept;
    }
    return o;
  }
  return data;
}

function maskValue(action: PiiAction, value: unknown, secret: string | undefined): unknown {
  if (action === 'drop') return undefined;
  if (action === 'redact') return value === null || value === undefined ? value : REDACTED;
  if (value === null || value === undefined) return value;
  if (!secret) throw new Error('an x-pii "hash" field needs a secret (PARTITA_PII_SECRET)');
  return cachedHash(secret, value);
}

/** True when the plan hashes something (and so needs a secret). */
export function planHashes(plan: MaskPlan | null): boolean {
  if (!plan) return false;
  if (plan.action === 'hash') return true;
  if (plan.items && planHashes(plan.items)) return true;
  return Object.values(plan.props ?? {}).some(planHashes);
}
