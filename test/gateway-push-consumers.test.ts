// Push snapshots hold no JetStream consumer beyond their own read: every snapshot's consumer is
// deleted when it ends or its client goes, and clients that never read are dropped after the time
// bound. Before, each snapshot left an ordered consumer behind (five minutes each, recreated for
// clients that did not read), and a crowd of such clients swamped the server.
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { jetstreamManager } from '@nats-io/jetstream';
import { type KV, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { WebSocket } from 'ws';
import { type RunningGateway, startGateway } from '../gateway/index.js';
import { STATE_BUCKET } from '../runtime/index.js';
import { check } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { commitState } from './helpers/state.js';

const KEYS = 300;
const SSE_CLIENTS = 50;
const WS_CLIENTS = 20;

async function metric(gw: RunningGateway, name: string): Promise<number> {
  const body = await (await fetch(`${gw.url}/metrics`)).text();
  const line = body.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ').pop()) : 0;
}

/** An SSE client that sends its request and never reads a byte. */
function silentSse(url: URL): Promise<Socket> {
  return new Promise((res, rej) => {
    const s = connect(Number(url.port), url.hostname, () => {
      s.write(`GET /v1/subscribe?actor=big HTTP/1.1\r\nHost: ${url.host}\r\n\r\n`);
      s.pause();
      res(s);
    });
    s.on('error', rej);
  });
}

/** A WebSocket client that stops reading as soon as it is open. */
function silentWs(url: string): Promise<WebSocket> {
  return new Promise((res, rej) => {
    const ws = new WebSocket(url);
    ws.once('open', () => {
      (ws as unknown as { _socket: Socket })._socket.pause();
      res(ws);
    });
    ws.once('error', rej);
  });
}

describe('gateway push: snapshot consumers', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let kv: KV;
  let gw: RunningGateway;
  const consumers = async () =>
    (await (await jetstreamManager(nc)).streams.info(`KV_${STATE_BUCKET}`)).state.consumer_count;

  before(async () => {
    nats = await startTestNats({ partitions: 2 });
    nc = await nats.connect();
    kv = await new Kvm(nc).open(STATE_BUCKET);
    // About 5 MB of state: more than the socket buffers of a client that does not read.
    const pad = 'x'.repeat(16 * 1024);
    for (let i = 0; i < KEYS; i += 50) {
      await Promise.all(
        Array.from({ length: 50 }, (_, j) =>
          commitState(kv, 'big', `k-${i + j}`, { i: i + j, pad }, i + j + 1),
        ),
      );
    }
    gw = await startGateway({
      natsUrl: nats.url,
      port: 0,
      push: { snapshotChunk: 20, maxBlockedMs: 2000, heartbeatMs: 60_000 },
    });
  });
  after(async () => {
    await gw?.stop();
    await nats?.stop();
  });

  it('deletes the consumer of every finished snapshot', async () => {
    const before = await consumers();
    const frames: string[][] = [];
    const clients = await Promise.all(
      Array.from({ length: 5 }, (_, i) => {
        frames[i] = [];
        const ws = new WebSocket(`${gw.url.replace(/^http/, 'ws')}/v1/ws?actor=big`);
        ws.on('message', (d) => frames[i]!.push(String(d)));
        return new Promise<WebSocket>((r) => ws.once('open', () => r(ws)));
      }),
    );
    await check(
      () => frames.every((f) => f.some((x) => x.startsWith('{"type":"ready"'))),
      20_000,
      'five snapshots',
    );
    assert.ok(frames.every((f) => f.some((x) => x === `{"type":"ready","snapshot":${KEYS}}`)));
    await check(async () => (await consumers()) === before, 10_000, 'no consumer left by the snapshots');
    for (const c of clients) c.terminate();
  });

  it('drops clients that do not read, releases their consumers, and state reads still work', async () => {
    const before = await consumers();
    // Read before the clients open: the first ones may be dropped before the last one is open.
    const overflowsBefore = await metric(gw, 'partita_gateway_push_overflows_total');
    const url = new URL(gw.url);
    const sse = await Promise.all(Array.from({ length: SSE_CLIENTS }, () => silentSse(url)));
    const ws = await Promise.all(
      Array.from({ length: WS_CLIENTS }, () => silentWs(`${gw.url.replace(/^http/, 'ws')}/v1/ws?actor=big`)),
    );
    // The gateway drops them itself (they keep their sockets open and never read).
    await check(
      async () => (await metric(gw, 'partita_gateway_push_clients')) === 0,
      60_000,
      'every silent client dropped',
    );
    // Each was dropped for not reading (none for anything else: nothing changed meanwhile).
    assert.equal(
      (await metric(gw, 'partita_gateway_push_overflows_total')) - overflowsBefore,
      SSE_CLIENTS + WS_CLIENTS,
    );
    await check(async () => (await consumers()) === before, 20_000, 'the consumer count back where it was');
    for (const s of sse) s.destroy();
    for (const w of ws) w.terminate();
    assert.equal(await consumers(), before);

    // State reads and new subscriptions work as before.
    const read = await fetch(`${gw.url}/v1/actors/big/k-7`);
    assert.equal(read.status, 200);
    const frames: string[] = [];
    const fresh = new WebSocket(`${gw.url.replace(/^http/, 'ws')}/v1/ws?actor=big`);
    fresh.on('message', (d) => frames.push(String(d)));
    await check(() => frames.includes(`{"type":"ready","snapshot":${KEYS}}`), 20_000, 'a fresh snapshot');
    fresh.terminate();
    await check(async () => (await consumers()) === before, 10_000, 'its consumer deleted too');
  });
});
