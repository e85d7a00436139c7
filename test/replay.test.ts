// `partita replay`: after a handler fix, the replayed state equals the fold of the events with the
// new handler; it runs on the owner under its lease, resumes the partition, and is audited.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { readAudit } from '../runtime/audit.js';
import { partitionOf, STATE_BUCKET, stateKvKey } from '../runtime/index.js';
import { check, seededRandom, testSeed } from './helpers/check.js';
import { startTestNats, type TestNats, tempDir } from './helpers/nats.js';
import { type NodeProcess, PARTITA_BIN, spawnPartita } from './helpers/node-process.js';
import { setPartitionSeqs } from './helpers/partition-seqs.js';

const run = promisify(execFile);
const PARTITIONS = 4;

// v1 has the bug: it ignores the quantity. v2 is the fix.
const V1 = `export default {
  name: 'tally', events: ['sales'], guarantee: 'exactly-once',
  initial: () => ({ n: 0, total: 0 }),
  handle(s, e) { s.n += 1; s.total += e.data.price; return s; },
};`;
const V2 = `export default {
  name: 'tally', events: ['sales'], guarantee: 'exactly-once',
  initial: () => ({ n: 0, total: 0 }),
  handle(s, e) { s.n += 1; s.total += e.data.price * e.data.qty; return s; },
};`;

interface Sale {
  key: string;
  price: number;
  qty: number;
  partition: number;
  seq: number;
  at: number;
}
type Tally = { n: number; total: number };
type Entry = { state: Tally; seq: number; partition: number };

function fold(
  sales: readonly Sale[],
  handle: (s: Tally, e: Sale) => void,
): Map<string, { state: Tally; seq: number }> {
  const out = new Map<string, { state: Tally; seq: number }>();
  for (const s of sales) {
    const e = out.get(s.key) ?? { state: { n: 0, total: 0 }, seq: 0 };
    handle(e.state, s);
    e.seq = s.seq;
    out.set(s.key, e);
  }
  return out;
}
const v1 = (s: Tally, e: Sale) => {
  s.n += 1;
  s.total += e.price;
};
const v2 = (s: Tally, e: Sale) => {
  s.n += 1;
  s.total += e.price * e.qty;
};

describe('partita replay', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let node: NodeProcess | undefined;
  const actorsDir = tempDir('partita-replay-actors-');
  const sales: Sale[] = [];
  const seed = testSeed();
  const rand = seededRandom(seed);

  before(async () => {
    nats = await startTestNats({ partitions: PARTITIONS });
    nc = await nats.connect();
  });
  after(async () => {
    await node?.kill('SIGKILL');
    await nats?.stop();
  });

  const startNode = async () => {
    node = await spawnPartita([
      'node',
      '--nats',
      nats.url,
      '--actors',
      actorsDir,
      '--data',
      join(nats.dir, 'node'),
      '--id',
      'n1',
      '--threads',
      '1',
    ]);
  };
  const publish = async (n: number) => {
    const js = jetstream(nc);
    for (let i = 0; i < n; i++) {
      const key = `shop-${Math.floor(rand() * 12)}`;
      const price = 1 + Math.floor(rand() * 50);
      const qty = 1 + Math.floor(rand() * 5);
      await js.publish(`events.sales.${key}`, JSON.stringify({ price, qty }));
      sales.push({ key, price, qty, partition: partitionOf(key, PARTITIONS), seq: 0, at: Date.now() });
    }
    await setPartitionSeqs(nc, PARTITIONS, 'sales', sales);
  };
  const states = async (): Promise<Map<string, Entry>> => {
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    const out = new Map<string, Entry>();
    for (const key of new Set(sales.map((s) => s.key))) {
      const e = await kv.get(stateKvKey('tally', key));
      if (e?.operation === 'PUT') out.set(key, e.json<Entry>());
    }
    return out;
  };
  const equalsFold = async (expected: Map<string, { state: Tally; seq: number }>) => {
    const got = await states();
    for (const [key, want] of expected) {
      const g = got.get(key);
      if (!g || g.seq !== want.seq || JSON.stringify(g.state) !== JSON.stringify(want.state)) return false;
    }
    return got.size === expected.size;
  };
  const replay = async (...args: string[]) =>
    run(
      process.execPath,
      [PARTITA_BIN, 'replay', '--nats', nats.url, '--actor', 'tally', '--json', ...args],
      {
        env: { ...process.env, PARTITA_OPERATOR: 'oncall-test' },
      },
    );

  it('rebuilds the state with the new handler: equal to the fold of every event with it', async () => {
    console.log(`seed ${seed}`);
    writeFileSync(join(actorsDir, 'tally.mjs'), V1);
    await startNode();
    await publish(300);
    await check(() => equalsFold(fold(sales, v1)), 20_000, 'state folded with v1');

    // The fix ships: restart the node with v2. Existing state is still v1's until the replay.
    await node!.kill('SIGTERM');
    writeFileSync(join(actorsDir, 'tally.mjs'), V2);
    await startNode();
    assert.ok(await equalsFold(fold(sales, v1)), 'a restart alone does not change committed state');

    // Producers keep publishing during the replay: what comes after a partition's checkpoint is
    // applied by the resumed partition, with the same new handler.
    const before = sales.length;
    const [{ stdout }] = await Promise.all([replay('--from-seq', '1'), publish(100)]);
    const results = JSON.parse(stdout) as {
      partition: number;
      events: number;
      node: string;
      epoch: number;
    }[];
    assert.equal(results.length, PARTITIONS);
    const replayed = results.reduce((a, r) => a + r.events, 0);
    assert.ok(replayed >= before && replayed <= sales.length, `${replayed} events replayed`);
    assert.ok(results.every((r) => r.node === 'n1' && r.epoch > 0));
    await check(() => equalsFold(fold(sales, v2)), 20_000, 'state equal to the fold with v2');

    // The partitions resumed: new events apply on top, with v2.
    await publish(50);
    await check(() => equalsFold(fold(sales, v2)), 20_000, 'new events folded with v2 after the replay');

    const audit = await readAudit(nc, { action: 'replay' });
    assert.equal(audit.length, 1);
    assert.equal(audit[0]!.target, 'tally');
    assert.equal(audit[0]!.who, 'oncall-test');
    assert.equal((audit[0]!.details as { ok: boolean }).ok, true);
  });

  it('replays one partition from a sequence: earlier events are left out, other partitions untouched', async () => {
    const p = sales[0]!.partition;
    const inP = sales.filter((s) => s.partition === p);
    const from = inP[Math.floor(inP.length / 2)]!.seq;
    // Run that partition with a handler that would make every other partition's state differ.
    writeFileSync(join(actorsDir, 'tally.mjs'), V2.replace('s.n += 1;', 's.n += 100;'));
    await node!.kill('SIGTERM');
    await startNode();
    const { stdout } = await replay('--partition', String(p), '--from-seq', String(from));
    const [r] = JSON.parse(stdout) as { partition: number; fromSeq: number; toSeq: number; events: number }[];
    assert.equal(r!.partition, p);
    assert.equal(r!.fromSeq, from);
    assert.equal(r!.events, inP.filter((s) => s.seq >= from).length);

    const v3 = (s: Tally, e: Sale) => {
      s.n += 100;
      s.total += e.price * e.qty;
    };
    const tail = fold(
      inP.filter((s) => s.seq >= from),
      v3,
    );
    const expected = fold(sales, v2);
    for (const [k, v] of tail) expected.set(k, v);
    await check(
      () => equalsFold(expected),
      10_000,
      'keys with events from the sequence rebuilt, others kept',
    );
  });

  it('refuses a start the stream no longer holds, and reports a missing owner', async () => {
    const p = sales[0]!.partition;
    const js = jetstream(nc);
    const jsm = await js.jetstreamManager();
    // Retention drops the partition's first events.
    const first = sales.find((s) => s.partition === p)!.seq;
    await jsm.streams.purge(`PARTITA_IN_${p}`, { seq: first + 2 });
    await assert.rejects(
      replay('--partition', String(p), '--from-seq', '1'),
      (err: { code: number; stderr: string }) => {
        assert.equal(err.code, 1);
        assert.match(err.stderr, /PARTITA_ERR_REPLAY/);
        return true;
      },
    );
    await node!.kill('SIGTERM');
    node = undefined;
    const t0 = Date.now();
    await assert.rejects(
      run(process.execPath, [
        PARTITA_BIN,
        'replay',
        '--nats',
        nats.url,
        '--actor',
        'tally',
        '--partition',
        '0',
        '--from-seq',
        '1',
        '--owner-wait',
        '1',
      ]),
      (err: { code: number; stderr: string }) => {
        assert.equal(err.code, 1);
        assert.match(err.stderr, /PARTITA_ERR_NOT_OWNER/);
        return true;
      },
    );
    // It gives up rather than hang (the owner wait is 1 s; the bound is slack for a loaded machine).
    assert.ok(Date.now() - t0 < 30_000);
    const failed = (await readAudit(nc, { action: 'replay' })).filter(
      (a) => !(a.details as { ok: boolean }).ok,
    );
    assert.equal(failed.length, 2);
  });
});

describe('partita replay, interrupted', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let node: NodeProcess | undefined;
  const actorsDir = tempDir('partita-replay-crash-');
  const sales: Sale[] = [];
  const rand = seededRandom(testSeed());

  before(async () => {
    nats = await startTestNats({ partitions: 2 });
    nc = await nats.connect();
  });
  after(async () => {
    await node?.kill('SIGKILL');
    await nats?.stop();
  });

  const startNode = async () => {
    node = await spawnPartita(
      ['node', '--nats', nats.url, '--actors', actorsDir, '--data', join(nats.dir, 'node'), '--id', 'n1'],
      { PARTITA_LOG_LEVEL: 'info' },
    );
  };

  it('a replay killed midway (kill -9) changed nothing or whole partitions; run again, it converges', async () => {
    writeFileSync(join(actorsDir, 'tally.mjs'), V1);
    await startNode();
    const js = jetstream(nc);
    for (let i = 0; i < 400; i++) {
      const key = `shop-${Math.floor(rand() * 20)}`;
      const price = 1 + Math.floor(rand() * 50);
      const qty = 1 + Math.floor(rand() * 5);
      await js.publish(`events.sales.${key}`, JSON.stringify({ price, qty }));
      sales.push({ key, price, qty, partition: partitionOf(key, 2), seq: 0, at: Date.now() });
    }
    await setPartitionSeqs(nc, 2, 'sales', sales);
    const kv = await new Kvm(nc).open(STATE_BUCKET);
    const matches = async (expected: Map<string, { state: Tally; seq: number }>) => {
      for (const [key, want] of expected) {
        const e = await kv.get(stateKvKey('tally', key));
        if (e?.operation !== 'PUT') return false;
        const g = e.json<Entry>();
        if (g.seq !== want.seq || JSON.stringify(g.state) !== JSON.stringify(want.state)) return false;
      }
      return true;
    };
    await check(() => matches(fold(sales, v1)), 20_000, 'state folded with v1');

    // v2, made slow (about 10 ms an event) so that the replay is still folding when the node dies.
    await node!.kill('SIGTERM');
    writeFileSync(
      join(actorsDir, 'tally.mjs'),
      V2.replace('handle(s, e) {', 'handle(s, e) { const t = Date.now(); while (Date.now() - t < 10) {}'),
    );
    await startNode();
    const replay = run(process.execPath, [
      PARTITA_BIN,
      'replay',
      '--nats',
      nats.url,
      '--actor',
      'tally',
      '--from-seq',
      '1',
      '--timeout',
      '5',
      '--owner-wait',
      '1',
    ]);
    replay.catch(() => undefined);
    await check(() => node!.stderr().includes('replay started'), 10_000, 'the replay to start');
    await node!.kill('SIGKILL');
    await assert.rejects(replay, (err: { code: number }) => err.code === 1);
    assert.ok(!(await matches(fold(sales, v2))), 'the killed replay did not finish every partition');

    await startNode();
    await run(process.execPath, [
      PARTITA_BIN,
      'replay',
      '--nats',
      nats.url,
      '--actor',
      'tally',
      '--from-seq',
      '1',
    ]);
    await check(() => matches(fold(sales, v2)), 10_000, 'state equal to the fold with v2 after the rerun');
    const audit = await readAudit(nc, { action: 'replay' });
    assert.deepEqual(
      audit.map((a) => (a.details as { ok: boolean }).ok),
      [false, true],
    );
  });
});
