// Financial events: exactly-once. `events.payments.<account>` with `{ amount }`.
import { defineActor } from '../runtime/types.js';

interface Ledger {
  count: number;
  total: number;
}

export default defineActor<Ledger, { amount?: number }>({
  name: 'ledger',
  events: ['payments'],
  guarantee: 'exactly-once',
  initial: () => ({ count: 0, total: 0 }),
  handle(state, event) {
    const amount = Number(event.data.amount ?? 0);
    if (!Number.isFinite(amount)) throw new Error('amount is not a number');
    state.count += 1;
    state.total = Math.round((state.total + amount) * 100) / 100;
    return state;
  },
});
