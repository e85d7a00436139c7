// The store written without fsync is trusted across process crashes, not across OS restarts.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import { markStateDirClean, openStateStore, prepareStateDir } from '../runtime/state-store.js';
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
