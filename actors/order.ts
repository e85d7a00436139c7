// Fulfilment orders through their lifecycle: `events.orders.<orderId>` with
// `{ status, warehouse, ts, reason?, slaMs? }`. An exception is re-keyed to its warehouse with
// ctx.emit. Each order must ship within its SLA (event time, `slaMs` from the created event, else
// 4 hours): an event-time timer set at creation fires once if it has not, flags the breach and
// reports it to the warehouse as an exception.
import { defineActor } from '../runtime/types.js';

export const ORDER_STATUSES = ['created', 'picked', 'packed', 'shipped', 'delivered', 'exception'] as const;
const DEFAULT_SLA_MS = 4 * 3_600_000;

interface Order {
  status: string;
  warehouse: string | null;
  createdAt: number | null;
  updatedAt: number | null;
  exceptions: number;
  history: { status: string; at: number }[];
  /** When the order must have shipped (event time), while it has not. */
  slaDue: number | null;
  slaBreached: boolean;
}

export default defineActor<Order, { status?: string; warehouse?: string; reason?: string; slaMs?: number }>({
  name: 'order',
  events: ['orders'],
  guarantee: 'at-least-once',
  watermark: { maxOutOfOrder: '2s' },
  initial: () => ({
    status: 'new',
    warehouse: null,
    createdAt: null,
    updatedAt: null,
    exceptions: 0,
    history: [],
    slaDue: null,
    slaBreached: false,
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
    if (status === 'created' && state.slaDue === null && !state.slaBreached) {
      state.slaDue = at + Number(event.data.slaMs ?? DEFAULT_SLA_MS);
      ctx.timers.at('sla', state.slaDue);
    } else if (status === 'shipped' || status === 'delivered' || status === 'exception') {
      // Shipped in time, or already reported as an exception: no SLA breach to report.
      ctx.timers.cancel('sla');
      state.slaDue = null;
    }
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
  onTimer(state, timer, ctx) {
    if (timer.name !== 'sla' || state.slaDue === null) return state;
    state.slaBreached = true;
    state.slaDue = null;
    if (state.warehouse) {
      ctx.emit('exceptions', state.warehouse, { order: ctx.key, reason: 'sla-breach', ts: timer.time });
    }
    return state;
  },
});
