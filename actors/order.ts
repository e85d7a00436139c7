// Fulfilment orders through their lifecycle: `events.orders.<orderId>` with
// `{ status, warehouse, ts, reason? }`. An exception is re-keyed to its warehouse with ctx.emit.
import { defineActor } from '../runtime/types.js';

export const ORDER_STATUSES = ['created', 'picked', 'packed', 'shipped', 'delivered', 'exception'] as const;

interface Order {
  status: string;
  warehouse: string | null;
  createdAt: number | null;
  updatedAt: number | null;
  exceptions: number;
  history: { status: string; at: number }[];
}

export default defineActor<Order, { status?: string; warehouse?: string; reason?: string }>({
  name: 'order',
  events: ['orders'],
  guarantee: 'at-least-once',
  initial: () => ({
    status: 'new',
    warehouse: null,
    createdAt: null,
    updatedAt: null,
    exceptions: 0,
    history: [],
  }),
  handle(state, event, ctx) {
    const status = String(event.data.status ?? '');
    if (!(ORDER_STATUSES as readonly string[]).includes(status))
      throw new Error(`unknown order status "${status}"`);
    const at = ctx.now();
    state.status = status;
    state.warehouse = event.data.warehouse ?? state.warehouse;
    state.createdAt ??= at;
    state.updatedAt = at;
    state.history.push({ status, at });
    if (state.history.length > 20) state.history.shift();
    if (status === 'exception') {
      state.exceptions += 1;
      if (state.warehouse) {
        ctx.emit('exceptions', state.warehouse, {
          order: ctx.key,
          reason: event.data.reason ?? 'unknown',
          ts: at,
        });
      }
    }
    return state;
  },
});
