// Synthetic events of the seed scenarios, for `partita dev --demo`: fulfilment orders moving
// through their lifecycle (some hit exceptions, some stall and breach their SLA), payments, and
// ad impressions and clicks (one campaign's clicks burst every few minutes: an anomaly to flag).
import type { NatsConnection } from '@nats-io/transport-node';

export interface DemoProducer {
  stop(): void;
  readonly published: number;
}

const WAREHOUSES = ['ams-1', 'ber-2', 'lis-3', 'waw-4'];
const REASONS = ['stockout', 'damaged', 'address', 'carrier-delay'];
const FLOW = ['created', 'picked', 'packed', 'shipped', 'delivered'];
/** Demo orders must ship within 20 s of event time; stalled ones breach it. */
const DEMO_SLA_MS = 20_000;
/** The campaign whose clicks burst for one minute in three. */
const BURSTY = 'cmp-3';

/** Publishes about `rate` events per second until stopped. Seeded, so runs are comparable. */
export function startDemoProducer(
  nc: NatsConnection,
  opts: { rate?: number; seed?: number } = {},
): DemoProducer {
  const rate = opts.rate ?? 50;
  let seed = opts.seed ?? 42;
  const rnd = () => {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    return seed / 2 ** 32;
  };
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rnd() * xs.length)]!;
  const orders = new Map<string, { step: number; warehouse: string }>();
  let nextOrder = 1;
  let published = 0;
  const pub = (subject: string, data: unknown) => {
    nc.publish(subject, JSON.stringify(data));
    published++;
  };
  const tick = () => {
    const n = Math.max(1, Math.round(rate / 10));
    for (let i = 0; i < n; i++) {
      const ts = Date.now();
      const r = rnd();
      if (r < 0.4) {
        // Advance an order, or start a new one.
        if (orders.size < 30 || rnd() < 0.2) {
          const id = `ord-${nextOrder++}`;
          const warehouse = pick(WAREHOUSES);
          // About one order in twelve stalls after creation and breaches its SLA.
          if (rnd() >= 0.08) orders.set(id, { step: 0, warehouse });
          pub(`events.orders.${id}`, { status: 'created', warehouse, ts, slaMs: DEMO_SLA_MS });
        } else {
          const [id, o] = pick([...orders.entries()]);
          if (rnd() < 0.08) {
            pub(`events.orders.${id}`, {
              status: 'exception',
              warehouse: o.warehouse,
              reason: pick(REASONS),
              ts,
            });
            orders.delete(id);
          } else {
            o.step++;
            pub(`events.orders.${id}`, { status: FLOW[o.step], warehouse: o.warehouse, ts });
            if (o.step >= FLOW.length - 1) orders.delete(id);
          }
        }
      } else if (r < 0.5) {
        pub(`events.payments.acct-${1 + Math.floor(rnd() * 20)}`, {
          amount: Math.round(rnd() * 20000) / 100,
          ts,
        });
      } else {
        const campaign = `cmp-${1 + Math.floor(rnd() ** 2 * 12)}`;
        const burst = campaign === BURSTY && Math.floor(ts / 60_000) % 3 === 2;
        if (rnd() < (burst ? 0.3 : 0.05)) pub(`events.clicks.${campaign}`, { ts });
        else pub(`events.impressions.${campaign}`, { cost: Math.round(rnd() * 500) / 1e5, ts });
      }
    }
  };
  const timer = setInterval(tick, 100);
  return {
    stop: () => clearInterval(timer),
    get published() {
      return published;
    },
  };
}
