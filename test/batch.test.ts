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

/** An in-memory store that keeps what a batch writes, as the worker's LMDB does. */
function memoryStore() {
  const map = new Map<string, string>();
  return {
    load: (a: string, k: string) => {
      const v = map.get(`${a}/${k}`);
      return v === undefined ? undefined : (JSON.parse(v) as StateRecord);
    },
    commit(out: ReturnType<typeof applyBatch>) {
      for (const w of out.writes) map.set(`${w.actor}/${w.key}`, JSON.stringify(w.record));
    },
  };
}

const opts = (extra: Partial<Parameters<typeof applyBatch>[3]> = {}) => ({
  partition: 0,
  partitions: 1,
  maxEventBytes: 10_000_000,
  maxAttempts: 3,
  now: 1,
  ...extra,
});

// Appends `pad` characters when asked, and can emit what the event says.
const grower: LoadedActor = {
  name: 'grow',
  guarantee: 'exactly-once',
  file: 'grow',
  def: {
    name: 'grow',
    events: ['n'],
    initial: () => ({ n: 0, blob: '' }),
    handle(
      s: { n: number; blob: string },
      e: { data: { pad?: number; emit?: [string, string, unknown] } },
      ctx,
    ) {
      s.n += 1;
      if (e.data.pad) s.blob += 'x'.repeat(e.data.pad);
      if (e.data.emit) ctx.emit(...e.data.emit);
      ctx.emit('seen', 'k', { n: s.n });
    },
  },
};

it('dead-letters a key longer than MAX_KEY_BYTES before anything is written, and applies the rest', () => {
  const store = memoryStore();
  const long = 'k'.repeat(2000);
  const equals = '='.repeat(1400);
  const events = [ev(1, {}), { ...ev(2, {}), key: long }, { ...ev(3, {}), key: equals }, ev(4, {})];
  const out = applyBatch(actorsByType([grower]), events, store.load, opts());
  assert.deepEqual(
    out.dead.map((d) => [d.seq, d.code, d.actor]),
    [
      [2, 'PARTITA_ERR_KEY_TOO_LONG', null],
      [3, 'PARTITA_ERR_KEY_TOO_LONG', null],
    ],
  );
  assert.match(out.dead[0]!.message, /2000 bytes, over 512/);
  assert.deepEqual(
    out.writes.map((w) => w.key),
    ['k'],
  );
  assert.equal((out.writes[0]!.record.s as { n: number }).n, 2);
});

it('dead-letters the event after which a state is too large; the key goes on from before it', () => {
  const store = memoryStore();
  const byType = actorsByType([grower]);
  const max = 64 * 1024;
  const first = applyBatch(byType, [ev(1, { pad: 10 })], store.load, opts({ maxStateBytes: max }));
  store.commit(first);
  const out = applyBatch(
    byType,
    [ev(2, { pad: 10 }), ev(3, { pad: 5 * 1024 * 1024 }), ev(4, { pad: 10 })],
    store.load,
    opts({ maxStateBytes: max }),
  );
  assert.deepEqual(
    out.dead.map((d) => [d.seq, d.code, d.actor]),
    [[3, 'PARTITA_ERR_STATE_TOO_LARGE', 'grow']],
  );
  assert.match(out.dead[0]!.message, /grow: the state of key "k" would be \d+ bytes/);
  assert.deepEqual(JSON.parse(out.writes[0]!.json), { n: 3, blob: 'x'.repeat(30) });
  assert.equal(out.writes[0]!.record.q, 4);
  // The dropped event's emits go with it.
  assert.deepEqual(
    out.emits.map(([, id]) => id),
    ['pt:grow:0:2:0', 'pt:grow:0:4:0'],
  );
  // Unchecked without a limit (the property tests' in-memory folds).
  const free = applyBatch(byType, [ev(5, { pad: 5 * 1024 * 1024 })], store.load, opts());
  assert.equal(free.dead.length, 0);
});

it('dead-letters an event whose emit NATS would refuse, rolled back and not retried', () => {
  const store = memoryStore();
  const calls: number[] = [];
  const counting: LoadedActor = {
    ...grower,
    def: {
      ...grower.def,
      handle(s, e, ctx) {
        calls.push(e.seq);
        return grower.def.handle(s, e, ctx);
      },
    },
  };
  const bad: [string, string, unknown][] = [
    ['', 'k', {}],
    ['a.b', 'k', {}],
    ['t', 'a*', {}],
    ['t', '>', {}],
    ['t', 'a b', {}],
    ['t', 'x'.repeat(600), {}],
    ['t', 'k', 'y'.repeat(2000)],
  ];
  const events = [ev(1, {}), ...bad.map((emit, i) => ev(i + 2, { pad: 1, emit })), ev(100, {})];
  const out = applyBatch(actorsByType([counting]), events, store.load, opts({ maxEmitBytes: 1000 }));
  assert.deepEqual(
    out.dead.map((d) => [d.seq, d.code, d.actor]),
    bad.map((_, i) => [i + 2, 'PARTITA_ERR_OUTPUT_REFUSED', 'grow']),
  );
  for (const d of out.dead) assert.match(d.message, /^grow: emit to /);
  for (const [i] of bad.entries())
    assert.equal(calls.filter((seq) => seq === i + 2).length, 1, 'each refused event ran once: no retries');
  assert.deepEqual(JSON.parse(out.writes[0]!.json), { n: 2, blob: '' }, 'rolled back');
  assert.deepEqual(
    out.emits.map(([subject]) => subject),
    ['events.seen.k', 'events.seen.k'],
  );
});

it('dead-letters a poisoned call without making it, and records every call before it is made', () => {
  const store = memoryStore();
  const calls: string[] = [];
  const out = applyBatch(actorsByType([grower]), [ev(1, {}), ev(2, {}), ev(3, {})], store.load, {
    ...opts(),
    poisoned: [
      {
        seq: 2,
        actor: 'grow',
        key: 'k',
        fire: false,
        code: 'PARTITA_ERR_HANDLER_TIMEOUT',
        reason: 'handler ran longer than 5000 ms on key "k"',
      },
    ],
    onCall: (seq, actor, key, fire) => calls.push(`${seq}:${actor}:${key}:${fire}`),
  });
  assert.deepEqual(
    out.dead.map((d) => [d.seq, d.code, d.actor, d.message]),
    [[2, 'PARTITA_ERR_HANDLER_TIMEOUT', 'grow', 'grow: handler ran longer than 5000 ms on key "k"']],
  );
  assert.deepEqual(JSON.parse(out.writes[0]!.json), { n: 2, blob: '' });
  assert.ok(calls.includes('1:grow:k:false') && calls.includes('3:grow:k:false'));
});

it('never calls initial for a poisoned event (it may be what looped)', () => {
  let initials = 0;
  const counted: LoadedActor = {
    ...grower,
    def: {
      ...grower.def,
      initial: () => {
        initials++;
        return { n: 0, blob: '' };
      },
    },
  };
  const out = applyBatch(actorsByType([counted]), [ev(1, {})], () => undefined, {
    ...opts(),
    poisoned: [
      { seq: 1, actor: 'grow', key: 'k', fire: false, code: 'PARTITA_ERR_HANDLER_TIMEOUT', reason: 'r' },
    ],
  });
  assert.equal(initials, 0);
  assert.equal(out.writes.length, 0);
  assert.deepEqual(
    out.dead.map((d) => d.code),
    ['PARTITA_ERR_HANDLER_TIMEOUT'],
  );
});
