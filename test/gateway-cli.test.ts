// `partita gateway` with tokens: open only on loopback, tokens from a file or PARTITA_TOKENS.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { spawnPartita } from './helpers/node-process.js';

describe('partita gateway (command)', () => {
  let nats: TestNats;
  before(async () => {
    nats = await startTestNats({ partitions: 2 });
  });
  after(async () => {
    await nats?.stop();
  });

  it('refuses a non-loopback address without tokens', async () => {
    await assert.rejects(
      spawnPartita(['gateway', '--nats', nats.url, '--port', '0', '--host', '0.0.0.0'], {
        PARTITA_TOKENS: '',
      }),
      /exited with 1 before ready: .*PARTITA_ERR_GATEWAY_CONFIG.*loopback only/s,
    );
  });

  it('rejects a malformed tokens file with a clear message', async () => {
    const file = join(nats.dir, 'bad-tokens.json');
    writeFileSync(file, JSON.stringify([{ name: 'x', token: 'short', scopes: ['read'] }]));
    await assert.rejects(
      spawnPartita(['gateway', '--nats', nats.url, '--port', '0', '--tokens', file]),
      /PARTITA_ERR_GATEWAY_CONFIG.*token "x" must be a string of at least 16 characters/s,
    );
  });

  it('takes --allowed-hosts, --allowed-origins and --max-feature-cells', async () => {
    const gw = await spawnPartita(
      [
        'gateway',
        '--nats',
        nats.url,
        '--port',
        '0',
        '--allowed-hosts',
        'gw.example',
        '--allowed-origins',
        'https://app.example',
        '--max-feature-cells',
        '4',
      ],
      { PARTITA_TOKENS: '' },
    );
    try {
      const url = new URL(gw.ready.gateway!);
      const status = (path: string, headers: Record<string, string>, body?: string) =>
        new Promise<number>((res, rej) => {
          const req = request(
            url.origin + path,
            { method: body ? 'POST' : 'GET', headers: { ...headers, 'content-type': 'application/json' } },
            (r) => {
              r.resume();
              res(r.statusCode ?? 0);
            },
          );
          req.on('error', rej);
          req.end(body);
        });
      assert.equal(await status('/healthz', { host: `gw.example:${url.port}` }), 200);
      assert.equal(await status('/healthz', { host: `other.example:${url.port}` }), 403);
      const ws = (origin: string) =>
        new Promise<number | 'open'>((res) => {
          const c = new WebSocket(`ws://${url.host}/v1/ws`, { origin });
          c.on('unexpected-response', (req, r) => {
            res(r.statusCode ?? 0);
            req.destroy();
          });
          c.on('open', () => {
            res('open');
            c.terminate();
          });
          c.on('error', () => undefined);
        });
      assert.equal(await ws('https://app.example'), 'open');
      assert.equal(await ws('https://other.example'), 403);
      const features = (n: number) =>
        status(
          '/get-online-features',
          {},
          JSON.stringify({
            features: ['a:x', 'a:y'],
            entities: { id: Array.from({ length: n }, (_, i) => `k${i}`) },
          }),
        );
      assert.equal(await features(2), 200);
      assert.equal(await features(3), 413);
    } finally {
      assert.equal(await gw.kill('SIGTERM'), 0);
    }
  });

  it('serves every route but /healthz only with a token from the file or PARTITA_TOKENS', async () => {
    const file = join(nats.dir, 'tokens.json');
    const fromFile = 'file-token-0123456789abcdef';
    const fromEnv = 'env-token-0123456789abcdef';
    writeFileSync(file, JSON.stringify([{ name: 'dash', token: fromFile, scopes: ['read'] }]));
    const gw = await spawnPartita(
      ['gateway', '--nats', nats.url, '--port', '0', '--host', '0.0.0.0', '--tokens', file],
      { PARTITA_TOKENS: `ops:${fromEnv}:read+admin` },
    );
    try {
      const url = gw.ready.gateway!;
      const get = (path: string, token?: string) =>
        fetch(`${url}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
      assert.equal((await get('/healthz')).status, 200);
      assert.equal((await get('/v1/status')).status, 401);
      assert.equal((await get('/v1/status', fromFile)).status, 200);
      assert.equal((await get('/v1/status', fromEnv)).status, 200);
      assert.equal((await get('/v1/status', 'wrong-token-0123456789abcdef')).status, 401);
      // Browsers cannot set headers on a WebSocket: the token rides in the query.
      const upgrade = (query: string) =>
        new Promise<number | 'open'>((res) => {
          const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/v1/ws${query}`);
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
      assert.equal(await upgrade(''), 401);
      assert.equal(await upgrade('?access_token=wrong-token-0123456789abcdef'), 401);
      assert.equal(await upgrade(`?access_token=${fromFile}`), 'open');
    } finally {
      assert.equal(await gw.kill('SIGTERM'), 0);
    }
  });
});
