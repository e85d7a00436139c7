// Without tokens the gateway is open on loopback; web pages must still not read it. A page served
// from another local port, in a real Chromium, tries the WebSocket and gets no snapshot; a request
// whose Host is not the gateway's (what a DNS-rebinding page sends) is refused.
import assert from 'node:assert/strict';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Kvm } from '@nats-io/kv';
import { type Browser, chromium } from 'playwright-core';
import { WebSocket } from 'ws';
import { type RunningGateway, startGateway } from '../gateway/index.js';
import { STATE_BUCKET } from '../runtime/index.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { commitState } from './helpers/state.js';

const CHROMIUM = process.env.PARTITA_CHROMIUM ?? '/usr/bin/chromium';

/** What a page got from `new WebSocket(url)`: its first message, or how it closed. */
type WsOutcome = { message: string } | { closed: true; opened: boolean };

function get(url: string, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  return new Promise((res, rej) => {
    const req = request(url, { headers }, (r) => {
      let body = '';
      r.on('data', (d) => {
        body += d;
      });
      r.on('end', () => res({ status: r.statusCode ?? 0, body }));
    });
    req.on('error', rej);
    req.end();
  });
}

function upgrade(url: string, origin?: string): Promise<number | 'open'> {
  return new Promise((res) => {
    const ws = new WebSocket(url, origin ? { origin } : {});
    ws.on('unexpected-response', (req, r) => {
      res(r.statusCode ?? 0);
      req.destroy();
    });
    ws.on('open', () => {
      res('open');
      ws.terminate();
    });
    ws.on('error', () => undefined);
  });
}

describe('gateway: origin and host', () => {
  let nats: TestNats;
  let gw: RunningGateway;
  let other: Server;
  let otherUrl: string;
  let browser: Browser;

  before(async () => {
    nats = await startTestNats({ partitions: 2 });
    const kv = await new Kvm(await nats.connect()).open(STATE_BUCKET);
    await commitState(kv, 'acct', 'secret-1', { balance: 100 }, 1);
    gw = await startGateway({
      natsUrl: nats.url,
      port: 0,
      allowedOrigins: ['http://allowed.example'],
      allowedHosts: ['gateway.internal'],
    });
    // Another site on this machine: any page the user happens to open.
    other = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<!doctype html><title>another site</title>');
    });
    await new Promise<void>((r) => other.listen(0, '127.0.0.1', r));
    otherUrl = `http://127.0.0.1:${(other.address() as AddressInfo).port}/`;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    });
  });
  after(async () => {
    await browser?.close();
    await new Promise((r) => other?.close(r));
    await gw?.stop();
    await nats?.stop();
  });

  const openFrom = async (pageUrl: string): Promise<WsOutcome> => {
    const page = await browser.newPage();
    try {
      await page.goto(pageUrl);
      return await page.evaluate(
        (wsUrl) =>
          new Promise<WsOutcome>((resolve) => {
            let opened = false;
            const ws = new WebSocket(wsUrl);
            ws.onopen = () => {
              opened = true;
            };
            ws.onmessage = (e) => {
              resolve({ message: String(e.data) });
              ws.close();
            };
            ws.onclose = () => resolve({ closed: true, opened });
          }),
        `${gw.url.replace(/^http/, 'ws')}/v1/ws`,
      );
    } finally {
      await page.close();
    }
  };

  it('a page of another origin cannot open the WebSocket; the gateway’s own page can', async () => {
    const foreign = await openFrom(otherUrl);
    assert.deepEqual(foreign, { closed: true, opened: false }, 'no snapshot for another origin');
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    assert.match(metrics, /partita_gateway_requests_total\{route="\/v1\/ws",status="403"\} [1-9]/);

    const own = await openFrom(`${gw.url}/healthz`);
    assert.ok('message' in own, 'the gateway’s own page gets frames');
    assert.match(own.message, /"type":"snapshot".*secret-1/);
  });

  it('checks Origin on SSE and WebSocket without tokens, allowing the configured origins', async () => {
    const ws = `${gw.url.replace(/^http/, 'ws')}/v1/ws`;
    assert.equal(await upgrade(ws, otherUrl.slice(0, -1)), 403);
    assert.equal(await upgrade(ws, 'null'), 403);
    assert.equal(await upgrade(ws, 'http://allowed.example'), 'open');
    assert.equal(await upgrade(ws), 'open', 'no Origin: not a browser');
    const sse = await get(`${gw.url}/v1/subscribe`, { origin: 'http://evil.example' });
    assert.equal(sse.status, 403);
    assert.equal((JSON.parse(sse.body) as { error: string }).error, 'PARTITA_ERR_ORIGIN_NOT_ALLOWED');
    // Plain reads are not push: CORS already keeps their answers from other pages.
    assert.equal((await get(`${gw.url}/healthz`, { origin: 'http://evil.example' })).status, 200);
  });

  it('refuses a Host that is not the gateway’s (DNS rebinding)', async () => {
    const port = new URL(gw.url).port;
    const url = `${gw.url}/v1/actors/acct/secret-1`;
    const rebound = await get(url, { host: `evil.example:${port}` });
    assert.equal(rebound.status, 403);
    assert.equal((JSON.parse(rebound.body) as { error: string }).error, 'PARTITA_ERR_HOST_NOT_ALLOWED');
    assert.doesNotMatch(rebound.body, /balance/);
    for (const host of [
      `127.0.0.1:${port}`,
      `localhost:${port}`,
      `LocalHost:${port}`,
      `gateway.internal:${port}`,
    ]) {
      assert.equal((await get(url, { host })).status, 200, host);
    }
  });
});
