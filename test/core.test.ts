// Events on NATS subjects become exactly-once actor state on one node: the end-to-end path.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Kvm } from '@nats-io/kv';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import { pack } from 'msgpackr';
import { buildGateway } from '../gateway/index.js';
import { type PartitaNode, STATE_BUCKET, startNode } from '../runtime/index.js';
import { type Account, chainStep } from './fixtures/actors/account.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';

export const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));

describe('core runtime on one node', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let node: PartitaNode;

  before(async () => {
    nats = await startTestNats({ partitions: 8 });
    nc = await nats.connect();
    node = await startNode({
      natsUrl: nats.url,
      actorsDir: FIXTURE_ACTORS,
      dataDir: join(nats.dir, 'node'),
      threads: 2,
    });
  });
  after(async () => {
    await node?.stop();
    await nats?.stop();
  });

  it('applies every event once, in order, and publishes the committed state', async () => {
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    const seenOnSubject = new Map<string, number>();
    const sub = nc.subscribe('partita.state.account.>', {
      callback: (_err, m) => {
        const change = m.json<{ key: string; seq: number; state: Account }>();
        seenOnSubject.set(change.key, Math.max(seenOnSubject.get(change.key) ?? 0, change.state.count));
      },
    });
    const expected = new Map<string, Account>();
    for (let id = 1; id <= 600; id++) {
      const key = `acct-${id % 23}`;
      const amount = (id * 7) % 100;
      const s = expected.get(key) ?? { count: 0, total: 0, chain: 0 };
      expected.set(key, { count: s.count + 1, total: s.total + amount, chain: chainStep(s.chain, id) });
      nc.publish(`events.tx.${key}`, JSON.stringify({ id, amount }));
    }
    await nc.flush();
    for (const [key, want] of expected) {
      const got = await check(
        async () => {
          const e = await kv.get(`account.${key}`);
          const v = e?.json<{ state: Account }>();
          return v && v.state.count === want.count ? v : undefined;
        },
        20_000,
        `account ${key}`,
      );
      assert.deepEqual(got.state, want, `state of ${key}`);
      await check(() => seenOnSubject.get(key) === want.count, 5000, `partita.state.account.${key}`);
    }
    sub.unsubscribe();
    const app = buildGateway({ state: kv, connected: () => true });
    const res = await app.inject({ method: 'GET', url: '/v1/actors/account/acct-3' });
    assert.equal(res.statusCode, 200);
    const body = res.json();
    assert.equal(body.actor, 'account');
    assert.equal(body.key, 'acct-3');
    assert.deepEqual(body.state, expected.get('acct-3'));
    assert.equal(typeof body.seq, 'number');
    assert.ok(!Number.isNaN(Date.parse(body.updatedAt)));
    const missing = await app.inject({ method: 'GET', url: '/v1/actors/account/nobody' });
    assert.equal(missing.statusCode, 404);
    await app.close();
  });

  it('decodes msgpack payloads and takes event time from the header', async () => {
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    const h = headers();
    h.set('Content-Type', 'application/msgpack');
    nc.publish('events.tx.mp-1', pack({ id: 1, amount: 5 }), { headers: h });
    const e = await check(
      async () => (await kv.get('account.mp-1'))?.json<{ state: Account }>(),
      10_000,
      'msgpack event',
    );
    assert.deepEqual(e.state, { count: 1, total: 5, chain: chainStep(0, 1) });
  });

  it('delivers ctx.emit to another actor, and a throwing handler leaves no trace', async () => {
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    nc.publish('events.risky.r1', JSON.stringify({}));
    nc.publish('events.risky.r1', JSON.stringify({ fail: true }));
    nc.publish('events.risky.r1', JSON.stringify({}));
    const flaky = await check(
      async () => {
        const v = (await kv.get('flaky.r1'))?.json<{ state: { ok: number; touched: number } }>();
        return v?.state.ok === 2 ? v : undefined;
      },
      10_000,
      'flaky r1',
    );
    // The failed attempts' mutations were rolled back.
    assert.deepEqual(flaky.state, { ok: 2, touched: 2 });
    const audit = await check(
      async () => {
        const v = (await kv.get('auditor.risky'))?.json<{ state: { n: number; lastOk: number } }>();
        return v?.state.n === 2 ? v : undefined;
      },
      10_000,
      'auditor',
    );
    assert.equal(audit.state.lastOk, 2);
    assert.match(
      (audit.state as { epoch?: string }).epoch ?? '',
      /^[1-9]\d*$/,
      'emitted events carry the lease epoch',
    );
    const change = (await kv.get('flaky.r1'))?.json<{ epoch: number }>();
    assert.ok((change?.epoch ?? 0) > 0, 'state changes carry the lease epoch');
  });
});
