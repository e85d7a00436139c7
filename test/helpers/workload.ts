// A seeded event set for the `account` (exactly-once) and `seen` (at-least-once) fixture actors,
// with its straight fold, and the check that the runtime's published state matches it.
import assert from 'node:assert/strict';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { inStream, STATE_BUCKET } from '../../runtime/index.js';
import { readKvLatest } from '../../runtime/kv-latest.js';
import { type Account, chainStep } from '../fixtures/actors/account.js';
import { check, seededRandom } from './check.js';

export class Workload {
  readonly expected = new Map<string, Account>();
  readonly ids = new Map<string, number[]>();
  published = 0;
  private readonly rnd: () => number;

  constructor(
    private readonly nc: NatsConnection,
    readonly seed: number,
    private readonly keys = 150,
  ) {
    this.rnd = seededRandom(seed);
  }

  random(): number {
    return this.rnd();
  }

  /** Publishes `n` more events: hot keys and a long tail. */
  async publish(n: number): Promise<void> {
    for (let i = 0; i < n; i++) {
      const [subject, data] = this.next();
      this.nc.publish(subject, data);
      if (i % 1000 === 999) await this.nc.flush();
    }
    await this.nc.flush();
  }

  /**
   * Publishes `n` more events through JetStream, each retried until acknowledged, with a message
   * id so a retry is stored once: for runs where servers die, when a core publish may be lost.
   */
  async publishAcked(n: number, window = 100): Promise<void> {
    const js = jetstream(this.nc);
    const send = async (subject: string, data: string, msgID: string) => {
      for (let attempt = 1; ; attempt++) {
        try {
          await js.publish(subject, data, { msgID, timeout: 2000 });
          return;
        } catch {
          await new Promise((r) => setTimeout(r, Math.min(500, 20 * attempt)));
        }
      }
    };
    // Events of one key are never in flight together, so the stream keeps their order.
    let inFlight: Promise<void>[] = [];
    const keys = new Set<string>();
    for (let i = 0; i < n; i++) {
      const [subject, data] = this.next();
      if (keys.has(subject) || inFlight.length >= window) {
        await Promise.all(inFlight);
        inFlight = [];
        keys.clear();
      }
      keys.add(subject);
      inFlight.push(send(subject, data, `w-${this.seed}-${this.published}`));
    }
    await Promise.all(inFlight);
  }

  private next(): [string, string] {
    const id = ++this.published;
    const k = this.rnd() < 0.3 ? Math.floor(this.rnd() * 5) : Math.floor(this.rnd() * this.keys);
    const key = `k${k}`;
    const amount = Math.floor(this.rnd() * 1000);
    const s = this.expected.get(key) ?? { count: 0, total: 0, chain: 0 };
    this.expected.set(key, { count: s.count + 1, total: s.total + amount, chain: chainStep(s.chain, id) });
    const list = this.ids.get(key) ?? [];
    list.push(id);
    this.ids.set(key, list);
    return [`events.tx.${key}`, JSON.stringify({ id, amount })];
  }

  /** Publishes `total` events at about `perSecond`, in small steps, until done or `stop()`. */
  async publishPaced(total: number, perSecond: number, stop: () => boolean = () => false): Promise<void> {
    const step = Math.max(1, Math.round(perSecond / 50));
    const end = this.published + total;
    while (this.published < end && !stop()) {
      await this.publish(Math.min(step, end - this.published));
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /**
   * Every event is stored, every exactly-once state equals the fold, every at-least-once id is
   * seen. States are read from the bucket's leader (a follower may answer a direct get with an
   * older value), and both actors' states are awaited: one batch's puts land one by one.
   */
  async verify(partitions: number, timeoutMs = 60_000): Promise<void> {
    // No API check: that is a request of its own, which times out while the meta layer elects a
    // leader after a server kill (the reads below are retried, it would not be).
    const jsm = await jetstreamManager(this.nc, { checkAPI: false });
    // Acknowledged by the ingest stream; the partition streams source them (after a server kill,
    // once their streams have leaders again).
    let stored = 0;
    const allStored = async () => {
      stored = 0;
      for (let p = 0; p < partitions; p++) stored += (await jsm.streams.info(inStream(p))).state.messages;
      return stored >= this.published;
    };
    await check(allStored, timeoutMs, 'every published event in the input streams').catch(() => undefined);
    assert.equal(stored, this.published, 'every published event is in the input streams');
    for (const [key, want] of this.expected) {
      const read = async () => {
        const account = (await readKvLatest(jsm, STATE_BUCKET, `account.${key}`))?.json<{ state: Account }>();
        const seen = (await readKvLatest(jsm, STATE_BUCKET, `seen.${key}`))?.json<{
          state: { ids: Record<string, 1> };
        }>();
        const missing = (this.ids.get(key) ?? []).filter((id) => !seen?.state.ids[String(id)]);
        return { account: account?.state, missing };
      };
      const got = await check(
        async () => {
          const r = await read();
          return r.account && r.account.count >= want.count && r.missing.length === 0 ? r : undefined;
        },
        timeoutMs,
        `account ${key} to reach ${want.count} events and seen to hold its ids (seed ${this.seed})`,
      ).catch(read);
      assert.deepEqual(got.account, want, `exactly-once state of ${key} (seed ${this.seed})`);
      assert.deepEqual(got.missing, [], `at-least-once ids of ${key} (seed ${this.seed})`);
    }
  }
}
