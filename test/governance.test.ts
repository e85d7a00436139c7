// Governance on a real node: schema violations are dead-lettered with the validator's reason;
// x-pii fields are masked before anything downstream sees them (LMDB, the state bucket,
// partita.state.*, emitted events); schema changes apply at run time; every state change names the
// event that caused it, and the gateway lists the recent ones; schema admin over HTTP is audited.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { buildGateway } from '../gateway/index.js';
import { readAudit } from '../runtime/audit.js';
import {
  DLQ_HEADERS,
  DLQ_STREAM,
  inStream,
  openSchemaRegistry,
  type PartitaNode,
  partitionOf,
  type SchemaRegistry,
  STATE_BUCKET,
  startNode,
} from '../runtime/index.js';
import { NEEDLES, PII_SECRET, piiHmac, SIGNUP_SCHEMA, signup } from './fixtures/gov-data.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { partitionSeqs } from './helpers/partition-seqs.js';

const ACTORS = fileURLToPath(new URL('./fixtures/gov-actors/', import.meta.url));
const SECRET = PII_SECRET;
const PARTITIONS = 4;
const hmac = piiHmac;

function assertClean(what: string, text: string) {
  for (const n of NEEDLES) assert.ok(!text.includes(n), `${what} contains "${n}"`);
}

describe('governance on a node', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let node: PartitaNode;
  let registry: SchemaRegistry;
  const seenState: string[] = [];
  const seenEmitted: string[] = [];
  const dataDir = () => join(nats.dir, 'node');
  /** Input sequences of lin-1's events. */
  const seqs: number[] = [];
  let node2: PartitaNode | undefined;

  before(async () => {
    nats = await startTestNats({ partitions: PARTITIONS });
    nc = await nats.connect();
    registry = await openSchemaRegistry(nc);
    await registry.register('signup', SIGNUP_SCHEMA, { who: 'test' });
    nc.subscribe('partita.state.>', {
      callback: (_e, m) => {
        seenState.push(m.string());
      },
    });
    nc.subscribe(`events.welcome.>`, {
      callback: (_e, m) => {
        seenEmitted.push(m.string());
      },
    });
    node = await startNode({
      natsUrl: nats.url,
      actorsDir: ACTORS,
      dataDir: dataDir(),
      threads: 1,
      piiSecret: SECRET,
    });
  });
  after(async () => {
    await node2?.stop();
    await node?.stop();
    await nats?.stop();
  });

  async function dlq(): Promise<{ subject: string; code: string; error: string; data: string }[]> {
    const jsm = await jetstreamManager(nc);
    const { state } = await jsm.streams.info(DLQ_STREAM);
    const out = [];
    for (let seq = state.first_seq; seq <= state.last_seq && state.messages > 0; seq++) {
      const m = await jsm.streams.getMessage(DLQ_STREAM, { seq }).catch(() => null);
      if (!m) continue;
      out.push({
        subject: m.header?.get(DLQ_HEADERS.subject) ?? '',
        code: m.header?.get(DLQ_HEADERS.code) ?? '',
        error: m.header?.get(DLQ_HEADERS.error) ?? '',
        data: m.string(),
      });
    }
    return out;
  }

  it('dead-letters a violation with the validation error, and masks the rest everywhere', async () => {
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    for (let i = 1; i <= 40; i++) nc.publish(`events.signup.c${i % 7}`, JSON.stringify(signup(i)));
    nc.publish('events.signup.bad-1', JSON.stringify({ userId: 'user-secret-x', email: 'x@pii.example' }));
    await nc.flush();
    const bad = await check(
      async () => (await dlq()).find((d) => d.subject === 'events.signup.bad-1'),
      20_000,
      'the violation in the DLQ',
    );
    assert.equal(bad.code, 'PARTITA_ERR_SCHEMA');
    assert.match(bad.error, /signup v1: .*required property 'amount'/);
    assert.ok(!(await kv.get('customer.bad-1')), 'a violation reaches no actor');
    // Every valid event applied: 40 over 7 keys.
    let total = 0;
    await check(
      async () => {
        total = 0;
        for (let k = 0; k < 7; k++)
          total += (await kv.get(`customer.c${k}`))?.json<{ state: { count: number } }>().state.count ?? 0;
        return total === 40;
      },
      20_000,
      'all 40 signups applied',
    );
    const c1 = (await kv.get('customer.c1'))!.json<{ state: { last: Record<string, unknown> } }>().state.last;
    // c1's last event is i = 36.
    assert.deepEqual(c1, {
      userId: hmac('user-secret-36'),
      email: '[redacted]',
      address: { city: 'Oslo' },
      amount: 36,
    });
    await check(() => seenEmitted.length >= 40, 10_000, 'emitted events');
    await check(() => seenState.length >= 7, 10_000, 'state changes');
    assertClean('partita.state.*', seenState.join('\n'));
    assertClean('emitted events', seenEmitted.join('\n'));
    const kvText: string[] = [];
    for await (const k of await kv.keys()) kvText.push((await kv.get(k))?.string() ?? '');
    assertClean('the state bucket', kvText.join('\n'));
    // The bucket's stream, every message it still holds (history included).
    const jsm = await jetstreamManager(nc);
    const ks = await jsm.streams.info(`KV_${STATE_BUCKET}`);
    for (let seq = ks.state.first_seq; seq <= ks.state.last_seq; seq++) {
      const m = await jsm.streams.getMessage(`KV_${STATE_BUCKET}`, { seq }).catch(() => null);
      if (m) assertClean('the state bucket stream', m.string());
    }
  });

  it('puts a new schema version in force at run time, and refuses an incompatible one naming the field', async () => {
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    const before = node.schemaRevision();
    await assert.rejects(
      registry.register('signup', { ...SIGNUP_SCHEMA, required: ['userId', 'amount', 'phone'] }),
      (err: Error & { code?: string }) =>
        err.code === 'PARTITA_ERR_SCHEMA_INCOMPATIBLE' && /field "phone"/.test(err.message),
    );
    const v2 = await registry.register('signup', {
      ...SIGNUP_SCHEMA,
      properties: { ...SIGNUP_SCHEMA.properties, phone: { type: 'string', 'x-pii': 'drop' } },
    });
    assert.equal(v2.version, 2);
    await check(() => node.schemaRevision() > before, 10_000, 'the node to pick up version 2');
    nc.publish('events.signup.v2-1', JSON.stringify(signup(100, { phone: 'PHONE-SECRET' })));
    const got = await check(
      async () => (await kv.get('customer.v2-1'))?.json<{ state: { last: object } }>(),
      20_000,
      'v2-1',
    );
    assert.deepEqual(got.state.last, {
      userId: hmac('user-secret-100'),
      email: '[redacted]',
      address: { city: 'Oslo' },
      amount: 100,
    });
  });

  it('every state change names its cause; the gateway lists the recent contributing events', async () => {
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    const js = jetstream(nc);
    for (let i = 1; i <= 25; i++)
      await js.publish('events.signup.lin-1', JSON.stringify(signup(i)), { msgID: `m-${i}` });
    seqs.push(...(await partitionSeqs(nc, PARTITIONS, 'signup', 'lin-1', 25)));
    const change = await check(
      async () => {
        const v = (await kv.get('customer.lin-1'))?.json<{
          seq: number;
          state: { count: number };
          cause: { stream: string; seq: number; msgId: string };
          lineage: number[];
        }>();
        return v && v.state.count === 25 ? v : undefined;
      },
      20_000,
      'lin-1 at 25 events',
    );
    const stream = inStream(partitionOf('lin-1', PARTITIONS));
    assert.deepEqual(change.cause, { stream, seq: seqs[24], msgId: 'm-25' });
    assert.deepEqual(change.lineage, seqs.slice(5));
    const app = buildGateway({ state: kv, connected: () => true, nc });
    const res = await app.inject({ method: 'GET', url: '/v1/actors/customer/lin-1/lineage' });
    assert.equal(res.statusCode, 200, res.body);
    const body = res.json<{
      cause: unknown;
      events: { seq: number; msgId: string; stream: string; type: string }[];
    }>();
    assert.deepEqual(body.cause, change.cause);
    assert.deepEqual(
      body.events.map((e) => [e.seq, e.msgId, e.stream, e.type]),
      seqs
        .map((s, i) => [s, `m-${i + 1}`, stream, 'signup'])
        .slice(5)
        .reverse(),
    );
    assertClean('the lineage route', res.body);
    assert.equal(
      (await app.inject({ method: 'GET', url: '/v1/actors/customer/nobody/lineage' })).statusCode,
      404,
    );
    await app.close();
  });

  it('serves schema admin routes and audits registrations', async () => {
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    const app = buildGateway({ state: kv, connected: () => true, nc });
    // Each governance route names the scope an authorisation hook must require.
    const scopes: string[] = [];
    app.addHook('onRoute', (r) => {
      if (r.method !== 'HEAD' && (r.url.startsWith('/v1/schemas') || r.url.endsWith('/lineage')))
        scopes.push(`${r.method} ${r.url} ${(r.config as { scope?: string } | undefined)?.scope}`);
    });
    await app.ready();
    assert.deepEqual(scopes.sort(), [
      'GET /v1/actors/:actor/:key/lineage read',
      'GET /v1/schemas read',
      'GET /v1/schemas/:type read',
      'POST /v1/schemas/:type admin',
      'POST /v1/schemas/:type/check admin',
    ]);
    const list = await app.inject({ method: 'GET', url: '/v1/schemas' });
    assert.equal(list.statusCode, 200);
    assert.deepEqual(
      list.json<{ schemas: { type: string; version: number }[] }>().schemas.map((s) => [s.type, s.version]),
      [['signup', 2]],
    );
    const schema = { type: 'object', properties: { sku: { type: 'string' } }, required: ['sku'] };
    const created = await app.inject({ method: 'POST', url: '/v1/schemas/orders', payload: { schema } });
    assert.equal(created.statusCode, 201, created.body);
    assert.deepEqual(created.json(), {
      type: 'orders',
      version: 1,
      format: 'json-schema',
      compat: 'BACKWARD',
    });
    const breaking = { schema: { ...schema, properties: { sku: { type: 'integer' } } } };
    const check1 = await app.inject({ method: 'POST', url: '/v1/schemas/orders/check', payload: breaking });
    assert.equal(check1.statusCode, 200);
    assert.equal(check1.json<{ compatible: boolean }>().compatible, false);
    const refused = await app.inject({ method: 'POST', url: '/v1/schemas/orders', payload: breaking });
    assert.equal(refused.statusCode, 409);
    assert.equal(refused.json<{ error: string }>().error, 'PARTITA_ERR_SCHEMA_INCOMPATIBLE');
    assert.match(refused.json<{ message: string }>().message, /field "sku": type string no longer accepted/);
    const forced = await app.inject({
      method: 'POST',
      url: '/v1/schemas/orders',
      payload: { ...breaking, compat: 'NONE' },
    });
    assert.equal(forced.statusCode, 201);
    const versions = await app.inject({ method: 'GET', url: '/v1/schemas/orders' });
    assert.deepEqual(
      versions
        .json<{ versions: { version: number; compat: string }[] }>()
        .versions.map((v) => [v.version, v.compat]),
      [
        [1, 'BACKWARD'],
        [2, 'NONE'],
      ],
    );
    const bad = await app.inject({
      method: 'POST',
      url: '/v1/schemas/orders',
      payload: { schema: { type: 'nope' } },
    });
    assert.equal(bad.statusCode, 400);
    assert.equal(bad.json<{ error: string }>().error, 'PARTITA_ERR_SCHEMA_INVALID');
    await app.close();
    const audit = await readAudit(nc, { action: 'schema-add' });
    assert.deepEqual(
      audit.map((a) => [a.target, a.details?.version]),
      [
        ['signup', 1],
        ['signup', 2],
        ['orders', 1],
        ['orders', 2],
      ],
    );
    assert.equal(audit[0]!.who, 'test');
    assert.match(audit[2]!.who, /^gateway:/);
  });

  it('never lets a masked field into LMDB', async () => {
    await node.stop();
    // The store's files, byte for byte: states, checkpoints, outboxes (emits and dead letters).
    for (const f of readdirSync(dataDir())) {
      if (!f.startsWith('state.lmdb')) continue;
      assertClean(`LMDB file ${f}`, readFileSync(join(dataDir(), f)).toString('latin1'));
    }
  });

  it('keeps the lineage when another node restores the partition from the bucket', async () => {
    // The first node stopped (above) and released its leases; this one never owned them.
    node2 = await startNode({
      natsUrl: nats.url,
      actorsDir: ACTORS,
      dataDir: join(nats.dir, 'node2'),
      id: 'node-2',
      threads: 1,
      piiSecret: SECRET,
    });
    await jetstream(nc).publish('events.signup.lin-1', JSON.stringify(signup(26)), { msgID: 'm-26' });
    const last = (await partitionSeqs(nc, PARTITIONS, 'signup', 'lin-1', 26))[25];
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    const change = await check(
      async () => {
        const v = (await kv.get('customer.lin-1'))?.json<{
          state: { count: number };
          cause: { seq: number; msgId: string };
          lineage: number[];
        }>();
        return v && v.state.count === 26 ? v : undefined;
      },
      20_000,
      'lin-1 at 26 events on the second node',
    );
    assert.equal(change.cause.msgId, 'm-26');
    assert.deepEqual(change.lineage, [...seqs.slice(6), last]);
  });
});
