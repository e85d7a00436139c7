// The benchmark's actor: an exactly-once running sum per account, `events.tx.<account>` with
// `{ id, amount, ts? }`. It keeps the id and `ts` of the last applied event so that a subscriber of
// `partita.state.account.<key>` can tell which events a state change covers.
import { defineActor } from '../../runtime/types.js';

export interface BenchAccount {
  count: number;
  total: number;
  lastId: number;
  lastTs: number;
}

export default defineActor<BenchAccount, { id?: number; amount?: number; ts?: number }>({
  name: 'account',
  events: ['tx'],
  guarantee: 'exactly-once',
  initial: () => ({ count: 0, total: 0, lastId: -1, lastTs: 0 }),
  handle(state, event) {
    state.count += 1;
    state.total = Math.round((state.total + Number(event.data.amount ?? 0)) * 100) / 100;
    state.lastId = Number(event.data.id ?? -1);
    state.lastTs = Number(event.data.ts ?? 0);
    return state;
  },
});
