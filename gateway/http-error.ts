// One shape for every gateway error: `{"error": <PARTITA_ERR_…>, "message", "statusCode"}`, fastify's
// own errors (content type, body size, JSON syntax, URL length) and the HTTP parser's included.
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ERRORS, type ErrorCode, PartitaError } from '../runtime/index.js';

export interface ErrorBody {
  error: ErrorCode;
  message: string;
  statusCode: number;
}

export function errorBody(code: ErrorCode, detail?: string): ErrorBody {
  const spec = ERRORS[code];
  return {
    error: code,
    message: detail ? `${spec.message}: ${detail}` : spec.message,
    statusCode: spec.status,
  };
}

export function sendError(reply: FastifyReply, code: ErrorCode, detail?: string): FastifyReply {
  const body = errorBody(code, detail);
  return reply.code(body.statusCode).send(body);
}

/** The JSON schema of an error response, for the OpenAPI document. */
export const ERROR_SCHEMA = {
  type: 'object',
  properties: {
    error: { type: 'string', description: 'a PARTITA_ERR_… code, see docs/errors.md' },
    message: { type: 'string' },
    statusCode: { type: 'integer' },
  },
} as const;

/**
 * Validation failures become 400 `PARTITA_ERR_BAD_REQUEST` naming the field (`body.features must
 * be array`); a `PartitaError` keeps its code and status; anything else is a 500.
 */
export function installErrorHandler(app: FastifyInstance): void {
  app.setSchemaErrorFormatter((errors, dataVar) => {
    const parts = errors.map((e) => {
      const at = `${dataVar}${e.instancePath.replaceAll('/', '.')}`;
      if (e.keyword === 'additionalProperties') {
        return `${at} has an unknown property "${String(e.params.additionalProperty)}"`;
      }
      if (e.keyword === 'enum') {
        return `${at} must be one of ${(e.params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
      }
      return `${at} ${e.message ?? 'is invalid'}`;
    });
    return new Error(parts.join('; '));
  });
  app.setErrorHandler((err: FastifyError, req, reply) => {
    if (err.validation) return sendError(reply, 'PARTITA_ERR_BAD_REQUEST', err.message);
    if (err instanceof PartitaError) {
      return reply.code(err.status).send({ error: err.code, message: err.message, statusCode: err.status });
    }
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    const code = FASTIFY_STATUS_CODES[status];
    // curl -d sends application/x-www-form-urlencoded: say what to send instead.
    if (status === 415) {
      const sent = req.headers['content-type'] ?? 'none';
      return sendError(reply, 'PARTITA_ERR_UNSUPPORTED_MEDIA_TYPE', `${sent}; ${JSON_HINT}`);
    }
    if (code) return sendError(reply, code, err.message);
    // Another 4xx of fastify's (rare: 405-like cases): keep its status, in the Partita shape.
    return reply
      .code(status)
      .send({ error: 'PARTITA_ERR_BAD_REQUEST', message: err.message, statusCode: status });
  });
  app.setNotFoundHandler((req, reply) =>
    sendError(reply, 'PARTITA_ERR_NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`),
  );
}

const JSON_HINT =
  "send the body as JSON with the header Content-Type: application/json (curl: -H 'content-type: application/json')";

/** The Partita code of each status fastify's own errors come with. */
const FASTIFY_STATUS_CODES: Partial<Record<number, ErrorCode>> = {
  400: 'PARTITA_ERR_BAD_REQUEST', // malformed JSON, an empty JSON body
  404: 'PARTITA_ERR_NOT_FOUND',
  413: 'PARTITA_ERR_BODY_TOO_LARGE',
  414: 'PARTITA_ERR_URI_TOO_LONG',
  415: 'PARTITA_ERR_UNSUPPORTED_MEDIA_TYPE',
  500: 'PARTITA_ERR_INTERNAL',
};

/**
 * fastify's `frameworkErrors` option: the router's own refusals (a path parameter longer than
 * `maxParamLength`, a URL that does not decode), which bypass the error handler otherwise.
 */
export function frameworkErrors(err: FastifyError, _req: FastifyRequest, reply: FastifyReply): void {
  const code =
    err.code === 'FST_ERR_MAX_PARAM_LENGTH' ? 'PARTITA_ERR_URI_TOO_LONG' : 'PARTITA_ERR_BAD_REQUEST';
  sendError(reply, code, err.message);
}

/**
 * fastify's `clientErrorHandler` option: what the HTTP parser refuses before fastify sees a request
 * (headers over Node's 16 KB, a malformed request line), answered in the same shape.
 */
export function clientErrorHandler(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const body =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? errorBody('PARTITA_ERR_HEADERS_TOO_LARGE')
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? { ...errorBody('PARTITA_ERR_BAD_REQUEST', 'the request was not received in time'), statusCode: 408 }
        : errorBody('PARTITA_ERR_BAD_REQUEST', 'the HTTP request could not be parsed');
  const json = JSON.stringify(body);
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${body.statusCode} ${STATUS_CODES[body.statusCode]}\r\n` +
        `Content-Length: ${Buffer.byteLength(json)}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${json}`,
    );
  }
  socket.destroy(err);
}
