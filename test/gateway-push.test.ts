// Push over WebSocket and SSE from a listening gateway: snapshot first, then every committed
// change, filtered per client; a client that stops reading is coalesced and never delays others.
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type KV, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { WebSocket } from 'ws';
import { type RunningGateway, startGateway } from '../gateway/index.js';
import { STATE_BUCKET, startNatsServer } from '../runtime/index.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { openSse } from './helpers/sse.js';
import { commitState } from './helpers/state.js';

interface Change {
  actor: string;
  key: string;
  seq: number;
  state: Record<string, unknown>;
}
interface Frame {
  type: string;
  changes?: Change[];
  snapshot?: number;
}

/** A WebSocket client that records every frame. */
class WsClient {
  readonly frames: Frame[] = [];
  readonly ws: WebSocket;
  readonly opened: Promise<void>;
  closeCode: number | null = null;

  constructor(url: string) {
    this.ws = new WebSocket(url);
    this.ws.on('message', (d) => this.frames.push(JSON.parse(String(d)) as Frame));
    this.ws.on('close', (code) => {
      this.closeCode = code;
    });
    this.opened = new Promise((res, rej) => {
      this.ws.once('open', () => res());
      this.ws.once('error', rej);
    });
  }

  get ready(): boolean {
    return this.frames.some((f) => f.type === 'ready');
  }
  /** Changes in arrival order, snapshot included. */
  changes(type?: 'snapshot' | 'changes'): Change[] {
    return this.frames.filter((f) => (type ? f.type === type : f.changes)).flatMap((f) => f.changes ?? []);
  }
  latest(actor: string, key: string): Change | undefined {
    return this.changes()
      .filter((c) => c.actor === actor && c.key === key)
      .at(-1);
  }
  /** Stops reading: the kernel buffers fill, then the gateway's view of the socket. */
  pause(): void {
    (this.ws as unknown as { _socket: Socket })._socket.pause();
  }
  resume(): void {
    (this.ws as unknown as { _socket: Socket })._socket.resume();
  }
  close(): void {
    this.ws.terminate();
  }
}

async function metric(gw: RunningGateway, name: string): Promise<number> {
  const res = await gw.app.inject({ method: 'GET', url: '/metrics' });
  const line = res.body.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{}`));
  return line ? Number(line.split(' ').pop()) : 0;
}

describe('gateway push (WebSocket, SSE)', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let kv: KV;
  let gw: RunningGateway;
  let wsBase: string;
  const clients: WsClient[] = [];
  const open = async (query: string) => {
    const c = new WsClient(`${wsBase}/v1/ws${query}`);
    clients.push(c);
    await c.opened;
    await check(() => c.ready, 5000, `ready frame for ${query}`);
    return c;
  };

  before(async () => {
    nats = await startTestNats({ partitions: 4 });
    nc = await nats.connect();
    kv = await new Kvm(nc).open(STATE_BUCKET);
    gw = await startGateway({
      natsUrl: nats.url,
      port: 0,
      push: { wsHighWaterBytes: 64 * 1024, maxPendingKeys: 20, heartbeatMs: 200 },
    });
    wsBase = gw.url.replace(/^http/, 'ws');
    await commitState(kv, 'warehouse', 'ams-1', { exceptions: 1 }, 1);
    await commitState(kv, 'warehouse', 'ams-2', { exceptions: 1 }, 2);
    await commitState(kv, 'warehouse', 'ber-1', { exceptions: 1 }, 3);
    await commitState(kv, 'warehouse', 'odd.key/ü', { exceptions: 1 }, 4);
    await commitState(kv, 'order', 'o-1', { status: 'created' }, 5);
  });
  after(async () => {
    for (const c of clients) c.close();
    await gw?.stop().catch(() => undefined);
    await nats?.stop();
  });

  it('sends a snapshot of the matching states first, then only matching changes', async () => {
    const all = await open('');
    const byPrefix = await open('?actor=warehouse&prefix=ams');
    const byKey = await open('?actor=warehouse&key=ber-1');
    const odd = await open(`?actor=warehouse&key=${encodeURIComponent('odd.key/ü')}`);
    const orders = await open('?actor=order');

    const keys = (c: WsClient, type?: 'snapshot' | 'changes') =>
      c
        .changes(type)
        .map((x) => `${x.actor}/${x.key}`)
        .sort();
    assert.deepEqual(keys(all, 'snapshot'), [
      'order/o-1',
      'warehouse/ams-1',
      'warehouse/ams-2',
      'warehouse/ber-1',
      'warehouse/odd.key/ü',
    ]);
    assert.deepEqual(keys(byPrefix, 'snapshot'), ['warehouse/ams-1', 'warehouse/ams-2']);
    assert.deepEqual(keys(byKey, 'snapshot'), ['warehouse/ber-1']);
    assert.deepEqual(keys(odd, 'snapshot'), ['warehouse/odd.key/ü']);
    assert.deepEqual(keys(orders, 'snapshot'), ['order/o-1']);
    // The snapshot frames come before `ready`, changes after it.
    const readyAt = all.frames.findIndex((f) => f.type === 'ready');
    assert.ok(all.frames.slice(0, readyAt).every((f) => f.type === 'snapshot' || f.type === 'heartbeat'));
    assert.equal(all.frames[readyAt]!.snapshot, 5);

    await commitState(kv, 'warehouse', 'ams-1', { exceptions: 2 }, 10);
    await commitState(kv, 'warehouse', 'ber-1', { exceptions: 2 }, 11);
    await commitState(kv, 'order', 'o-1', { status: 'picked' }, 12);
    await commitState(kv, 'warehouse', 'odd.key/ü', { exceptions: 2 }, 13);
    await check(() => all.changes('changes').length === 4, 5000, 'all four changes on the unfiltered client');
    await check(() => odd.changes('changes').length === 1, 5000, 'the escaped key');
    await check(() => orders.changes('changes').length === 1, 5000, 'the order change');
    await check(() => byPrefix.changes('changes').length === 1, 5000, 'the prefix client’s change');
    await check(() => byKey.changes('changes').length === 1, 5000, 'the key client’s change');
    assert.deepEqual(keys(byPrefix, 'changes'), ['warehouse/ams-1']);
    assert.deepEqual(keys(byKey, 'changes'), ['warehouse/ber-1']);
    assert.deepEqual(keys(orders, 'changes'), ['order/o-1']);
    assert.equal(all.latest('warehouse', 'ams-1')!.state.exceptions, 2);
    await check(() => all.frames.some((f) => f.type === 'heartbeat'), 5000, 'a heartbeat frame');
  });

  it('streams the same frames over Server-Sent Events', async () => {
    const sse = await openSse(`${gw.url}/v1/subscribe?actor=order`);
    assert.equal(sse.status, 200);
    // Heartbeats may come at any time, before the snapshot too; the rest keeps its order.
    const events = () => sse.events.filter((e) => e.event !== 'heartbeat');
    await check(() => events().some((e) => e.event === 'ready'), 5000, 'SSE ready');
    assert.equal(events()[0]!.event, 'snapshot');
    assert.deepEqual(
      events()[0]!.data.changes!.map((c) => c.key),
      ['o-1'],
    );
    await commitState(kv, 'order', 'o-1', { status: 'packed' }, 20);
    await commitState(kv, 'warehouse', 'ams-2', { exceptions: 9 }, 21);
    const change = await check(
      () => events().find((e) => e.event === 'changes')?.data.changes?.[0],
      5000,
      'SSE change',
    );
    assert.equal(change.key, 'o-1');
    assert.equal((change.state as { status: string }).status, 'packed');
    assert.ok(
      events()
        .filter((e) => e.event === 'changes')
        .every((e) => e.data.changes!.every((c) => c.actor === 'order')),
    );
    await sse.close();
  });

  it('coalesces a client that stops reading, and it never delays the others', async () => {
    const fast = await open('?actor=metrics');
    const slow = await open('?actor=metrics');
    slow.pause();
    const coalescedBefore = await metric(gw, 'partita_gateway_push_coalesced_total');
    // 5 keys × 80 changes of ~48 KB: far more than the socket buffers hold.
    const pad = 'x'.repeat(48 * 1024);
    const KEYS = 5;
    const ROUNDS = 80;
    let seq = 100;
    const last = new Map<string, number>();
    for (let r = 0; r < ROUNDS; r++) {
      for (let k = 0; k < KEYS; k++) {
        seq++;
        await commitState(kv, 'metrics', `m-${k}`, { round: r, pad }, seq);
        last.set(`m-${k}`, seq);
      }
    }
    // The reading client gets every change, in order, while the other one still does not read.
    await check(
      () => fast.changes('changes').length === KEYS * ROUNDS,
      20_000,
      'every change on the fast client',
    );
    const seqs = fast.changes('changes').map((c) => c.seq);
    assert.deepEqual(
      seqs,
      [...seqs].sort((a, b) => a - b),
      'in commit order',
    );
    const coalesced = (await metric(gw, 'partita_gateway_push_coalesced_total')) - coalescedBefore;
    assert.ok(coalesced > 0, `the paused client's pending changes were coalesced (${coalesced})`);
    assert.ok(slow.changes('changes').length < KEYS * ROUNDS);
    // Once it reads again it catches up with the latest value of every key, not every change.
    slow.resume();
    await check(
      () => [...last].every(([key, s]) => slow.latest('metrics', key)?.seq === s),
      20_000,
      'the slow client ends on the latest value of every key',
    );
    const got = slow.changes('changes').length;
    assert.ok(got < KEYS * ROUNDS, `slow client received ${got} of ${KEYS * ROUNDS} changes (coalesced)`);
    assert.equal(slow.closeCode, null);
  });

  it('disconnects a stalled client that falls behind on more keys than its bound', async () => {
    const stalled = await open('?actor=wide');
    stalled.pause();
    const overflowsBefore = await metric(gw, 'partita_gateway_push_overflows_total');
    const pad = 'y'.repeat(48 * 1024);
    let seq = 1000;
    // Fill the socket with one key, then change more distinct keys than maxPendingKeys (20).
    for (let i = 0; i < 200; i++) await commitState(kv, 'wide', 'fill', { pad }, ++seq);
    for (let k = 0; k < 40; k++) await commitState(kv, 'wide', `k-${k}`, { k }, ++seq);
    await check(
      async () => (await metric(gw, 'partita_gateway_push_overflows_total')) > overflowsBefore,
      10_000,
      'an overflow',
    );
    stalled.resume();
    await check(() => stalled.closeCode === 4008, 10_000, 'close code 4008');
    assert.ok(stalled.frames.some((f) => f.type === 'overflow'));
  });

  it('rejects a bad filter with 400 before the upgrade', async () => {
    const c = new WebSocket(`${wsBase}/v1/ws?status=maybe`);
    const status = await new Promise<number>((res) => {
      c.on('unexpected-response', (_req, r) => res(r.statusCode ?? 0));
      c.on('open', () => res(101));
      c.on('error', () => undefined);
    });
    assert.equal(status, 400);
    c.terminate();
  });
  it('sends a fresh snapshot after the gateway reconnects to NATS', async () => {
    const c = await open('?actor=warehouse&key=ams-1');
    const readies = () => c.frames.filter((f) => f.type === 'ready').length;
    assert.equal(readies(), 1);
    await nats.server.stop('SIGTERM');
    await check(
      () => c.frames.some((f) => f.type === 'heartbeat' && (f as { nats?: boolean }).nats === false),
      10_000,
      'a heartbeat saying NATS is down',
    );
    const again = await startNatsServer({
      port: nats.server.port,
      dataDir: join(nats.dir, 'nats'),
      partitions: 4,
    });
    try {
      await check(() => readies() === 2, 20_000, 'a second snapshot and ready after the reconnect');
      assert.equal(c.latest('warehouse', 'ams-1')!.state.exceptions, 2);
      await check(
        () => c.frames.at(-1)?.type === 'heartbeat' && (c.frames.at(-1) as { nats?: boolean }).nats === true,
        10_000,
        'NATS up again',
      );
    } finally {
      for (const x of clients) x.close();
      clients.length = 0;
      await gw.stop();
      await again.stop('SIGKILL');
    }
  });
});
