// The store written without fsync is trusted across process crashes, not across OS restarts.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { markStateDirClean, openStateStore, prepareStateDir } from '../runtime/state-store.js';
import { check } from './helpers/check.js';
import { tempDir } from './helpers/nats.js';

async function storeWithOneRecord(dir: string, durability: 'sync' | 'process') {
  prepareStateDir(dir, durability);
  const store = openStateStore(dir, durability);
  await store.states.put(['a', 'k'], { s: { n: 1 }, q: 1, t: 1 });
  await store.close();
}

const fakeOtherBoot = (dir: string) => {
  const m = JSON.parse(readFileSync(join(dir, 'durability.json'), 'utf8'));
  writeFileSync(join(dir, 'durability.json'), JSON.stringify({ ...m, bootId: 'another-boot' }));
};

it('sets aside a no-fsync store left open across an OS restart', async () => {
  const dir = tempDir();
  await storeWithOneRecord(dir, 'process');
  fakeOtherBoot(dir); // as if the OS restarted while the node was running
  const moved = prepareStateDir(dir, 'process');
  assert.ok(moved && existsSync(moved), 'the suspect store was moved aside');
  assert.ok(!existsSync(join(dir, 'state.lmdb')));
  const store = openStateStore(dir, 'process');
  assert.equal(store.states.get(['a', 'k']), undefined, 'a fresh store: state is rebuilt from the streams');
  await store.close();
});

it('keeps a no-fsync store that was closed cleanly, and any fsync store', async () => {
  const clean = tempDir();
  await storeWithOneRecord(clean, 'process');
  markStateDirClean(clean, 'process');
  fakeOtherBoot(clean);
  assert.equal(prepareStateDir(clean, 'process'), undefined);

  const synced = tempDir();
  await storeWithOneRecord(synced, 'sync');
  fakeOtherBoot(synced);
  assert.equal(prepareStateDir(synced, 'sync'), undefined);
  const store = openStateStore(synced, 'sync');
  assert.deepEqual(store.states.get(['a', 'k'])?.s, { n: 1 });
  await store.close();
  assert.deepEqual(
    readdirSync(synced).filter((f) => f.includes('unsafe')),
    [],
  );
});

it('keeps a no-fsync store after a process crash on the same boot', async () => {
  const dir = tempDir();
  await storeWithOneRecord(dir, 'process'); // not marked clean: the process "died"
  assert.equal(prepareStateDir(dir, 'process'), undefined);
  const store = openStateStore(dir, 'process');
  assert.deepEqual(store.states.get(['a', 'k'])?.s, { n: 1 });
  await store.close();
});

describe('published outboxes deleted together', () => {
  const outbox = (seq: number) => ({ seq, keys: [], emits: [], dead: [] });
  const stored = (store: ReturnType<typeof openStateStore>, p: number) =>
    [...store.meta.getRange({ start: ['ob', p], end: ['ob', p + 1] })].map(
      (e) => (e.value as { seq: number }).seq,
    );

  it('hides a held-back delete at once and writes the deletes of every partition in one flush', async () => {
    const dir = tempDir();
    const store = openStateStore(dir, 'sync');
    for (const [p, seq] of [
      [0, 5],
      [0, 9],
      [1, 7],
      [2, 3],
    ] as const)
      await store.meta.put(['ob', p, seq], outbox(seq));
    store.deleteOutboxSoon(0, 5);
    store.deleteOutboxSoon(1, 7);
    assert.deepEqual(
      store.outboxes(0).map((o) => o.seq),
      [9],
      'no longer listed',
    );
    assert.deepEqual(store.outboxes(1), []);
    assert.deepEqual(stored(store, 0), [5, 9], 'not yet written');
    await store.flushOutboxDeletes();
    assert.deepEqual(stored(store, 0), [9]);
    assert.deepEqual(stored(store, 1), []);
    assert.deepEqual(stored(store, 2), [3], 'other outboxes stay');
    await store.close();
  });

  it('writes them on its own within the delay, and on close', async () => {
    const dir = tempDir();
    let store = openStateStore(dir, 'sync');
    await store.meta.put(['ob', 0, 1], outbox(1));
    await store.meta.put(['ob', 0, 2], outbox(2));
    store.deleteOutboxSoon(0, 1);
    await check(() => stored(store, 0).length === 1, 5000, 'the held-back delete written');
    store.deleteOutboxSoon(0, 2);
    await store.close();
    store = openStateStore(dir, 'sync');
    assert.deepEqual(stored(store, 0), [], 'written before the store closed');
    await store.close();
  });

  it('drops held-back deletes of partitions it clears, so a restored outbox of the same sequence stays', async () => {
    const dir = tempDir();
    const store = openStateStore(dir, 'sync');
    await store.meta.put(['ob', 3, 10], outbox(10));
    store.deleteOutboxSoon(3, 10);
    await store.clearPartitions(new Set([3]), () => 3);
    // After the restore, a batch commits an outbox at the same sequence again.
    await store.meta.put(['ob', 3, 10], outbox(10));
    await store.flushOutboxDeletes();
    assert.deepEqual(stored(store, 3), [10]);
    assert.deepEqual(
      store.outboxes(3).map((o) => o.seq),
      [10],
    );
    await store.close();
  });
});
