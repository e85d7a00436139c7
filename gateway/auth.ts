// Bearer tokens with scopes. A route declares the scope it needs as data, in its config:
// `{ config: { scope: 'admin' } }` (default `read`; `public` for /healthz). Routes registered in
// any plugin get the check, because the hook is installed on the root instance.
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { FastifyInstance, FastifyReply, FastifyRequest, preHandlerAsyncHookHandler } from 'fastify';
import { PartitaError } from '../runtime/index.js';
import { sendError } from './http-error.js';

export type Scope = 'read' | 'admin';
export const SCOPES: readonly Scope[] = ['read', 'admin'];

export interface TokenSpec {
  /** Who holds the token: shown in audit records and used as the rate-limit key. */
  name: string;
  token: string;
  scopes: Scope[];
}

export interface Principal {
  readonly name: string;
  readonly scopes: ReadonlySet<Scope>;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The scope a route needs. @default 'read' */
    scope?: Scope | 'public';
  }
  interface FastifyRequest {
    /** The token holder; `anonymous` (all scopes) when no tokens are configured. */
    principal: Principal | null;
  }
}

const MIN_TOKEN_LENGTH = 16;

function checkSpec(t: TokenSpec, where: string): TokenSpec {
  if (typeof t.name !== 'string' || t.name === '') {
    throw new PartitaError('PARTITA_ERR_GATEWAY_CONFIG', `${where}: a token needs a "name"`);
  }
  if (typeof t.token !== 'string' || t.token.length < MIN_TOKEN_LENGTH) {
    throw new PartitaError(
      'PARTITA_ERR_GATEWAY_CONFIG',
      `${where}: token "${t.name}" must be a string of at least ${MIN_TOKEN_LENGTH} characters`,
    );
  }
  if (!Array.isArray(t.scopes) || t.scopes.length === 0) {
    throw new PartitaError('PARTITA_ERR_GATEWAY_CONFIG', `${where}: token "${t.name}" needs "scopes"`);
  }
  for (const s of t.scopes) {
    if (!SCOPES.includes(s)) {
      throw new PartitaError(
        'PARTITA_ERR_GATEWAY_CONFIG',
        `${where}: token "${t.name}" has scope "${String(s)}"; scopes are read and admin`,
      );
    }
  }
  return { name: t.name, token: t.token, scopes: [...t.scopes] };
}

/** `name:secret:scope[+scope]` entries separated by commas (the `PARTITA_TOKENS` variable). */
export function parseTokenList(text: string): TokenSpec[] {
  return text
    .split(',')
    .map((e) => e.trim())
    .filter((e) => e !== '')
    .map((entry, i) => {
      const parts = entry.split(':');
      if (parts.length !== 3) {
        throw new PartitaError(
          'PARTITA_ERR_GATEWAY_CONFIG',
          `PARTITA_TOKENS entry ${i + 1} must be name:secret:scope[+scope]`,
        );
      }
      const [name, token, scopes] = parts as [string, string, string];
      return checkSpec({ name, token, scopes: scopes.split('+') as Scope[] }, 'PARTITA_TOKENS');
    });
}

/** A JSON file: `[{"name": "dashboard", "token": "…", "scopes": ["read"]}, …]`. */
export function loadTokensFile(path: string): TokenSpec[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new PartitaError('PARTITA_ERR_GATEWAY_CONFIG', `${path}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (!Array.isArray(parsed)) {
    throw new PartitaError('PARTITA_ERR_GATEWAY_CONFIG', `${path}: expected an array of tokens`);
  }
  return parsed.map((t, i) => checkSpec(t as TokenSpec, `${path}[${i}]`));
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Finds the token's holder comparing digests in constant time, always against every token. */
export class TokenTable {
  private readonly entries: { digest: Buffer; principal: Principal }[];

  constructor(tokens: readonly TokenSpec[]) {
    this.entries = tokens.map((t) => ({
      digest: digest(t.token),
      // admin includes read.
      principal: { name: t.name, scopes: new Set<Scope>(t.scopes.includes('admin') ? SCOPES : t.scopes) },
    }));
  }

  get size(): number {
    return this.entries.length;
  }

  lookup(token: string): Principal | null {
    const d = digest(token);
    let found: Principal | null = null;
    for (const e of this.entries) if (timingSafeEqual(d, e.digest) && !found) found = e.principal;
    return found;
  }
}

const ANONYMOUS: Principal = { name: 'anonymous', scopes: new Set(SCOPES) };

/** The bearer token of a request: the Authorization header, else `?access_token=` (RFC 6750 2.3). */
export function tokenOf(req: FastifyRequest): string | null {
  const h = req.headers.authorization;
  if (typeof h === 'string') {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
    return m ? m[1]! : '';
  }
  const q = (req.query as Record<string, unknown> | undefined)?.access_token;
  return typeof q === 'string' ? q : null;
}

function deny(reply: FastifyReply, status: 401 | 403, scope: Scope, detail: string): FastifyReply {
  const err = status === 401 ? 'invalid_token' : 'insufficient_scope';
  reply.header('www-authenticate', `Bearer realm="partita", error="${err}", scope="${scope}"`);
  return sendError(reply, status === 401 ? 'PARTITA_ERR_UNAUTHORIZED' : 'PARTITA_ERR_FORBIDDEN', detail);
}

function check(req: FastifyRequest, reply: FastifyReply, table: TokenTable, scope: Scope) {
  const token = tokenOf(req);
  if (token === null) return deny(reply, 401, scope, 'send Authorization: Bearer <token>');
  const principal = token === '' ? null : table.lookup(token);
  if (!principal) return deny(reply, 401, scope, 'the token is not one the gateway knows');
  req.principal = principal;
  if (!principal.scopes.has(scope)) {
    return deny(reply, 403, scope, `${req.method} ${req.routeOptions.url} needs scope "${scope}"`);
  }
  return undefined;
}

export interface AuthFailureLimit {
  /** Failed attempts (no token, an unknown one) an address may make per window. @default 10 */
  max?: number;
  /** @default 1000 */
  windowMs?: number;
}

/**
 * Installs the check on the root instance: every route, in any plugin, needs its config's scope.
 * Call it after `installRateLimit` (which registers @fastify/rate-limit) and before registering routes.
 *
 * Failed attempts are counted per client address (@fastify/rate-limit's store, an LRU): once an
 * address used up its budget, every request from it that needs a token is a 429 with
 * `Retry-After` until the window ends, even one with a valid token, so guessing gains nothing;
 * other addresses are not affected.
 */
export function installAuth(app: FastifyInstance, table: TokenTable, failures: AuthFailureLimit = {}): void {
  app.decorateRequest('principal', null);
  const max = failures.max ?? 10;
  const windowMs = failures.windowMs ?? 1000;
  let limiter: ReturnType<FastifyInstance['createRateLimit']> | null = null;
  app.addHook('onRequest', async (req, reply) => {
    const scope = req.routeOptions.config?.scope ?? 'read';
    if (scope === 'public') return;
    if (table.size === 0) {
      req.principal = ANONYMOUS;
      return;
    }
    // Created on first use: the plugin's decorator exists once the plugin has loaded.
    // The plugin is registered by rate-limit.ts; this limiter has a store of its own, keyed by address
    // only (a failed attempt has no principal) and never allow-listed.
    limiter ??= app.createRateLimit({
      max,
      timeWindow: windowMs,
      keyGenerator: (r) => r.ip,
      allowList: () => false,
    });
    const seen = await limiter(req, { increment: false });
    if (!seen.isAllowed && seen.remaining === 0) {
      reply.header('retry-after', String(Math.max(1, seen.ttlInSeconds)));
      return sendError(
        reply,
        'PARTITA_ERR_RATE_LIMITED',
        `more than ${max} failed authentications from ${req.ip} in ${windowMs} ms; retry later`,
      );
    }
    const denied = check(req, reply, table, scope);
    if (denied && reply.statusCode === 401) await limiter(req);
    if (denied) return denied;
  });
}

/**
 * A preHandler that demands a scope, for routes that prefer it to `config.scope`:
 * `app.post('/x', { preHandler: requireScope('admin') }, handler)`.
 */
export function requireScope(scope: Scope): preHandlerAsyncHookHandler {
  return async (req, reply) => {
    if (req.principal?.scopes.has(scope)) return;
    if (!req.principal) return deny(reply, 401, scope, 'send Authorization: Bearer <token>');
    return deny(reply, 403, scope, `${req.method} ${req.routeOptions.url} needs scope "${scope}"`);
  };
}
