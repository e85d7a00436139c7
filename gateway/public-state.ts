// What the gateway shows of a state change. The state bucket and `partita.state.*` carry what the
// runtime needs to move a key between nodes (open windows and timers in `sys`, the partition's key
// count, the lineage ring); public answers (state reads, push snapshots and changes) carry the
// actor's state and the documented metadata only (docs/state-changes.md). An allowlist, so a field
// the runtime adds later stays internal until it is documented here.

/** The public fields, in the order they are sent. */
export const PUBLIC_FIELDS = [
  'actor',
  'key',
  'state',
  'seq',
  'updatedAt',
  'partition',
  'epoch',
  'cause',
] as const;

export interface PublicChange {
  /** The public fields as JSON text. */
  json: string;
  seq: number;
  /** Commit time, epoch ms (NaN if absent). */
  updatedAt: number;
}

/** The public form of a state change as the bucket or subject carries it; null if it is not one. */
export function publicChange(raw: string): PublicChange | null {
  let change: unknown;
  try {
    change = JSON.parse(raw);
  } catch {
    return null;
  }
  if (typeof change !== 'object' || change === null || Array.isArray(change)) return null;
  return publicChangeOf(change as Record<string, unknown>);
}

/** The public form of a state change already parsed (as an owner's answer to a state query). */
export function publicChangeOf(c: Readonly<Record<string, unknown>>): PublicChange {
  const out: Record<string, unknown> = {};
  for (const f of PUBLIC_FIELDS) if (c[f] !== undefined) out[f] = c[f];
  return {
    json: JSON.stringify(out),
    seq: typeof c.seq === 'number' ? c.seq : 0,
    updatedAt: typeof c.updatedAt === 'string' ? Date.parse(c.updatedAt) : Number.NaN,
  };
}
