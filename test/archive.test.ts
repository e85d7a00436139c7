// The compliance archive: every raw event exactly once in Parquet files partitioned by hour, across
// kill -9 (one of them with a file written but not yet renamed) and restarts, masked as the
// schema says; the files are read back with hyparquet's reader.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { jetstreamManager } from '@nats-io/jetstream';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import { parquetReadObjects } from 'hyparquet';
import { pack } from 'msgpackr';
import { archiveFiles } from '../runtime/archive.js';
import { inStream, openSchemaRegistry } from '../runtime/index.js';
import { maskedSignup, NEEDLES, PII_SECRET, piiHmac, SIGNUP_SCHEMA, signup } from './fixtures/gov-data.js';
import { check, seededRandom, testSeed } from './helpers/check.js';
import { startTestNats, type TestNats } from './helpers/nats.js';
import { type NodeProcess, PARTITA_BIN, spawnPartita } from './helpers/node-process.js';

const PARTITIONS = 4;

interface Row {
  partition: number;
  seq: bigint;
  subject: string;
  type: string;
  key: string;
  published_at: Date;
  event_time: Date;
  msg_id: string | null;
  data: string | null;
  error: string | null;
}

describe('compliance archive', () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let dir: string;
  const seed = testSeed();
  const rnd = seededRandom(seed);
  /** msg id -> what the archive must hold as `data` (null: not decodable). */
  const expected = new Map<string, unknown>();
  let published = 0;

  before(async () => {
    nats = await startTestNats({ partitions: PARTITIONS });
    nc = await nats.connect();
    dir = join(nats.dir, 'archive');
    await (await openSchemaRegistry(nc)).register('signup', SIGNUP_SCHEMA);
  });
  after(async () => {
    await nats?.stop();
  });

  async function publish(n: number) {
    for (let i = 0; i < n; i++) {
      const id = ++published;
      const h = headers();
      h.set('Nats-Msg-Id', `e-${id}`);
      const r = rnd();
      if (r < 0.6) {
        nc.publish(`events.signup.k${id % 37}`, JSON.stringify(signup(id)), { headers: h });
        expected.set(`e-${id}`, maskedSignup(id));
      } else if (r < 0.95) {
        nc.publish(`events.click.k${id % 11}`, JSON.stringify({ n: id }), { headers: h });
        expected.set(`e-${id}`, { n: id });
      } else if (r < 0.96) {
        // msgpack payloads are archived as JSON too, masked.
        h.set('Content-Type', 'application/msgpack');
        nc.publish(`events.signup.k${id % 37}`, pack(signup(id)), { headers: h });
        expected.set(`e-${id}`, maskedSignup(id));
      } else if (r < 0.98) {
        // Invalid for the schema, still archived, still masked.
        nc.publish(`events.signup.k${id % 5}`, JSON.stringify({ userId: `user-secret-${id}` }), {
          headers: h,
        });
        expected.set(`e-${id}`, { userId: piiHmac(`user-secret-${id}`) });
      } else {
        nc.publish(`events.click.k${id % 3}`, 'not json', { headers: h });
        expected.set(`e-${id}`, null);
      }
      if (i % 500 === 499) await nc.flush();
    }
    await nc.flush();
  }

  const env = { PARTITA_PII_SECRET: PII_SECRET };
  const args = () => ['archive', '--nats', nats.url, '--dir', dir, '--flush-ms', '40', '--max-events', '97'];
  const archivedCount = () => archiveFiles(dir).reduce((n, f) => n + (f.last - f.first + 1), 0);
  const temporaries = () =>
    existsSync(dir)
      ? readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.name.endsWith('.tmp'))
          .length
      : 0;

  it('holds every event exactly once across kill -9 and restarts', async () => {
    process.stdout.write(`archive crash test seed ${seed}\n`);
    await publish(2000);
    // 1. Dies by itself with its 6th file written under the temporary name, not renamed.
    // (It may die before its ready line, so it is spawned bare.)
    const first = spawn(process.execPath, [PARTITA_BIN, ...args()], {
      stdio: 'ignore',
      env: { ...process.env, ...env, PARTITA_FAILPOINT: 'archive-before-rename:6' },
    });
    const [code, signal] = await once(first, 'exit');
    assert.equal(signal, 'SIGKILL', `exit code ${code}`);
    assert.equal(temporaries(), 1, 'a half-finished file was left behind');
    assert.equal(archiveFiles(dir).length, 5);
    // 2. Killed at random moments while events keep coming.
    for (let round = 0; round < 3; round++) {
      const p: NodeProcess = await spawnPartita(args(), env);
      const extra = 100 + Math.floor(rnd() * 400);
      const n = 300 + Math.floor(rnd() * 300);
      // Never more than will exist: the archiver may have caught up before the last kill.
      const target = Math.min(archivedCount() + extra, published + n);
      const publishing = publish(n);
      await check(() => archivedCount() >= target, 30_000, `round ${round}: ${target} archived`);
      await p.kill('SIGKILL');
      await publishing;
    }
    // 3. A last run catches up and stops cleanly.
    const last = await spawnPartita(args(), env);
    await check(() => archivedCount() === published, 60_000, `all ${published} events archived`);
    assert.equal(await last.kill('SIGTERM'), 0);
    assert.equal(temporaries(), 0);

    const jsm = await jetstreamManager(nc);
    const rows: Row[] = [];
    const files = archiveFiles(dir);
    for (const f of files) {
      const buf = readFileSync(f.path);
      // The Parquet framing, checked by hand: magic at both ends, the footer length before the last.
      assert.equal(buf.subarray(0, 4).toString(), 'PAR1');
      assert.equal(buf.subarray(-4).toString(), 'PAR1');
      assert.ok(buf.readUInt32LE(buf.length - 8) < buf.length - 12);
      const got = (await parquetReadObjects({
        file: buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength),
      })) as unknown as Row[];
      assert.equal(got.length, f.last - f.first + 1, `${f.path} holds its range`);
      assert.match(f.path, /date=\d{4}-\d\d-\d\d\/hour=\d\d\/p\d+-\d{20}-\d{20}\.parquet$/);
      for (const r of got) {
        assert.equal(r.partition, f.partition);
        assert.equal(r.published_at.toISOString().slice(11, 13), /hour=(\d\d)/.exec(f.path)![1]);
      }
      rows.push(...got);
    }
    // Exactly once: per partition, the sequences 1..last of its stream, each once.
    for (let p = 0; p < PARTITIONS; p++) {
      const seqs = rows
        .filter((r) => r.partition === p)
        .map((r) => Number(r.seq))
        .sort((a, b) => a - b);
      const { state } = await jsm.streams.info(inStream(p));
      assert.deepEqual(
        seqs,
        Array.from({ length: state.last_seq }, (_, i) => i + 1),
        `partition ${p}: every sequence exactly once (seed ${seed})`,
      );
    }
    assert.equal(rows.length, published);
    // Content: each event, masked; nothing personal in the clear.
    const ids = new Set<string>();
    for (const r of rows) {
      assert.ok(r.msg_id && !ids.has(r.msg_id), `msg id ${r.msg_id} once`);
      ids.add(r.msg_id);
      const want = expected.get(r.msg_id);
      if (want === null) {
        assert.equal(r.data, null);
        assert.match(r.error ?? '', /^PARTITA_ERR_DECODE/);
      } else assert.deepEqual(JSON.parse(r.data!), want, `data of ${r.msg_id}`);
      assert.match(r.subject, /^events\.(signup|click)\.k\d+$/);
    }
    const text = JSON.stringify(rows, (_k, v) => (typeof v === 'bigint' ? Number(v) : v));
    for (const n of NEEDLES) assert.ok(!text.includes(n), `the archive holds "${n}" in the clear`);
  });
});
