// Names from a request that end up in a NATS subject (`$KV.partita_state.<actor>.<key>`, a
// consumer's filter, a schema key) are bounded before anything reaches NATS: a longer one would
// exceed the server's control line, and the server then drops the gateway's whole connection.
// MAX_KEY_BYTES bounds keys everywhere (see runtime/subjects.ts); actor names, event types and
// filters get the same bound, so `<actor>.<key>`, escaped, always fits.
import type { FastifyInstance } from 'fastify';
import { keyTooLong, MAX_KEY_BYTES } from '../runtime/index.js';
import { sendError } from './http-error.js';

/** Query parameters that become parts of a subject. */
const SUBJECT_QUERY = ['actor', 'key', 'prefix'] as const;

/** The detail of a 400 `PARTITA_ERR_KEY_TOO_LONG` for the first too-long name, or null. */
export function tooLongName(names: Iterable<[string, unknown]>): string | null {
  for (const [what, v] of names) {
    if (typeof v === 'string' && keyTooLong(v)) {
      return `${what} is ${Buffer.byteLength(v)} bytes; at most ${MAX_KEY_BYTES} bytes of UTF-8`;
    }
  }
  return null;
}

/**
 * Refuses every request whose path parameters (`:actor`, `:key`, `:type`) or subject-forming query
 * parameters are longer than MAX_KEY_BYTES, on every route. Bodies are checked by their routes.
 */
export function installKeyLimit(app: FastifyInstance): void {
  app.addHook('preValidation', async (req, reply) => {
    const params = Object.entries((req.params ?? {}) as Record<string, unknown>);
    const query = (req.query ?? {}) as Record<string, unknown>;
    const detail = tooLongName([...params, ...SUBJECT_QUERY.map((q): [string, unknown] => [q, query[q]])]);
    if (detail) return sendError(reply, 'PARTITA_ERR_KEY_TOO_LONG', detail);
  });
}
