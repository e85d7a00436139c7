// A large feature request shares the gateway: its reads are bounded in flight and its answer is
// built in slices, so other requests are answered meanwhile; above the cell limit it is refused.
// The assertions are about order (a /healthz sent during the request returns before it), never
// about how long anything took.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type KV, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { type RunningGateway, startGateway } from '../gateway/index.js';
import { STATE_BUCKET } from '../runtime/index.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { commitState } from './helpers/state.js';

const ENTITIES = 10_000;
/** Fields per actor; two actors, so 20,000 state reads and 100,000 cells per request. */
const FIELDS = 5;
const ACTORS = ['drv', 'trip'];

describe('gateway: large feature requests', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let kv: KV;
  let gw: RunningGateway;

  before(async () => {
    nats = await startTestNats({ partitions: 2 });
    nc = await nats.connect();
    kv = await new Kvm(nc).open(STATE_BUCKET);
    const state = Object.fromEntries(Array.from({ length: FIELDS }, (_, f) => [`f${f}`, f]));
    for (let i = 0; i < ENTITIES; i += 500) {
      await Promise.all(
        ACTORS.flatMap((a) =>
          Array.from({ length: 500 }, (_, j) => commitState(kv, a, `d-${i + j}`, state, i + j + 1)),
        ),
      );
    }
    gw = await startGateway({ natsUrl: nats.url, port: 0 });
  });
  after(async () => {
    await gw?.stop();
    await nats?.stop();
  });

  const features = (entities: number, extra = 0) =>
    fetch(`${gw.url}/get-online-features`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        features: [
          ...ACTORS.flatMap((a) => Array.from({ length: FIELDS }, (_, f) => `${a}:f${f}`)),
          ...Array.from({ length: extra }, (_, f) => `drv:g${f}`),
        ],
        full_feature_names: true,
        entities: { driver_id: Array.from({ length: entities }, (_, i) => `d-${i}`) },
      }),
    });

  it('answers /healthz while a request of 100,000 cells is served', async () => {
    const order: string[] = [];
    // Three at once, as a busy feature client sends them.
    const big = Promise.all(
      [0, 1, 2].map(async () => {
        const res = await features(ENTITIES);
        const body = (await res.json()) as { results: { values: unknown[]; statuses: string[] }[] };
        order.push('features');
        return { status: res.status, body };
      }),
    );
    // Once the gateway is busy with them (their reads have begun), ask for /healthz.
    let healthz = 0;
    while (!order.includes('features') && healthz < 50) {
      const res = await fetch(`${gw.url}/healthz`);
      assert.equal(res.status, 200);
      healthz++;
      order.push('healthz');
    }
    const answers = await big;
    process.stderr.write(`order: ${order.join(' ')}\n`);
    // Several /healthz went and came back while the three requests were still being served.
    assert.ok(
      order.indexOf('features') >= 3,
      `at least three /healthz answered before the first feature answer: ${order.join(' ')}`,
    );
    for (const a of answers) {
      assert.equal(a.status, 200);
      assert.equal(a.body.results.length, 2 * FIELDS + 1);
      assert.equal(a.body.results[2 * FIELDS]!.values[ENTITIES - 1], FIELDS - 1);
      assert.ok(a.body.results.every((r) => r.statuses.every((s) => s === 'PRESENT')));
    }
  });

  it('refuses a request over the cell limit with 413', async () => {
    const res = await features(ENTITIES, 1);
    assert.equal(res.status, 413);
    const body = (await res.json()) as { error: string; message: string };
    assert.equal(body.error, 'PARTITA_ERR_FEATURE_REQUEST_TOO_LARGE');
    assert.match(body.message, /10000 entities × 11 features is more than 100000 cells/);
  });
});
