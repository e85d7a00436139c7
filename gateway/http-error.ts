// One shape for every gateway error: `{"error": <PARTITA_ERR_…>, "message", "statusCode"}`.
import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify';
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
  app.setErrorHandler((err: FastifyError, _req, reply) => {
    if (err.validation) return sendError(reply, 'PARTITA_ERR_BAD_REQUEST', err.message);
    if (err instanceof PartitaError) {
      return reply.code(err.status).send({ error: err.code, message: err.message, statusCode: err.status });
    }
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status === 400) return sendError(reply, 'PARTITA_ERR_BAD_REQUEST', err.message);
    return reply.code(status).send({ error: err.code ?? 'ERROR', message: err.message, statusCode: status });
  });
  app.setNotFoundHandler((req, reply) =>
    sendError(reply, 'PARTITA_ERR_NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`),
  );
}
