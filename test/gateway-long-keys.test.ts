// A long key never reaches NATS: before the gateway checked, one request with a 5,000-character
// key or entity exceeded the server's control line, the server dropped the gateway's connection,
// and every push client was sent a new snapshot. Keys up to MAX_KEY_BYTES are served over HTTP.
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { type KV, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { type RunningGateway, startGateway } from '../gateway/index.js';
import { MAX_KEY_BYTES, STATE_BUCKET } from '../runtime/index.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { openSse, type SseStream } from './helpers/sse.js';
import { commitState } from './helpers/state.js';

describe('gateway: long keys', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let kv: KV;
  let gw: RunningGateway;
  const streams: SseStream[] = [];

  before(async () => {
    nats = await startTestNats({ partitions: 2 });
    nc = await nats.connect();
    kv = await new Kvm(nc).open(STATE_BUCKET);
    gw = await startGateway({ natsUrl: nats.url, port: 0 });
    await commitState(kv, 'acct', 'a-1', { n: 1 }, 1);
  });
  after(async () => {
    for (const s of streams) await s.close();
    await gw?.stop();
    await nats?.stop();
  });

  it("refuses a long key with 400 before NATS, and the gateway's connection stays up", async () => {
    const sse = await openSse(`${gw.url}/v1/subscribe?actor=acct`);
    streams.push(sse);
    const readies = () => sse.events.filter((e) => e.event === 'ready').length;
    await check(() => readies() === 1, 5000, 'the first snapshot');

    const long = 'k'.repeat(5000);
    for (let i = 0; i < 5; i++) {
      const feat = await fetch(`${gw.url}/get-online-features`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ features: ['acct:n'], entities: { id: [long] } }),
      });
      assert.equal(feat.status, 400);
      assert.equal(((await feat.json()) as { error: string }).error, 'PARTITA_ERR_KEY_TOO_LONG');
      for (const path of [`/v1/subscribe?actor=acct&key=${long}`, `/v1/actors/acct/${long}`]) {
        const res = await fetch(`${gw.url}${path}`);
        assert.equal(res.status, 400, path.slice(0, 40));
        assert.equal(((await res.json()) as { error: string }).error, 'PARTITA_ERR_KEY_TOO_LONG');
      }
    }
    // The stream goes on: the next change arrives, and no second snapshot was sent.
    await commitState(kv, 'acct', 'a-1', { n: 2 }, 2);
    await check(
      () => sse.events.some((e) => e.event === 'changes' && e.data.changes?.some((c) => c.seq === 2)),
      5000,
      'the change after the refused requests',
    );
    assert.equal(readies(), 1, 'no new snapshot: the NATS connection was not dropped');
    assert.equal((await fetch(`${gw.url}/readyz`)).status, 200);
  });

  it('serves a key of MAX_KEY_BYTES over HTTP and push', async () => {
    const key = '='.repeat(MAX_KEY_BYTES); // escaped in the KV key as three times as many bytes
    await commitState(kv, 'acct', key, { n: 7 }, 3);
    const res = await fetch(`${gw.url}/v1/actors/acct/${encodeURIComponent(key)}`);
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as { key: string }).key, key);
    const sse = await openSse(`${gw.url}/v1/subscribe?actor=acct&key=${encodeURIComponent(key)}`);
    streams.push(sse);
    await check(() => sse.events.some((e) => e.event === 'ready'), 5000, 'the snapshot of the long key');
    assert.deepEqual(
      sse.events.filter((e) => e.event === 'snapshot').flatMap((e) => e.data.changes!.map((c) => c.key)),
      [key],
    );
  });

  it('answers headers over the parser limit in the Partita shape (431)', async () => {
    const { status, body } = await new Promise<{ status: number; body: string }>((res, rej) => {
      const req = request(`${gw.url}/healthz`, { headers: { 'x-pad': 'p'.repeat(20_000) } }, (r) => {
        let body = '';
        r.on('data', (d) => {
          body += d;
        });
        r.on('end', () => res({ status: r.statusCode ?? 0, body }));
      });
      req.on('error', rej);
      req.end();
    });
    assert.equal(status, 431);
    assert.equal((JSON.parse(body) as { error: string }).error, 'PARTITA_ERR_HEADERS_TOO_LARGE');
  });
});
