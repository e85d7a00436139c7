// Bad HTTP input gets a Partita error: fastify's own refusals (415, 413, 414, 400) in the one error
// shape, keys longer than MAX_KEY_BYTES refused before anything reaches NATS, and failed
// authentications limited per client address. Through inject() on a gateway over a real bucket.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type KV, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { buildGateway } from '../gateway/index.js';
import { MAX_KEY_BYTES, STATE_BUCKET } from '../runtime/index.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { commitState } from './helpers/state.js';

const READ = 'read-token-0123456789';

function assertPartitaError(res: LightMyRequestResponse, status: number, code: string): void {
  assert.equal(res.statusCode, status, res.body);
  const body = res.json() as Record<string, unknown>;
  assert.deepEqual(Object.keys(body).sort(), ['error', 'message', 'statusCode'], res.body);
  assert.equal(body.error, code, res.body);
  assert.equal(body.statusCode, status);
  assert.equal(typeof body.message, 'string');
}

describe('gateway: bad input', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let kv: KV;
  let app: FastifyInstance;

  before(async () => {
    nats = await startTestNats({ partitions: 2 });
    nc = await nats.connect();
    kv = await new Kvm(nc).open(STATE_BUCKET);
    app = buildGateway({ state: kv, connected: () => true, nc });
  });
  after(async () => {
    await app?.close();
    await nats?.stop();
  });

  it("answers fastify's own errors in the Partita shape: 415, 413, 414, 400", async () => {
    const post = (payload: string, contentType = 'application/json') =>
      app.inject({
        method: 'POST',
        url: '/get-online-features',
        payload,
        headers: { 'content-type': contentType },
      });
    const xml = await post('<features/>', 'application/xml');
    assertPartitaError(xml, 415, 'PARTITA_ERR_UNSUPPORTED_MEDIA_TYPE');
    // What curl -d sends: the answer says what to send instead.
    const form = await post('{"features": []}', 'application/x-www-form-urlencoded');
    assertPartitaError(form, 415, 'PARTITA_ERR_UNSUPPORTED_MEDIA_TYPE');
    assert.match(
      form.json().message,
      /x-www-form-urlencoded; send the body as JSON .*content-type: application\/json/,
    );
    const huge = JSON.stringify({ features: ['a:b'], entities: { id: ['x'.repeat(5 * 1024 * 1024)] } });
    assertPartitaError(await post(huge), 413, 'PARTITA_ERR_BODY_TOO_LARGE');
    assertPartitaError(await post('{"features": ["a:b"], "entities": '), 400, 'PARTITA_ERR_BAD_REQUEST');
    assertPartitaError(await post(''), 400, 'PARTITA_ERR_BAD_REQUEST');
    // A path parameter longer than the router takes (far beyond any key).
    const long = await app.inject({ method: 'GET', url: `/v1/actors/a/${'k'.repeat(9000)}` });
    assertPartitaError(long, 414, 'PARTITA_ERR_URI_TOO_LONG');
    const badUrl = await app.inject({ method: 'GET', url: '/v1/actors/a/%E0%A4%A' });
    assertPartitaError(badUrl, 400, 'PARTITA_ERR_BAD_REQUEST');
    // The governance routes' own answers too.
    for (const url of ['/v1/schemas/nosuch', '/v1/actors/acct/nobody/lineage', '/no/such/route']) {
      assertPartitaError(await app.inject({ method: 'GET', url }), 404, 'PARTITA_ERR_NOT_FOUND');
    }
  });

  it('refuses every name longer than MAX_KEY_BYTES with 400 PARTITA_ERR_KEY_TOO_LONG', async () => {
    const long = 'k'.repeat(5000);
    const get = (url: string) => app.inject({ method: 'GET', url });
    assertPartitaError(await get(`/v1/actors/acct/${long}`), 400, 'PARTITA_ERR_KEY_TOO_LONG');
    assertPartitaError(await get(`/v1/actors/${long}/k-1`), 400, 'PARTITA_ERR_KEY_TOO_LONG');
    assertPartitaError(await get(`/v1/actors/acct/${long}/lineage`), 400, 'PARTITA_ERR_KEY_TOO_LONG');
    assertPartitaError(await get(`/v1/schemas/${long}`), 400, 'PARTITA_ERR_KEY_TOO_LONG');
    assertPartitaError(await get(`/v1/subscribe?actor=acct&key=${long}`), 400, 'PARTITA_ERR_KEY_TOO_LONG');
    assertPartitaError(await get(`/v1/subscribe?prefix=${long}`), 400, 'PARTITA_ERR_KEY_TOO_LONG');
    // One byte over, counted in UTF-8 bytes, not characters.
    const over = encodeURIComponent('é'.repeat(MAX_KEY_BYTES / 2) + 'x');
    assertPartitaError(await get(`/v1/actors/acct/${over}`), 400, 'PARTITA_ERR_KEY_TOO_LONG');
    const features = (body: unknown) =>
      app.inject({ method: 'POST', url: '/get-online-features', payload: body as object });
    const entity = await features({ features: ['acct:n'], entities: { id: ['ok', long] } });
    assertPartitaError(entity, 400, 'PARTITA_ERR_KEY_TOO_LONG');
    assert.match(entity.json().message, /entities\.id\[1\] is 5000 bytes/);
    const actor = await features({ features: [`${long}:n`], entities: { id: ['ok'] } });
    assertPartitaError(actor, 400, 'PARTITA_ERR_KEY_TOO_LONG');
  });

  it('serves keys of MAX_KEY_BYTES, those that need escaping included', async () => {
    for (const key of ['='.repeat(MAX_KEY_BYTES), 'é'.repeat(MAX_KEY_BYTES / 2), 'k'.repeat(MAX_KEY_BYTES)]) {
      await commitState(kv, 'acct', key, { n: key.length }, 1);
      const res = await app.inject({ method: 'GET', url: `/v1/actors/acct/${encodeURIComponent(key)}` });
      assert.equal(res.statusCode, 200, `${key.slice(0, 8)}…: ${res.body.slice(0, 200)}`);
      assert.equal(res.json().key, key);
      const feat = await app.inject({
        method: 'POST',
        url: '/get-online-features',
        payload: { features: ['acct:n'], entities: { id: [key] } },
      });
      assert.equal(feat.statusCode, 200, feat.body.slice(0, 200));
      assert.deepEqual(feat.json().results[1].values, [key.length]);
    }
  });

  it('answers a failed state read with 500 in the Partita shape', async () => {
    const down = await startTestNats({ partitions: 2 });
    const dkv = await new Kvm(await down.connect()).open(STATE_BUCKET);
    const gw = buildGateway({ state: dkv, connected: () => false });
    try {
      await down.server.stop('SIGKILL');
      assertPartitaError(
        await gw.inject({ method: 'GET', url: '/v1/actors/acct/k-1' }),
        500,
        'PARTITA_ERR_INTERNAL',
      );
    } finally {
      await gw.close();
      await down.stop().catch(() => undefined);
    }
  });

  it('limits failed authentications per address, and not valid tokens from other addresses', async () => {
    const secured = buildGateway({
      state: kv,
      connected: () => true,
      tokens: [{ name: 'dash', token: READ, scopes: ['read'] }],
      authFailures: { max: 10, windowMs: 60_000 },
    });
    try {
      const get = (remoteAddress: string, token?: string) =>
        secured.inject({
          method: 'GET',
          url: '/readyz',
          remoteAddress,
          headers: token ? { authorization: `Bearer ${token}` } : {},
        });
      const statuses: number[] = [];
      for (let i = 0; i < 30; i++)
        statuses.push((await get('10.0.0.1', `wrong-token-${i}-0123456789`)).statusCode);
      assert.deepEqual(statuses.slice(0, 10), Array(10).fill(401));
      assert.deepEqual(statuses.slice(10), Array(20).fill(429));
      const limited = await get('10.0.0.1');
      assertPartitaError(limited, 429, 'PARTITA_ERR_RATE_LIMITED');
      assert.ok(Number(limited.headers['retry-after']) >= 1, 'Retry-After in seconds');
      // A valid token from another address is not affected; the limited address waits, token or not.
      assert.equal((await get('10.0.0.2', READ)).statusCode, 200);
      assert.equal((await get('10.0.0.2')).statusCode, 401);
      assert.equal((await get('10.0.0.1', READ)).statusCode, 429);
      // /healthz needs no token and is never limited.
      assert.equal(
        (await secured.inject({ method: 'GET', url: '/healthz', remoteAddress: '10.0.0.1' })).statusCode,
        200,
      );
    } finally {
      await secured.close();
    }
  });
});
