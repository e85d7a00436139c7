// Property: for exactly-once actors, a run interrupted by a crash at any point (losing the batch
// in flight) and resumed from its checkpoint, or from any earlier position, ends in the same
// states, emits and dead letters as one uninterrupted run.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import fc from 'fast-check';
import type { LoadedActor } from '../runtime/actor-loader.js';
import { type ApplyOptions, actorsByType, applyBatch, type RawEvent } from '../runtime/batch.js';
import type { StateRecord } from '../runtime/state-store.js';
import { partitionOf } from '../runtime/subjects.js';
import account from './fixtures/actors/account.js';
import flaky from './fixtures/actors/flaky.js';

const PARTITIONS = 1;
const actors: LoadedActor[] = [
  { def: account, name: 'account', guarantee: 'exactly-once', file: 'account' },
  { def: flaky, name: 'flaky', guarantee: 'exactly-once', file: 'flaky' },
];
const byType = actorsByType(actors);
const opts: ApplyOptions = {
  partition: 0,
  partitions: PARTITIONS,
  maxEventBytes: 200,
  maxAttempts: 2,
  now: 1,
};

/** What a committed history leaves behind: the store plus every output, deduplicated as JetStream would. */
interface World {
  store: Map<string, string>;
  emits: Set<string>;
  dead: Set<string>;
}

function emptyWorld(): World {
  return { store: new Map(), emits: new Set(), dead: new Set() };
}

/** Applies `events` in batches split at `cuts`; returns the checkpoint after each committed batch. */
function run(
  world: World,
  events: RawEvent[],
  cuts: number[],
  stopAfterBatches = Number.POSITIVE_INFINITY,
): number {
  let cp = 0;
  const bounds = [...new Set([0, ...cuts.filter((c) => c > 0 && c < events.length), events.length])].sort(
    (a, b) => a - b,
  );
  for (let b = 0; b + 1 < bounds.length; b++) {
    const batch = events.slice(bounds[b], bounds[b + 1]);
    // `load` must decode afresh each call, as LMDB does.
    const load = (actor: string, key: string) => {
      const s = world.store.get(`${actor}/${key}`);
      return s === undefined ? undefined : (JSON.parse(s) as StateRecord);
    };
    const out = applyBatch(byType, batch, load, opts);
    if (b >= stopAfterBatches) break; // crash: this batch's commit is lost
    for (const w of out.writes) world.store.set(`${w.actor}/${w.key}`, JSON.stringify(w.record));
    for (const [subject, id, json] of out.emits) world.emits.add(`${id} ${subject} ${json}`);
    for (const d of out.dead) world.dead.add(`${d.seq}:${d.actor ?? '-'}:${d.code}`);
    cp = out.lastSeq;
  }
  return cp;
}

const enc = (v: unknown) => new Uint8Array(Buffer.from(JSON.stringify(v)));

const eventArb = fc.oneof(
  {
    weight: 8,
    arbitrary: fc.record({
      kind: fc.constant('tx' as const),
      key: fc.integer({ min: 0, max: 5 }),
      amount: fc.integer({ min: -50, max: 50 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('risky' as const),
      key: fc.integer({ min: 0, max: 2 }),
      fail: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constantFrom('garbage' as const, 'unknown' as const, 'huge' as const),
      key: fc.integer({ min: 0, max: 5 }),
    }),
  },
);

type EventSpec =
  | { kind: 'tx'; key: number; amount: number }
  | { kind: 'risky'; key: number; fail: boolean }
  | { kind: 'garbage' | 'unknown' | 'huge'; key: number };

function toRaw(specs: EventSpec[]): RawEvent[] {
  return specs.map((s, i) => {
    const seq = i + 1;
    const key = `k${s.key}`;
    const base = { seq, key, msgpack: false, publishMs: 1000 + seq, headers: null };
    assert.equal(partitionOf(key, PARTITIONS), 0);
    switch (s.kind) {
      case 'tx':
        return { ...base, type: 'tx', data: enc({ id: seq, amount: s.amount }) };
      case 'risky':
        return { ...base, type: 'risky', data: enc({ fail: s.fail }) };
      case 'garbage':
        return { ...base, type: 'tx', data: new Uint8Array(Buffer.from('{not json')) };
      case 'unknown':
        return { ...base, type: 'nobody', data: enc({}) };
      default:
        return { ...base, type: 'tx', data: enc({ id: seq, amount: 1, pad: 'x'.repeat(300) }) };
    }
  });
}

it('replay from any checkpoint equals one uninterrupted run', () => {
  const seed = Number(process.env.PARTITA_TEST_SEED ?? Date.now() % 2 ** 31);
  console.log(`replay property seed=${seed}`);
  fc.assert(
    fc.property(
      fc.array(eventArb, { minLength: 1, maxLength: 60 }),
      fc.array(fc.nat(60), { maxLength: 10 }),
      fc.nat(12),
      fc.array(fc.nat(60), { maxLength: 10 }),
      fc.nat(60),
      (specs, cuts1, crashAfter, cuts2, rewind) => {
        const events = toRaw(specs as EventSpec[]);
        const straight = emptyWorld();
        run(straight, events, cuts1);

        const crashed = emptyWorld();
        const cp = run(crashed, events, cuts1, crashAfter);
        // Resume after the checkpoint, or from an earlier position (a redelivery): both must land
        // on the same states.
        const from = Math.max(0, cp - (rewind % (cp + 1)));
        run(
          crashed,
          events.slice(from),
          cuts2.map((c) => c - from),
        );

        assert.deepEqual([...crashed.store.entries()].sort(), [...straight.store.entries()].sort());
        assert.deepEqual([...crashed.emits].sort(), [...straight.emits].sort());
        assert.deepEqual([...crashed.dead].sort(), [...straight.dead].sort());
      },
    ),
    { numRuns: 300, seed, verbose: 1 },
  );
});
