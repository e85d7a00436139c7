// Fulfilment exceptions per warehouse: `events.exceptions.<warehouse>`, emitted by the order actor.
import { defineActor } from '../runtime/types.js';

interface Warehouse {
  exceptions: number;
  byReason: Record<string, number>;
  last: { order: string; reason: string; at: number } | null;
}

export default defineActor<Warehouse, { order?: string; reason?: string }>({
  name: 'warehouse',
  events: ['exceptions'],
  guarantee: 'at-least-once',
  initial: () => ({ exceptions: 0, byReason: {}, last: null }),
  handle(state, event, ctx) {
    const reason = event.data.reason ?? 'unknown';
    state.exceptions += 1;
    state.byReason[reason] = (state.byReason[reason] ?? 0) + 1;
    state.last = { order: String(event.data.order ?? ''), reason, at: ctx.now() };
    return state;
  },
});
