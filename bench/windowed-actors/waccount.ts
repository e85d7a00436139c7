// The windowed benchmark actor: the plain bench actor's running sum per account plus rollups of
// the amount at 1m, 5m and 1h of event time (count, sum, max, p95), results kept in the state and
// published to PARTITA_AGG. `events.tx.<account>` with `{ id, amount, ts }`.
import { defineActor } from '../../runtime/types.js';

export interface WindowedAccount {
  count: number;
  total: number;
}

export default defineActor<WindowedAccount, { id?: number; amount?: number; ts?: number }>({
  name: 'waccount',
  events: ['tx'],
  guarantee: 'exactly-once',
  watermark: { maxOutOfOrder: '5s' },
  rollups: {
    amount: {
      value: (e) => Number(e.data.amount ?? 0),
      aggregate: { count: 'count', sum: 'sum', max: 'max', p95: 'p95' },
      keep: 3,
    },
  },
  initial: () => ({ count: 0, total: 0 }),
  handle(state, event) {
    state.count += 1;
    state.total = Math.round((state.total + Number(event.data.amount ?? 0)) * 100) / 100;
    return state;
  },
});
