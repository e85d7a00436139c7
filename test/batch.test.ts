// applyBatch on its own: edge cases that are cheaper to pin down without a broker.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import type { LoadedActor } from '../runtime/actor-loader.js';
import { actorsByType, applyBatch, type RawEvent } from '../runtime/batch.js';
import type { StateRecord } from '../runtime/state-store.js';
import { partitionOf } from '../runtime/subjects.js';

const bigints: LoadedActor = {
  name: 'big',
  guarantee: 'exactly-once',
  file: 'big',
  def: {
    name: 'big',
    events: ['n'],
    initial: () => ({ n: 0 as number | bigint, seen: 0 }),
    handle(s: { n: number | bigint; seen: number }, e: { data: { big?: boolean } }, ctx) {
      s.seen += 1;
      // Once a bigint, always a bigint: only the event that made it one is to blame.
      s.n = e.data.big ? 1n : typeof s.n === 'bigint' ? s.n + 1n : s.n + 1;
      ctx.emit('out', 'x', { seen: s.seen });
    },
  },
};

const ev = (seq: number, data: unknown): RawEvent => ({
  seq,
  type: 'n',
  key: 'k',
  data: new Uint8Array(Buffer.from(JSON.stringify(data))),
  msgpack: false,
  publishMs: seq,
  headers: null,
});

it('dead-letters an event that leaves the state unserialisable, and keeps the rest', () => {
  const store = new Map<string, string>();
  const load = (a: string, k: string) => {
    const v = store.get(`${a}/${k}`);
    return v === undefined ? undefined : (JSON.parse(v) as StateRecord);
  };
  const out = applyBatch(actorsByType([bigints]), [ev(1, {}), ev(2, { big: true }), ev(3, {})], load, {
    partition: 0,
    partitions: 1,
    maxEventBytes: 1000,
    maxAttempts: 3,
    now: 5,
  });
  assert.deepEqual(
    out.dead.map((d) => [d.seq, d.code]),
    [[2, 'PARTITA_ERR_HANDLER']],
  );
  assert.equal(out.writes.length, 1);
  assert.deepEqual(JSON.parse(out.writes[0]!.json), { n: 2, seen: 2 });
  assert.deepEqual(
    out.emits.map(([, id]) => id),
    ['pt:big:0:1:0', 'pt:big:0:3:0'],
  );
});

it('gives emits of the same sequence in two partitions different ids (their streams number alike)', () => {
  const emitter: LoadedActor = {
    name: 'fwd',
    guarantee: 'exactly-once',
    file: 'fwd',
    def: {
      name: 'fwd',
      events: ['n'],
      initial: () => ({}),
      handle(_s: unknown, _e: unknown, ctx) {
        ctx.emit('out', 'same', {});
      },
    },
  };
  const ids = [0, 1].map((partition) => {
    let key = 'a';
    while (partitionOf(key, 2) !== partition) key += 'a';
    const out = applyBatch(actorsByType([emitter]), [{ ...ev(7, {}), key }], () => undefined, {
      partition,
      partitions: 2,
      maxEventBytes: 1000,
      maxAttempts: 1,
      now: 1,
    });
    return out.emits[0]![1];
  });
  assert.notEqual(ids[0], ids[1], 'a shared id would make the target stream drop one as a duplicate');
});
