// Every error Partita raises or writes into a dead letter, created once with a stable code.
// docs/errors.md documents each code and how to solve it; a test keeps the two in step.

export interface ErrorSpec {
  readonly message: string;
  /** HTTP status where the error reaches the gateway. */
  readonly status: number;
}

export const ERRORS = {
  // Dead-letter codes: written as the `Partita-Error-Code` header of `partita.dlq.<type>`.
  PARTITA_ERR_DECODE: { message: 'payload could not be decoded', status: 400 },
  PARTITA_ERR_UNKNOWN_TYPE: { message: 'no actor consumes this event type', status: 400 },
  PARTITA_ERR_UNROUTABLE: { message: 'subject does not have the shape events.<type>.<key>', status: 400 },
  PARTITA_ERR_UNMAPPED: {
    message: 'event was not partitioned: the server lacks the partition mapping',
    status: 500,
  },
  PARTITA_ERR_OVERSIZED: { message: 'payload is larger than the configured maximum', status: 413 },
  PARTITA_ERR_HANDLER: { message: 'actor handler threw on this event after all retries', status: 500 },
  PARTITA_ERR_HANDLER_TIMEOUT: {
    message: 'actor handler ran past its time limit on this event',
    status: 500,
  },
  PARTITA_ERR_KEY_TOO_LONG: { message: 'the key is longer than the maximum key length', status: 400 },
  PARTITA_ERR_STATE_TOO_LARGE: {
    message: 'the state after this event is larger than the largest state change NATS can carry',
    status: 500,
  },
  PARTITA_ERR_OUTPUT_REFUSED: {
    message: 'an output of this event (an emitted event or window result) cannot be published',
    status: 500,
  },
  PARTITA_ERR_PARTITION_MISMATCH: {
    message: "event's partition does not match the node's partition count",
    status: 500,
  },
  PARTITA_ERR_SCHEMA: { message: "event does not match its type's registered schema", status: 400 },
  PARTITA_ERR_PII_SECRET: {
    message: 'the schema hashes personal data (x-pii: hash) and no PII secret is configured',
    status: 500,
  },
  // Runtime errors.
  PARTITA_ERR_USAGE: { message: 'invalid command line', status: 400 },
  PARTITA_ERR_ACTOR_INVALID: { message: 'actor module is not a valid actor definition', status: 500 },
  PARTITA_ERR_ACTORS_NOT_FOUND: { message: 'no actor modules found', status: 500 },
  PARTITA_ERR_NATS_SERVER: { message: 'nats-server could not be started', status: 500 },
  PARTITA_ERR_NATS_UNREACHABLE: { message: 'cannot reach NATS', status: 503 },
  PARTITA_ERR_RECOVERY_MODE: {
    message: 'the recovery mode differs from the one the deployment runs with',
    status: 500,
  },
  PARTITA_ERR_PARTITIONS_CONFLICT: {
    message: 'the partition count differs from the one the deployment was created with',
    status: 500,
  },
  PARTITA_ERR_DRILL: {
    message: 'the deployment cannot be drilled',
    status: 409,
  },
  PARTITA_ERR_RETENTION_GAP: {
    message: 'the stream no longer holds events that a checkpoint needs',
    status: 500,
  },
  PARTITA_ERR_STOPPED: { message: 'the node is stopping', status: 503 },
  PARTITA_ERR_NOT_FOUND: { message: 'not found', status: 404 },
  PARTITA_ERR_BAD_REQUEST: { message: 'bad request', status: 400 },
  PARTITA_ERR_SCHEMA_INVALID: {
    message: 'the schema is not a valid JSON Schema or Avro schema',
    status: 400,
  },
  PARTITA_ERR_SCHEMA_INCOMPATIBLE: {
    message: 'the schema is not compatible with earlier versions under the compatibility mode',
    status: 409,
  },
  PARTITA_ERR_NOT_OWNER: { message: 'no running node owns the partition', status: 503 },
  PARTITA_ERR_QUERY_TOO_LARGE: {
    message: "a state query asks for more than a partition's owner answers at once",
    status: 413,
  },
  PARTITA_ERR_REPLAY: { message: 'the replay could not run', status: 500 },
  PARTITA_ERR_UNAUTHORIZED: { message: 'missing or unknown bearer token', status: 401 },
  PARTITA_ERR_FORBIDDEN: { message: "the token's scopes do not allow this route", status: 403 },
  PARTITA_ERR_RATE_LIMITED: { message: 'too many requests', status: 429 },
  PARTITA_ERR_NO_NATS: { message: 'the gateway has no NATS connection', status: 503 },
  PARTITA_ERR_GATEWAY_CONFIG: { message: 'invalid gateway configuration', status: 500 },
  PARTITA_ERR_PUSH_OVERFLOW: {
    message: 'a push client fell too far behind and was disconnected',
    status: 503,
  },
  PARTITA_ERR_HOST_NOT_ALLOWED: {
    message: 'the Host header names a host the gateway does not serve',
    status: 403,
  },
  PARTITA_ERR_ORIGIN_NOT_ALLOWED: {
    message: 'a push subscription from a web page of another origin',
    status: 403,
  },
  PARTITA_ERR_FEATURE_REQUEST_TOO_LARGE: {
    message: 'the feature request asks for more cells (entities × features) than the gateway serves at once',
    status: 413,
  },
  PARTITA_ERR_BODY_TOO_LARGE: { message: 'the request body is larger than the gateway accepts', status: 413 },
  PARTITA_ERR_URI_TOO_LONG: { message: 'a path segment of the request is too long', status: 414 },
  PARTITA_ERR_UNSUPPORTED_MEDIA_TYPE: {
    message: 'the request body has a content type the route does not take',
    status: 415,
  },
  PARTITA_ERR_HEADERS_TOO_LARGE: { message: 'the request line and headers are too large', status: 431 },
  PARTITA_ERR_INTERNAL: { message: 'the gateway failed to answer the request', status: 500 },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

/**
 * The codes an event is dead-lettered with (`Partita-Error-Code`), each marked "Dead-letter code"
 * in docs/errors.md: the label values of `partita_events_dead_lettered_total`, known in advance.
 */
export const DEAD_LETTER_CODES = [
  'PARTITA_ERR_DECODE',
  'PARTITA_ERR_UNKNOWN_TYPE',
  'PARTITA_ERR_UNROUTABLE',
  'PARTITA_ERR_UNMAPPED',
  'PARTITA_ERR_OVERSIZED',
  'PARTITA_ERR_HANDLER',
  'PARTITA_ERR_HANDLER_TIMEOUT',
  'PARTITA_ERR_KEY_TOO_LONG',
  'PARTITA_ERR_STATE_TOO_LARGE',
  'PARTITA_ERR_OUTPUT_REFUSED',
  'PARTITA_ERR_PARTITION_MISMATCH',
  'PARTITA_ERR_SCHEMA',
  'PARTITA_ERR_PII_SECRET',
] as const satisfies readonly ErrorCode[];

export class PartitaError extends Error {
  readonly code: ErrorCode;
  readonly status: number;

  constructor(code: ErrorCode, detail?: string, options?: { cause?: unknown }) {
    const spec = ERRORS[code];
    super(detail ? `${spec.message}: ${detail}` : spec.message, options);
    this.name = 'PartitaError';
    this.code = code;
    this.status = spec.status;
  }
}

export function isErrorCode(code: string): code is ErrorCode {
  return Object.hasOwn(ERRORS, code);
}
