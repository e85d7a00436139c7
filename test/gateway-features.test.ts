// Feast wire format, auth, rate limits, request validation and the OpenAPI document, through
// inject() on a gateway that reads a real state bucket. States are written into the bucket as a
// node commits them (the gateway itself never writes).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type KV, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import type { FastifyInstance } from 'fastify';
import { buildGateway, requireScope } from '../gateway/index.js';
import { wsTextFrame } from '../gateway/push.js';
import { STATE_BUCKET } from '../runtime/index.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { commitState } from './helpers/state.js';

const READ = 'read-token-0123456789';
const ADMIN = 'admin-token-0123456789';

describe('gateway: Feast features, auth, validation', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let kv: KV;
  let app: FastifyInstance;
  const t1 = new Date('2026-01-02T03:04:05.000Z');
  const t2 = new Date('2026-01-02T03:04:05.250Z');

  before(async () => {
    nats = await startTestNats({ partitions: 4 });
    nc = await nats.connect();
    kv = await new Kvm(nc).open(STATE_BUCKET);
    await commitState(
      kv,
      'driver_stats',
      '5001',
      { conv_rate: 0.5, acc_rate: 0.9, avg_daily_trips: 308 },
      11,
      t1,
    );
    await commitState(
      kv,
      'driver_stats',
      '5002',
      { conv_rate: 0.25, acc_rate: 0.75, avg_daily_trips: 17 },
      12,
      t2,
    );
    await commitState(
      kv,
      'warehouse',
      'ams-1',
      { exceptions: 3, byReason: { stockout: 2, damaged: 1 }, last: null, tags: ['a', 'b'] },
      7,
      t1,
    );
    app = buildGateway({ state: kv, connected: () => true, nc });
  });
  after(async () => {
    await app?.close();
    await nats?.stop();
  });

  const features = (body: unknown, a = app, headers: Record<string, string> = {}) =>
    a.inject({ method: 'POST', url: '/get-online-features', payload: body as object, headers });

  it("answers Feast's own feature-server request with Feast's column-major response", async () => {
    // The request and the checks of Feast's test_python_feature_server.py::test_get_online_features.
    const request = {
      features: ['driver_stats:conv_rate', 'driver_stats:acc_rate', 'driver_stats:avg_daily_trips'],
      entities: { driver_id: [5001, 5002] },
    };
    const res = await features(request);
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers['content-type']), /^application\/json/);
    const parsed = res.json();
    assert.ok('metadata' in parsed);
    const names: string[] = parsed.metadata.feature_names;
    assert.deepEqual(names, ['driver_id', 'conv_rate', 'acc_rate', 'avg_daily_trips']);
    assert.ok('results' in parsed);
    for (const result of parsed.results) {
      assert.equal(result.statuses.length, 2);
      for (const status of result.statuses) assert.equal(status, 'PRESENT');
    }
    assert.deepEqual(parsed.results[names.indexOf('driver_id')].values, request.entities.driver_id);
    // The whole response, exactly as Feast's server prints it (MessageToDict of the proto).
    assert.deepEqual(parsed, {
      metadata: { feature_names: ['driver_id', 'conv_rate', 'acc_rate', 'avg_daily_trips'] },
      results: [
        {
          values: [5001, 5002],
          statuses: ['PRESENT', 'PRESENT'],
          event_timestamps: ['1970-01-01T00:00:00Z', '1970-01-01T00:00:00Z'],
        },
        {
          values: [0.5, 0.25],
          statuses: ['PRESENT', 'PRESENT'],
          event_timestamps: ['2026-01-02T03:04:05Z', '2026-01-02T03:04:05.250Z'],
        },
        {
          values: [0.9, 0.75],
          statuses: ['PRESENT', 'PRESENT'],
          event_timestamps: ['2026-01-02T03:04:05Z', '2026-01-02T03:04:05.250Z'],
        },
        {
          values: [308, 17],
          statuses: ['PRESENT', 'PRESENT'],
          event_timestamps: ['2026-01-02T03:04:05Z', '2026-01-02T03:04:05.250Z'],
        },
      ],
    });
  });

  it('honours full_feature_names (view__feature) and keeps the entity column name', async () => {
    const res = await features({
      features: ['driver_stats:conv_rate', 'warehouse:exceptions'],
      entities: { driver_id: ['5001'] },
      full_feature_names: true,
    });
    assert.equal(res.statusCode, 200);
    assert.deepEqual(res.json().metadata.feature_names, [
      'driver_id',
      'driver_stats__conv_rate',
      'warehouse__exceptions',
    ]);
    // An actor without that key: NOT_FOUND, null, the epoch as timestamp (as Feast does).
    assert.deepEqual(res.json().results[2], {
      values: [null],
      statuses: ['NOT_FOUND'],
      event_timestamps: ['1970-01-01T00:00:00Z'],
    });
  });

  it('uses the other Feast status words: NOT_FOUND, NULL_VALUE, INVALID; lists and nested fields', async () => {
    const res = await features({
      features: [
        'warehouse:exceptions',
        'warehouse:missing',
        'warehouse:last',
        'warehouse:byReason',
        'warehouse:byReason.stockout',
        'warehouse:tags',
      ],
      entities: { warehouse_id: ['ams-1', 'nowhere'] },
    });
    assert.equal(res.statusCode, 200);
    const body = res.json();
    assert.deepEqual(body.metadata.feature_names, [
      'warehouse_id',
      'exceptions',
      'missing',
      'last',
      'byReason',
      'byReason.stockout',
      'tags',
    ]);
    const col = (name: string) => body.results[body.metadata.feature_names.indexOf(name)];
    assert.deepEqual(col('exceptions').values, [3, null]);
    assert.deepEqual(col('exceptions').statuses, ['PRESENT', 'NOT_FOUND']);
    assert.deepEqual(col('missing').statuses, ['NULL_VALUE', 'NOT_FOUND']);
    assert.deepEqual(col('last').statuses, ['NULL_VALUE', 'NOT_FOUND']);
    assert.deepEqual(col('byReason').statuses, ['INVALID', 'NOT_FOUND']);
    assert.deepEqual(col('byReason').values, [null, null]);
    assert.deepEqual(col('byReason.stockout').values, [2, null]);
    assert.deepEqual(col('tags').values, [['a', 'b'], null]);
    assert.equal(col('missing').event_timestamps[0], '2026-01-02T03:04:05Z');
  });

  it('serves values older than the max age as OUTSIDE_MAX_AGE', async () => {
    const aged = buildGateway({ state: kv, connected: () => true, featureMaxAgeSeconds: 60 });
    await commitState(kv, 'driver_stats', 'fresh', { conv_rate: 1 }, 20);
    const res = await features(
      { features: ['driver_stats:conv_rate'], entities: { driver_id: [5001, 'fresh'] } },
      aged,
    );
    assert.deepEqual(res.json().results[1].statuses, ['OUTSIDE_MAX_AGE', 'PRESENT']);
    assert.deepEqual(res.json().results[1].values, [null, 1]);
    await aged.close();
  });

  it("answers Feast's GET /health", async () => {
    const res = await app.inject({ method: 'GET', url: '/health' });
    assert.equal(res.statusCode, 200);
    const down = buildGateway({ state: kv, connected: () => false });
    assert.equal((await down.inject({ method: 'GET', url: '/health' })).statusCode, 503);
    await down.close();
  });

  it('rejects malformed requests with 400 and a message that names the problem', async () => {
    const cases: [unknown, RegExp][] = [
      [{ features: ['driver_stats:conv_rate'] }, /body must have required property 'entities'/],
      [{ entities: { driver_id: [1] } }, /required property 'features'/],
      [
        { features: 'driver_stats:conv_rate,x', entities: { driver_id: [1] } },
        /body\.features must be array/,
      ],
      [
        { features: ['conv_rate'], entities: { driver_id: [1] } },
        /features\[0\] "conv_rate" is not a feature reference <actor>:<field>/,
      ],
      [
        { features: ['a:b'], entities: { x: [1], y: [2] } },
        /body\.entities must NOT have more than 1 properties/,
      ],
      [
        { features: ['a:b'], entities: { x: [{ nested: 1 }] } },
        /body\.entities\.x\.0 must be string,number,boolean/,
      ],
      [{ features: ['a:b'], entities: { x: [] } }, /body\.entities\.x must NOT have fewer than 1 items/],
      [
        { features: ['a:count', 'b:count'], entities: { x: [1] } },
        /"count" is requested twice; set full_feature_names/,
      ],
      [{ feature_service: 'svc', entities: { x: [1] } }, /feature_service is not supported/],
    ];
    for (const [body, message] of cases) {
      const res = await features(body);
      assert.equal(res.statusCode, 400, JSON.stringify(body));
      assert.equal(res.json().error, 'PARTITA_ERR_BAD_REQUEST');
      assert.match(res.json().message, message, JSON.stringify(body));
    }
    const notJson = await app.inject({
      method: 'POST',
      url: '/get-online-features',
      payload: '{"features": [',
      headers: { 'content-type': 'application/json' },
    });
    assert.equal(notJson.statusCode, 400);
    assert.equal(notJson.json().error, 'PARTITA_ERR_BAD_REQUEST');
    const both = await app.inject({ method: 'GET', url: '/v1/subscribe?actor=a&key=k&prefix=p' });
    assert.equal(both.statusCode, 400);
    assert.match(both.json().message, /key or prefix, not both/);
    const unknown = await app.inject({ method: 'GET', url: '/v1/subscribe?actr=a' });
    assert.equal(unknown.statusCode, 400);
    assert.match(unknown.json().message, /querystring has an unknown property "actr"/);
    const status = await app.inject({ method: 'GET', url: '/v1/subscribe?status=maybe' });
    assert.equal(status.statusCode, 400);
    assert.match(status.json().message, /querystring\.status must be boolean/);
  });

  it('reads state and answers 404 with a code for unknown keys', async () => {
    const res = await app.inject({ method: 'GET', url: '/v1/actors/warehouse/ams-1' });
    assert.equal(res.statusCode, 200);
    assert.equal(res.json().state.exceptions, 3);
    const missing = await app.inject({ method: 'GET', url: '/v1/actors/warehouse/nowhere' });
    assert.equal(missing.statusCode, 404);
    assert.equal(missing.json().error, 'PARTITA_ERR_NOT_FOUND');
    const status = await app.inject({ method: 'GET', url: '/v1/status' });
    assert.equal(status.statusCode, 200);
    assert.equal(status.json().partitions.length, 4);
  });

  it('needs a token with the right scope on every route but /healthz', async () => {
    const secured = buildGateway({
      state: kv,
      connected: () => true,
      tokens: [
        { name: 'dash', token: READ, scopes: ['read'] },
        { name: 'ops', token: ADMIN, scopes: ['admin'] },
      ],
      // This test fails on purpose more often than one address may (see the failed-auth limit test).
      authFailures: { max: 1000 },
    });
    // Routes another module adds (governance) ask for admin as data, or with the preHandler.
    secured.register(async (gov) => {
      gov.get('/v1/admin/thing', { config: { scope: 'admin' } }, async (req) => ({
        who: req.principal?.name,
      }));
      gov.get('/v1/admin/other', { preHandler: requireScope('admin') }, async () => ({ ok: true }));
    });
    const get = (url: string, token?: string) =>
      secured.inject({ method: 'GET', url, headers: token ? { authorization: `Bearer ${token}` } : {} });

    assert.equal((await get('/healthz')).statusCode, 200);
    for (const url of [
      '/v1/actors/warehouse/ams-1',
      '/metrics',
      '/readyz',
      '/openapi.json',
      '/',
      '/health',
    ]) {
      const none = await get(url);
      assert.equal(none.statusCode, 401, url);
      assert.equal(none.json().error, 'PARTITA_ERR_UNAUTHORIZED');
      assert.match(String(none.headers['www-authenticate']), /^Bearer realm="partita"/);
      const bad = await get(url, 'not-a-real-token-at-all');
      assert.equal(bad.statusCode, 401, url);
      assert.match(bad.json().message, /not one the gateway knows/);
      assert.equal((await get(url, READ)).statusCode, 200, url);
    }
    const feat = await features(
      { features: ['driver_stats:conv_rate'], entities: { driver_id: [5001] } },
      secured,
      { authorization: `Bearer ${READ}` },
    );
    assert.equal(feat.statusCode, 200);
    const malformed = await secured.inject({
      method: 'GET',
      url: '/metrics',
      headers: { authorization: READ },
    });
    assert.equal(malformed.statusCode, 401);

    for (const url of ['/v1/admin/thing', '/v1/admin/other']) {
      const wrong = await get(url, READ);
      assert.equal(wrong.statusCode, 403, url);
      assert.equal(wrong.json().error, 'PARTITA_ERR_FORBIDDEN');
      assert.match(wrong.json().message, /needs scope "admin"/);
      assert.match(String(wrong.headers['www-authenticate']), /insufficient_scope/);
      assert.equal((await get(url, ADMIN)).statusCode, 200, url);
    }
    assert.equal((await get('/v1/admin/thing', ADMIN)).json().who, 'ops');
    // Browsers (the dashboard, EventSource, WebSocket) pass the token in the query.
    assert.equal((await get(`/v1/actors/warehouse/ams-1?access_token=${READ}`)).statusCode, 200);
    const page = await get(`/?access_token=${READ}`);
    assert.match(page.body, new RegExp(`app\\.js\\?access_token=${READ}`));
    await secured.close();
  });

  it('rate-limits per token with 429 and Retry-After', async () => {
    const limited = buildGateway({
      state: kv,
      connected: () => true,
      // A long window: a stall between requests must not start a new one.
      rateLimit: { max: 3, windowMs: 60_000 },
      tokens: [
        { name: 'a', token: READ, scopes: ['read'] },
        { name: 'b', token: ADMIN, scopes: ['read'] },
      ],
    });
    const get = (token: string) =>
      limited.inject({ method: 'GET', url: '/readyz', headers: { authorization: `Bearer ${token}` } });
    for (let i = 0; i < 3; i++) assert.equal((await get(READ)).statusCode, 200);
    const over = await get(READ);
    assert.equal(over.statusCode, 429);
    assert.equal(over.json().error, 'PARTITA_ERR_RATE_LIMITED');
    assert.ok(Number(over.headers['retry-after']) >= 1);
    // Another token has a bucket of its own; /healthz is never limited.
    assert.equal((await get(ADMIN)).statusCode, 200);
    assert.equal((await limited.inject({ method: 'GET', url: '/healthz' })).statusCode, 200);
    await limited.close();
  });

  it('serves an OpenAPI document built from the route schemas', async () => {
    const res = await app.inject({ method: 'GET', url: '/openapi.json' });
    assert.equal(res.statusCode, 200);
    const doc = res.json();
    assert.equal(doc.openapi, '3.1.0');
    const op = doc.paths['/get-online-features'].post;
    assert.deepEqual(op.requestBody.content['application/json'].schema.required, ['entities']);
    assert.ok(op.responses['200'].content['application/json'].schema.properties.results);
    assert.equal(op['x-partita-scope'], 'read');
    assert.deepEqual(doc.paths['/healthz'].get.security, []);
    assert.ok(
      doc.paths['/v1/actors/{actor}/{key}'].get.parameters.some((p: { name: string }) => p.name === 'key'),
    );
    assert.ok(doc.paths['/v1/ws'].get.responses['101']);
    assert.ok(doc.paths['/v1/subscribe'].get.parameters.some((p: { name: string }) => p.name === 'prefix'));
    // The routes that read state say which source answered.
    for (const read of [op, doc.paths['/v1/actors/{actor}/{key}'].get]) {
      assert.deepEqual(read.responses['200'].headers['Partita-State-Source'].schema.enum, [
        'owner',
        'export',
        'owner, export',
      ]);
    }
  });
});

describe('WebSocket frames written by the push hub', () => {
  it('encodes the three payload-length forms of RFC 6455', () => {
    for (const len of [0, 125, 126, 65_535, 65_536, 70_000]) {
      const f = wsTextFrame('x'.repeat(len));
      assert.equal(f[0], 0x81, 'FIN, text');
      const [head, coded] =
        len < 126 ? [2, f[1]] : len < 65_536 ? [4, f.readUInt16BE(2)] : [10, Number(f.readBigUInt64BE(2))];
      assert.equal(f[1]! & 0x80, 0, 'unmasked');
      assert.equal(coded, len);
      assert.equal(f.length, head + len);
    }
    assert.equal(wsTextFrame('ü').subarray(2).toString(), 'ü');
    assert.equal(wsTextFrame('ü')[1], 2, 'length in bytes');
  });
});
