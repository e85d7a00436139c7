// Fulfilment exceptions per warehouse: `events.exceptions.<warehouse>`, emitted by the order actor
// (status exceptions and SLA breaches). Counted per minute, 5 minutes and hour of event time.
import { defineActor } from '../runtime/types.js';

interface Warehouse {
  exceptions: number;
  byReason: Record<string, number>;
  last: { order: string; reason: string; at: number } | null;
  /** Exceptions in the last closed minute. */
  lastMinute: number;
}

export default defineActor<Warehouse, { order?: string; reason?: string }>({
  name: 'warehouse',
  events: ['exceptions'],
  guarantee: 'at-least-once',
  watermark: { maxOutOfOrder: '2s' },
  rollups: {
    // SLA breaches come in when the order's watermark passes their due time: up to a minute late.
    exceptions: {
      aggregate: { count: 'count', orders: 'distinct' },
      value: (e) => String(e.data.order ?? ''),
      allowedLateness: '1m',
      keep: 15,
    },
  },
  initial: () => ({ exceptions: 0, byReason: {}, last: null, lastMinute: 0 }),
  handle(state, event, ctx) {
    const reason = event.data.reason ?? 'unknown';
    state.exceptions += 1;
    state.byReason[reason] = (state.byReason[reason] ?? 0) + 1;
    state.last = { order: String(event.data.order ?? ''), reason, at: ctx.now() };
    return state;
  },
  onWindow(state, result) {
    if (result.window === 'exceptions@1m') state.lastMinute = result.count;
    return state;
  },
});
