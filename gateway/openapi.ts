// The OpenAPI 3.1 document, built from the routes' own JSON schemas (the same schemas fastify
// validates requests with), so it cannot drift from what the gateway accepts.
import type { FastifyInstance, RouteOptions } from 'fastify';

interface Collected {
  method: string;
  url: string;
  schema: Record<string, unknown>;
  scope: string;
  websocket: boolean;
}

type Json = Record<string, unknown>;

declare module 'fastify' {
  interface FastifySchema {
    /** OpenAPI: one line. */
    summary?: string;
    description?: string;
    tags?: string[];
    /** Leave the route out of the document. */
    hide?: boolean;
    /** OpenAPI: headers of the 200 response, by name. */
    responseHeaders?: Record<string, { description: string; schema: Record<string, unknown> }>;
  }
}

function operation(r: Collected): Json {
  const s = r.schema;
  const parameters: Json[] = [];
  for (const [where, key] of [
    ['path', 'params'],
    ['query', 'querystring'],
  ] as const) {
    const props = (s[key] as Json | undefined)?.properties as Record<string, Json> | undefined;
    const required = new Set(((s[key] as Json | undefined)?.required as string[] | undefined) ?? []);
    for (const [name, schema] of Object.entries(props ?? {})) {
      const { description, ...rest } = schema;
      parameters.push({
        name,
        in: where,
        required: where === 'path' || required.has(name),
        ...(description ? { description } : {}),
        schema: rest,
      });
    }
  }
  const responses: Json = {};
  for (const [code, schema] of Object.entries((s.response as Record<string, Json> | undefined) ?? {})) {
    const description = (schema.description as string | undefined) ?? `HTTP ${code}`;
    responses[code] =
      schema.type === 'null' ? { description } : { description, content: { 'application/json': { schema } } };
  }
  if (s.responseHeaders && responses['200']) {
    responses['200'] = { ...(responses['200'] as Json), headers: s.responseHeaders };
  }
  if (r.websocket) responses['101'] = { description: 'switching to the WebSocket protocol' };
  if (r.scope !== 'public') {
    responses['401'] ??= { description: 'no or unknown bearer token (PARTITA_ERR_UNAUTHORIZED)' };
    responses['403'] ??= { description: `the token lacks scope "${r.scope}" (PARTITA_ERR_FORBIDDEN)` };
    responses['429'] ??= {
      description:
        'over the request limit (--rate-limit, off by default) or after failed authentications (PARTITA_ERR_RATE_LIMITED); see Retry-After and X-RateLimit-*',
    };
  }
  if (s.body || parameters.length > 0) {
    responses['400'] ??= { description: 'the request does not match the schema (PARTITA_ERR_BAD_REQUEST)' };
  }
  if (Object.keys(responses).length === 0) responses['200'] = { description: 'OK' };
  return {
    ...(s.summary ? { summary: s.summary } : {}),
    ...(s.description ? { description: s.description } : {}),
    ...(s.tags ? { tags: s.tags } : {}),
    ...(parameters.length > 0 ? { parameters } : {}),
    ...(s.body
      ? { requestBody: { required: true, content: { 'application/json': { schema: s.body } } } }
      : {}),
    responses,
    security: r.scope === 'public' ? [] : [{ bearer: [] }],
    'x-partita-scope': r.scope,
  };
}

/** Collects every route added after it; serves the document at `/openapi.json`. */
export function installOpenApi(app: FastifyInstance, info: { title: string; version: string }): void {
  const routes: Collected[] = [];
  app.addHook('onRoute', (r: RouteOptions & { websocket?: boolean }) => {
    const methods = Array.isArray(r.method) ? r.method : [r.method];
    for (const method of methods) {
      if (method === 'HEAD' || (r.schema as Json | undefined)?.hide) continue;
      routes.push({
        method: method.toLowerCase(),
        url: r.url,
        schema: (r.schema as Json | undefined) ?? {},
        scope: (r.config as { scope?: string } | undefined)?.scope ?? 'read',
        websocket: r.websocket === true,
      });
    }
  });
  app.get('/openapi.json', { schema: { summary: 'This document', tags: ['meta'] } }, async () => {
    const paths: Record<string, Json> = {};
    for (const r of routes) {
      const path = r.url.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
      paths[path] = { ...(paths[path] ?? {}), [r.method]: operation(r) };
    }
    return {
      openapi: '3.1.0',
      info: {
        ...info,
        description:
          'Partita gateway: state reads, Feast-compatible online features, push (SSE, WebSocket) and the live dashboard. ' +
          'With tokens configured, every route but /healthz needs `Authorization: Bearer <token>` with the scope in `x-partita-scope` ' +
          '(`admin` includes `read`); browsers may pass `?access_token=`.',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      paths,
    };
  });
}
