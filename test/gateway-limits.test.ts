// The gateway's request limit: off by default (a local client reading key after key is never
// refused), and when configured, @fastify/rate-limit's headers with the Partita error body.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Kvm } from '@nats-io/kv';
import { type RunningGateway, startGateway } from '../gateway/index.js';
import { STATE_BUCKET } from '../runtime/index.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { commitState } from './helpers/state.js';

const KEYS = 400;
const READS = 2000;
const TOKEN = 'reader-token-0123456789abcdef';

describe('gateway: request limits', () => {
  let nats: TestNats;
  const gateways: RunningGateway[] = [];

  before(async () => {
    nats = await startTestNats({ partitions: 2 });
    const nc = await nats.connect();
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    for (let i = 0; i < KEYS; i += 100)
      await Promise.all(
        Array.from({ length: 100 }, (_, j) =>
          commitState(kv, 'meter', `m-${i + j}`, { n: i + j }, i + j + 1),
        ),
      );
    await nc.close();
  });
  after(async () => {
    for (const gw of gateways) await gw.stop();
    await nats?.stop();
  });

  it('answers 2,000 sequential reads from loopback without a 429 by default', async () => {
    const gw = await startGateway({ natsUrl: nats.url, port: 0 });
    gateways.push(gw);
    const statuses = new Map<number, number>();
    for (let i = 0; i < READS; i++) {
      const res = await fetch(`${gw.url}/v1/actors/meter/m-${i % KEYS}`);
      await res.arrayBuffer();
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      // No limiter ran: none of its headers.
      if (i === 0) assert.equal(res.headers.get('x-ratelimit-limit'), null);
    }
    assert.deepEqual([...statuses], [[200, READS]]);
  });

  it('a configured limit answers 429 with the plugin headers and the Partita error', async () => {
    const gw = await startGateway({
      natsUrl: nats.url,
      port: 0,
      // A long window: however slow the machine, the fourth request falls in the first window.
      rateLimit: { max: 3, windowMs: 60_000 },
      tokens: [{ name: 'reader', token: TOKEN, scopes: ['read'] }],
    });
    gateways.push(gw);
    const get = (path: string) =>
      fetch(`${gw.url}${path}`, { headers: { authorization: `Bearer ${TOKEN}` } });
    for (let i = 0; i < 3; i++) {
      const ok = await get(`/v1/actors/meter/m-${i}`);
      assert.equal(ok.status, 200);
      assert.equal(ok.headers.get('x-ratelimit-limit'), '3');
      assert.equal(ok.headers.get('x-ratelimit-remaining'), String(2 - i));
      assert.ok(Number(ok.headers.get('x-ratelimit-reset')) >= 1);
      await ok.arrayBuffer();
    }
    const over = await get('/v1/actors/meter/m-3');
    assert.equal(over.status, 429);
    assert.equal(over.headers.get('x-ratelimit-limit'), '3');
    assert.equal(over.headers.get('x-ratelimit-remaining'), '0');
    assert.ok(Number(over.headers.get('x-ratelimit-reset')) >= 1);
    assert.ok(Number(over.headers.get('retry-after')) >= 1, 'retry-after in seconds');
    const body = (await over.json()) as { error: string; message: string; statusCode: number };
    assert.deepEqual(Object.keys(body).sort(), ['error', 'message', 'statusCode']);
    assert.equal(body.error, 'PARTITA_ERR_RATE_LIMITED');
    assert.equal(body.statusCode, 429);
    assert.match(body.message, /more than 3 requests/);
    // /healthz is never limited; the failed-authentication limit still works beside this one.
    assert.equal((await fetch(`${gw.url}/healthz`)).status, 200);
    const noToken = await fetch(`${gw.url}/v1/actors/meter/m-0`);
    assert.equal(noToken.status, 401);
  });
});
