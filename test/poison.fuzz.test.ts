// Random bad events mixed with good ones, on one node whose partitions share one worker thread:
// every bad one is dead-lettered exactly once with its code, every good one is applied exactly
// once, and no partition stalls. Seeded: PARTITA_TEST_SEED=<seed> repeats a run.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { jetstreamManager, type StoredMsg } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { headers, type MsgHdrs, type NatsConnection } from '@nats-io/transport-node';
import {
  DLQ_HEADERS,
  DLQ_STREAM,
  type ErrorCode,
  type PartitaNode,
  STATE_BUCKET,
  startNode,
  stateKvKey,
} from '../runtime/index.js';
import { check, seededRandom, testSeed } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';

const ACTORS = fileURLToPath(new URL('./fixtures/poison-actors/', import.meta.url));
const enc = new TextEncoder();
const EVENTS = 240;
const MAX_EVENT_BYTES = 64 * 1024;
const STALL_MS = 10_000;

interface Bad {
  subject: string;
  payload: Uint8Array;
  code: ErrorCode;
}

describe('random poison among good events', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let node: PartitaNode;

  before(async () => {
    nats = await startTestNats({ partitions: 6 });
    nc = await nats.connect();
    node = await startNode({
      natsUrl: nats.url,
      actorsDir: ACTORS,
      dataDir: join(nats.dir, 'node'),
      threads: 1,
      handlerTimeoutMs: 500,
      maxEventBytes: MAX_EVENT_BYTES,
      // Two loops cost a second or two of the time limit: far less than this, if nothing sticks.
      stallThresholdMs: STALL_MS,
    });
  });
  after(async () => {
    await node?.stop();
    await nats?.stop();
  });

  it('dead-letters each bad event once with its code and applies each good one once', async () => {
    const seed = testSeed();
    console.log(`poison fuzz seed=${seed}`);
    const rnd = seededRandom(seed);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
    const keys = Array.from({ length: 12 }, (_, i) => `key-${i}`);
    const looper = new Map<string, number>();
    const grower = new Map<string, number>();
    const sender = new Map<string, number>();
    const bump = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
    const bad: Bad[] = [];
    const sends: [string, Uint8Array, MsgHdrs | undefined][] = [];
    // Costly kinds (a loop costs the time limit; a big state, a few 5 MB strings) stay few.
    const budget: Record<string, number> = { loop: 2, exit: 2, big: 3 };
    const kinds = [
      ...['work', 'work', 'grow', 'send', 'loop', 'exit', 'throw', 'long', 'big', 'emit'],
      ...['json', 'msgpack', 'size', 'type', 'shape'],
    ];
    for (let id = 0; id < EVENTS; id++) {
      let kind = pick(kinds);
      const left = budget[kind];
      if (left !== undefined) {
        if (left <= 0) kind = 'work';
        else budget[kind] = left - 1;
      }
      const key = pick(keys);
      const json = (v: object) => enc.encode(JSON.stringify({ id, ...v }));
      const add = (subject: string, payload: Uint8Array, code?: ErrorCode, h?: MsgHdrs) => {
        sends.push([subject, payload, h]);
        if (code) bad.push({ subject, payload, code });
      };
      switch (kind) {
        case 'work':
          add(`events.work.${key}`, json({}));
          bump(looper, key);
          break;
        case 'grow':
          // Leaves the blob as it is: a big one stays, so its event is the one to blame whatever the
          // batch cuts (only the state a batch ends with goes out, and is checked).
          add(`events.grow.${key}`, json({}));
          bump(grower, key);
          break;
        case 'send': {
          // Its emit is a good work event for the target key.
          const target = pick(keys);
          add(`events.send.${key}`, json({ type: 'work', key: target }));
          bump(sender, key);
          bump(looper, target);
          break;
        }
        case 'loop':
          add(`events.work.${key}`, json({ loop: true }), 'PARTITA_ERR_HANDLER_TIMEOUT');
          break;
        case 'exit':
          add(`events.work.${key}`, json({ exit: true }), 'PARTITA_ERR_HANDLER');
          break;
        case 'throw':
          add(`events.work.${key}`, json({ throw: true }), 'PARTITA_ERR_HANDLER');
          break;
        case 'long': {
          const ch = pick(['k', '=', 'é']);
          const bytes = 513 + Math.floor(rnd() * 1500);
          const long = ch.repeat(Math.ceil(bytes / Buffer.byteLength(ch)));
          add(`events.work.${long}-${id}`, json({}), 'PARTITA_ERR_KEY_TOO_LONG');
          break;
        }
        case 'big':
          add(`events.grow.${key}`, json({ bytes: 2 * 1024 * 1024 }), 'PARTITA_ERR_STATE_TOO_LARGE');
          break;
        case 'emit':
          add(
            `events.send.${key}`,
            json(
              pick([
                { type: '', key },
                { type: 'a.b', key },
                { type: 'work', key: 'a b' },
              ]),
            ),
            'PARTITA_ERR_OUTPUT_REFUSED',
          );
          break;
        case 'json':
          add(`events.work.${key}`, enc.encode(`{"id": ${id}, `), 'PARTITA_ERR_DECODE');
          break;
        case 'msgpack': {
          // Declared msgpack, but truncated: a map of two entries that holds one.
          const h = headers();
          h.set('Content-Type', 'application/msgpack');
          add(
            `events.work.${key}`,
            Uint8Array.of(0x82, 0xa2, 0x69, 0x64, 0xcd, id >> 8, id & 0xff),
            'PARTITA_ERR_DECODE',
            h,
          );
          break;
        }
        case 'size':
          add(
            `events.work.${key}`,
            json({ pad: 'x'.repeat(MAX_EVENT_BYTES + Math.floor(rnd() * 4096)) }),
            'PARTITA_ERR_OVERSIZED',
          );
          break;
        case 'shape':
          // Not events.<type>.<key>: captured by PARTITA_UNROUTED, dead-lettered from there.
          add(pick([`events.work`, `events.work.${key}.extra`]), json({}), 'PARTITA_ERR_UNROUTABLE');
          break;
        case 'type':
          add(`events.nosuch.${key}`, json({}), 'PARTITA_ERR_UNKNOWN_TYPE');
          break;
      }
    }
    // No partition stalls: sampled from the node's gauge while the events are worked off.
    let stalledMax = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const g = await node.metrics.registry.getSingleMetric('partita_partitions_stalled')?.get();
        stalledMax = Math.max(stalledMax, g?.values[0]?.value ?? 0);
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
    for (const [subject, payload, h] of sends) nc.publish(subject, payload, h ? { headers: h } : undefined);
    await nc.flush();

    const kv = await new Kvm(nc).open(STATE_BUCKET);
    const field = async (actor: string, key: string, f: string) =>
      (await kv.get(stateKvKey(actor, key)))?.json<{ state: Record<string, number> }>()?.state[f];
    const expect = [
      ['looper', looper, 'n'],
      ['grower', grower, 'n'],
      ['sender', sender, 'sent'],
    ] as const;
    for (const [actor, counts, f] of expect)
      for (const [key, n] of counts)
        await check(
          async () => (await field(actor, key, f)) === n,
          60_000,
          `${actor} ${key} at ${n} (seed ${seed})`,
        );

    const jsm = await jetstreamManager(nc);
    const letters = await check(
      async () => {
        const { state } = await jsm.streams.info(DLQ_STREAM);
        return state.messages >= bad.length ? state : undefined;
      },
      60_000,
      `${bad.length} dead letters (seed ${seed})`,
    );
    const all: StoredMsg[] = [];
    for (let seq = letters.first_seq; seq <= letters.last_seq; seq++) {
      const m = await jsm.streams.getMessage(DLQ_STREAM, { seq });
      if (m) all.push(m);
    }
    for (const b of bad) {
      const mine = all.filter(
        (m) =>
          m.header.get(DLQ_HEADERS.subject) === b.subject &&
          Buffer.from(m.data).equals(Buffer.from(b.payload)),
      );
      assert.equal(mine.length, 1, `one dead letter for ${b.subject.slice(0, 60)} (seed ${seed})`);
      assert.equal(mine[0]!.header.get(DLQ_HEADERS.code), b.code, `seed ${seed}`);
    }
    assert.equal(all.length, bad.length, `nothing else is dead-lettered (seed ${seed})`);
    // Exactly once: the final counts were reached above; nothing more comes after the last event.
    const marker = 'key-marker';
    nc.publish(`events.work.${marker}`, enc.encode('{}'));
    await check(async () => (await field('looper', marker, 'n')) === 1, 20_000);
    sampling = false;
    await sampler;
    assert.equal(
      stalledMax,
      0,
      `no partition had work waiting and no progress for ${STALL_MS} ms (seed ${seed})`,
    );
    for (const [actor, counts, f] of expect)
      for (const [key, n] of counts)
        assert.equal(await field(actor, key, f), n, `${actor} ${key} (seed ${seed})`);
  });
});
