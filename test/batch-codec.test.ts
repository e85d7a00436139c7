// The bytes a task hands a worker: real deliveries from a real nats-server come out of the codec as
// the same events `rawEventOf` makes of them, through nats.js's internals and through its public
// API alike; and random batches survive the trip (seeded).
import assert from 'node:assert/strict';
import { connect as netConnect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { type JsMsg, jetstream } from '@nats-io/jetstream';
import { MsgHdrsImpl } from '@nats-io/nats-core';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import fc from 'fast-check';
import { pack } from 'msgpackr';
import {
  type Delivery,
  decodeBatches,
  deliveryOf,
  encodeBatches,
  headerRecord,
  type OutgoingBatch,
  publicDeliveryOf,
  rawEventOf,
} from '../runtime/batch-codec.js';
import { partitionOf } from '../runtime/subjects.js';
import { startTestNats, type TestNats } from './helpers/nats.js';

let nats: TestNats;
let nc: NatsConnection;

before(async () => {
  nats = await startTestNats({ partitions: 4 });
  nc = await nats.connect();
});
after(async () => {
  await nats.stop();
});

const te = new TextEncoder();

describe('the batch codec against real deliveries', () => {
  it('gives the worker the events rawEventOf makes of the same messages', async () => {
    const js = jetstream(nc);
    const h = (entries: [string, string][]) => {
      const m = headers();
      for (const [k, v] of entries) m.append(k, v);
      return m;
    };
    await js.publish('partita.in.2.click.user-1', te.encode('{"n":1}'));
    await js.publish('partita.in.2.click.user-2', te.encode('{"n":2}'), {
      msgID: 'id-2',
      headers: h([['Partita-Event-Time', '1700000000000']]),
    });
    await js.publish('partita.in.2.view.clé-ünï', pack({ n: 3 }), {
      headers: h([
        ['Content-Type', 'application/msgpack'],
        ['X-Many', 'first'],
        ['X-Many', 'second'],
        ['X-Spaced', '  padded value  '],
      ]),
    });
    await js.publish('partita.in.2.only-type', new Uint8Array(0));
    // Published as services do: sourced from the ingest stream, with the source's header.
    const sourced = Array.from({ length: 100 }, (_, i) => `user-${i}`).find((k) => partitionOf(k, 4) === 2)!;
    await js.publish(`events.click.${sourced}`, te.encode('{"n":5}'), { msgID: 'id-5' });
    // Stored in another partition's stream: read as partition 2's, the event names its subject.
    await js.publish('partita.in.3.click.user-9', te.encode('{}'));

    const msgs: JsMsg[] = [];
    for (const [stream, n] of [
      ['PARTITA_IN_2', 5],
      ['PARTITA_IN_3', 1],
    ] as const) {
      const c = await js.consumers.get(stream);
      for await (const m of await c.fetch({ max_messages: n, expires: 5000 })) {
        msgs.push(m);
        if (msgs.length === (stream === 'PARTITA_IN_2' ? 5 : 6)) break;
      }
    }
    assert.equal(msgs.length, 6);
    for (const [name, of] of [
      ['internals', deliveryOf],
      ['public API', publicDeliveryOf],
    ] as const) {
      const batch: OutgoingBatch = { partition: 2, epoch: 41, deliveries: msgs.map(of) };
      const [got] = decodeBatches(encodeBatches([batch]));
      assert.equal(got!.partition, 2);
      assert.equal(got!.epoch, 41);
      assert.equal(got!.poisoned, undefined);
      // Taken on fresh messages each time would be the same: rawEventOf reads public getters only.
      assert.deepEqual(
        got!.events,
        msgs.map((m) => rawEventOf(m, 2)),
        `the events through ${name}`,
      );
    }
    // The cases above are what they claim to be.
    const events = msgs.map((m) => rawEventOf(m, 2));
    assert.equal(events[0]!.headers, null);
    assert.equal(events[1]!.headers!['Nats-Msg-Id'], 'id-2');
    assert.equal(events[2]!.msgpack, true);
    assert.equal(events[2]!.key, 'clé-ünï');
    assert.equal(events[2]!.headers!['X-Many'], 'first');
    assert.equal(events[3]!.badSubject, 'partita.in.2.only-type');
    assert.ok(events[4]!.headers!['Nats-Stream-Source'], 'a sourced event has the source header');
    assert.equal(events[4]!.key, sourced);
    assert.equal(events[5]!.badSubject, 'partita.in.3.click.user-9');
    // The internals were used, not the fallback: a delivery's bytes are views of what was received.
    const d = deliveryOf(msgs[1]!);
    assert.equal(d.data.buffer, d.headers!.buffer, 'header block and payload share the received buffer');
  });
});

describe('the batch codec against headers nats.js refuses', () => {
  it('reads a header block whose key nats.js would throw on', async () => {
    // Another client may send a header key nats.js refuses (a space in it). The server stores it;
    // nats.js throws as soon as the headers are read, which the main thread no longer does.
    const url = new URL(nats.url);
    const block = 'NATS/1.0\r\nBad Key: v\r\nNats-Msg-Id: raw-1\r\n\r\n';
    const payload = '{"n":1}';
    const sock = netConnect(Number(url.port), url.hostname, () => {
      // The server sends INFO first and reads what the client sent after it.
      sock.write(
        `CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n` +
          `HPUB partita.in.2.click.raw ${block.length} ${block.length + payload.length}\r\n${block}${payload}\r\nPING\r\n`,
      );
    });
    await new Promise<void>((resolve, reject) => {
      let seen = '';
      sock.on('error', reject);
      sock.on('data', (d) => {
        seen += d.toString();
        if (seen.includes('-ERR')) reject(new Error(seen));
        else if (seen.includes('PONG')) resolve();
      });
    });
    sock.end();
    const js = jetstream(nc);
    const c = await js.consumers.get('PARTITA_IN_2', { filter_subjects: 'partita.in.2.click.raw' });
    const m = await c.next({ expires: 5000 });
    assert.ok(m, 'the raw message is stored');
    assert.throws(() => rawEventOf(m, 2), /not a valid character in a header name/);
    const [got] = decodeBatches(encodeBatches([{ partition: 2, epoch: 1, deliveries: [deliveryOf(m)] }]));
    assert.deepEqual(got!.events[0]!.headers, { 'Bad Key': 'v', 'Nats-Msg-Id': 'raw-1' });
    assert.equal(got!.events[0]!.key, 'raw');
  });
});

describe('the batch codec, random batches (seeded)', () => {
  it('decodes what it encodes', () => {
    const seed = Number(process.env.PARTITA_SEED ?? Date.now() % 1_000_000);
    console.log(`batch codec property seed: ${seed}`);
    const token = fc.stringMatching(/^[A-Za-z0-9_-]{1,12}$/);
    const key = fc
      .string({ unit: 'grapheme', minLength: 1, maxLength: 12 })
      .filter((k) => !/[\s.*>]/.test(k));
    const headerName = fc.stringMatching(/^X-[A-Za-z0-9-]{1,10}$/);
    const headerValue = fc.stringMatching(/^[!-~]([ -~]{0,20}[!-~])?$/);
    const event = fc.record({
      seq: fc.integer({ min: 1, max: 2 ** 53 - 1 }),
      publishMs: fc.integer({ min: 0, max: 2 ** 45 }),
      partition: fc.integer({ min: 0, max: 7 }),
      type: token,
      key,
      headers: fc.option(
        fc.uniqueArray(fc.tuple(headerName, headerValue), { selector: ([k]) => k, maxLength: 4 }),
      ),
      msgpack: fc.boolean(),
      data: fc.uint8Array({ maxLength: 64 }),
    });
    const batch = fc.record({
      partition: fc.integer({ min: 0, max: 7 }),
      epoch: fc.integer({ min: 0, max: 2 ** 53 - 1 }),
      events: fc.array(event, { maxLength: 20 }),
      poisoned: fc.option(
        fc.array(
          fc.record({
            seq: fc.nat(),
            actor: token,
            key,
            fire: fc.boolean(),
            code: fc.constant('PARTITA_ERR_HANDLER' as const),
            reason: fc.string(),
          }),
          { minLength: 1, maxLength: 2 },
        ),
        { nil: undefined },
      ),
    });
    fc.assert(
      fc.property(fc.array(batch, { maxLength: 5 }), (batches) => {
        const outgoing: OutgoingBatch[] = batches.map((b) => ({
          partition: b.partition,
          epoch: b.epoch,
          // Plain objects, as JSON gives back (fast-check's records have no prototype).
          poisoned: b.poisoned?.map((x) => ({ ...x })),
          deliveries: b.events.map((e): Delivery => {
            const entries: [string, string][] = [...(e.headers ?? [])];
            if (e.msgpack) entries.push(['Content-Type', 'application/msgpack']);
            let block: Uint8Array | null = null;
            if (e.headers !== null || e.msgpack) {
              const h = headers();
              for (const [k, v] of entries) h.append(k, v);
              block = (h as unknown as { encode(): Uint8Array }).encode();
            }
            return {
              seq: e.seq,
              publishMs: e.publishMs,
              subject: te.encode(`partita.in.${e.partition}.${e.type}.${e.key}`),
              headers: block,
              data: e.data,
            };
          }),
        }));
        const got = decodeBatches(encodeBatches(outgoing));
        assert.equal(got.length, batches.length);
        for (const [i, b] of batches.entries()) {
          const g = got[i]!;
          assert.equal(g.partition, b.partition);
          assert.equal(g.epoch, b.epoch);
          assert.deepEqual(g.poisoned, outgoing[i]!.poisoned);
          assert.equal(g.events.length, b.events.length);
          for (const [j, e] of b.events.entries()) {
            const ev = g.events[j]!;
            assert.equal(ev.seq, e.seq);
            assert.equal(ev.publishMs, e.publishMs);
            assert.equal(ev.type, e.type);
            assert.equal(ev.key, e.key);
            assert.equal(ev.msgpack, e.msgpack);
            assert.deepEqual([...ev.data], [...e.data]);
            assert.equal(
              ev.badSubject,
              e.partition === b.partition ? undefined : `partita.in.${e.partition}.${e.type}.${e.key}`,
            );
            const want =
              e.headers === null && !e.msgpack
                ? null
                : Object.fromEntries([
                    ...(e.headers ?? []),
                    ...(e.msgpack ? [['Content-Type', 'application/msgpack']] : []),
                  ]);
            assert.deepEqual(ev.headers, want);
          }
        }
      }),
      // No shrinking: a failing case of this size is shrunk for minutes; the seed reproduces it.
      { seed, numRuns: 200, endOnFailure: true },
    );
  });

  it('reads header blocks as nats.js reads them', () => {
    const seed = Number(process.env.PARTITA_SEED ?? Date.now() % 1_000_000);
    console.log(`header block property seed: ${seed}`);
    // What nats.js accepts: keys of visible ASCII without a colon, values without CR or LF.
    const key = fc.stringMatching(/^[!-9;-~]{1,8}$/);
    const value = fc.string({ unit: 'grapheme', maxLength: 12 }).filter((v) => !/[\r\n]/.test(v));
    const line = fc.oneof(
      fc.tuple(key, fc.constantFrom(':', ': ', ':   ', ':\t'), value).map(([k, sep, v]) => `${k}${sep}${v}`),
      fc.constant(''),
    );
    const status = fc.constantFrom('NATS/1.0', 'NATS/1.0 503', 'NATS/1.0 408 Request Timeout');
    fc.assert(
      fc.property(status, fc.array(line, { maxLength: 8 }), fc.boolean(), (first, lines, keyTwice) => {
        if (keyTwice && lines.length > 0) lines.push(`${lines[0]!.split(':')[0]}: again`);
        const block = `${[first, ...lines].join('\r\n')}\r\n\r\n`;
        const h = MsgHdrsImpl.decode(te.encode(block));
        const want: Record<string, string> = {};
        for (const k of h.keys()) want[k] = h.get(k);
        assert.deepEqual(headerRecord(block), want, JSON.stringify(block));
      }),
      { seed, numRuns: 500 },
    );
  });

  it('refuses bytes that are not a task', () => {
    const good = encodeBatches([{ partition: 1, epoch: 2, deliveries: [] }]);
    assert.throws(() => decodeBatches(new Uint8Array([9, 0, 0, 0, 0])), /not a batch task/);
    const longer = new Uint8Array(good.byteLength + 3);
    longer.set(good);
    assert.throws(() => decodeBatches(longer), /3 bytes after its batches/);
  });
});
